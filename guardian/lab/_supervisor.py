"""A small typed XML-RPC client for a VM's supervisord (stdlib only).

The socket lives in the VM's private /run; the host reaches it through the holder
process' root: ``/proc/<holder>/root/run/supervisor.sock``.
"""

from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from dataclasses import dataclass
from typing import Any

from ._errors import SupervisorError

#: supervisord process state names (supervisor.states.ProcessStates).
RUNNING = "RUNNING"
STARTING = "STARTING"
BACKOFF = "BACKOFF"
FATAL = "FATAL"
STOPPED = "STOPPED"
EXITED = "EXITED"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixHTTPConnection(self._path, self._timeout)


@dataclass(frozen=True)
class ProcessInfo:
    """supervisor.getProcessInfo(), typed."""

    name: str
    group: str
    statename: str
    pid: int
    exitstatus: int
    spawnerr: str
    description: str
    start: int
    stop: int

    @classmethod
    def from_rpc(cls, d: dict[str, Any]) -> ProcessInfo:
        return cls(
            name=str(d["name"]),
            group=str(d["group"]),
            statename=str(d["statename"]),
            pid=int(d["pid"]),
            exitstatus=int(d["exitstatus"]),
            spawnerr=str(d["spawnerr"]),
            description=str(d["description"]),
            start=int(d["start"]),
            stop=int(d["stop"]),
        )


class Supervisor:
    """XML-RPC client of one supervisord over its unix socket. Every call has a timeout."""

    def __init__(self, socket_path: str, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _proxy(self) -> xmlrpc.client.ServerProxy:
        return xmlrpc.client.ServerProxy(
            "http://localhost/RPC2", transport=_UnixTransport(self.socket_path, self.timeout)
        )

    def call(self, method: str, *args: Any) -> Any:
        """Call ``method`` (e.g. ``"supervisor.getState"``); faults become SupervisorError."""
        fn = self._proxy()
        for part in method.split("."):
            fn = getattr(fn, part)
        try:
            return fn(*args)
        except xmlrpc.client.Fault as exc:
            raise SupervisorError(method, exc.faultString, exc.faultCode) from exc
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as exc:
            raise SupervisorError(method, f"cannot reach {self.socket_path}: {exc}") from exc

    def state(self) -> str:
        return str(self.call("supervisor.getState")["statename"])

    def process_info(self, name: str) -> ProcessInfo:
        return ProcessInfo.from_rpc(self.call("supervisor.getProcessInfo", name))

    def all_process_info(self) -> list[ProcessInfo]:
        return [ProcessInfo.from_rpc(d) for d in self.call("supervisor.getAllProcessInfo")]

    def start(self, name: str, wait: bool = True) -> None:
        self.call("supervisor.startProcess", name, wait)

    def stop(self, name: str, wait: bool = True) -> None:
        self.call("supervisor.stopProcess", name, wait)

    def signal(self, name: str, sig: str | int) -> None:
        self.call("supervisor.signalProcess", name, str(sig))

    def reload_config(self) -> tuple[list[str], list[str], list[str]]:
        """supervisor.reloadConfig(): (added, changed, removed) group names."""
        added, changed, removed = self.call("supervisor.reloadConfig")[0]
        return list(added), list(changed), list(removed)

    def add_group(self, name: str) -> None:
        self.call("supervisor.addProcessGroup", name)
