"""guardiand inside a lab VM: start it on a config, read its status, stop it.

guardiand runs in the VM's namespaces (network, mount, UTS) but outside the VM's
supervisord, like on a real guest where systemd starts it. Its control socket lives
in the VM's private /run and is reached from the host through
``/proc/<holder>/root``, as the lab reaches supervisord's socket.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import LabError, LabTimeout
from ._spec import Program, ProgramKind

if TYPE_CHECKING:
    from ._vm import VM

CONFIG_PATH = "/etc/guardian/guardian.toml"
EVENT_SOCKET = "/run/guardian/events.sock"


def listener_program() -> Program:
    """guardian's supervisord event listener, as a lab VM's extra program: supervisord
    then tells guardiand about every process state change (``VM(extra_programs=...)``)."""
    return Program(
        "guardian",
        f"{sys.executable} -m guardian.backends.listener --socket {EVENT_SOCKET}",
        kind=ProgramKind.EVENTLISTENER,
        startsecs=0,
        options={"events": "PROCESS_STATE", "buffer_size": "100", "priority": "1"},
    )
CONTROL_SOCKET = "/run/guardian/control.sock"


class Guardiand:
    """One guardiand process in ``vm``, started by :meth:`start`."""

    def __init__(self, vm: VM, config: str, *, config_path: str = CONFIG_PATH) -> None:
        self.vm = vm
        self.config = config
        self.config_path = config_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path = vm.vmdir / "guardiand.log"

    # -- life cycle ----------------------------------------------------------------------
    def start(self, *, timeout: float = 15.0) -> Guardiand:
        if self.proc is not None and self.proc.poll() is None:
            raise LabError(f"guardiand already running in {self.vm.name}")
        import guardian

        for what, path in (("python", sys.executable),
                           ("the guardian package", os.path.dirname(guardian.__file__))):
            for tmp in self.vm.spec.tmpfs:
                if os.path.realpath(path).startswith(tmp.rstrip("/") + "/"):
                    raise LabError(
                        f"{what} is at {path}, under {tmp}, which is an empty tmpfs inside "
                        f"the lab's VMs: guardiand could not run there. Use a checkout "
                        f"outside {', '.join(self.vm.spec.tmpfs)}.")
        self.vm.run(["mkdir", "-p", os.path.dirname(self.config_path)])
        self.vm.write_file(self.config_path, self.config)
        argv = [sys.executable, "-m", "guardian", "--config", self.config_path, "run"]
        env = {**self._env(), "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        with open(self.log_path, "ab") as log:
            self.proc = self.vm.popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                start_new_session=True,
            )
        self.wait(lambda st: all(s["state"] != "starting" for s in st["services"]),
                  timeout=timeout, what="every service out of 'starting'")
        return self

    def _env(self) -> dict[str, str]:
        """This process' environment (guardiand runs from its venv), with the VM's
        ``XENSTORED_PATH`` when it has a XenStore domain (``Lab.xenstore()``)."""
        env = dict(os.environ)
        env.pop("XENSTORED_PATH", None)
        path = self.vm.xenstore_path
        if path is not None:
            env["XENSTORED_PATH"] = path
        return env

    @property
    def pid(self) -> int:
        """The pid of guardiand itself (nsenter execs it, so the Popen pid)."""
        if self.proc is None:
            raise LabError("guardiand not started")
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, *, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not go. Returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                raise LabTimeout(f"guardiand in {self.vm.name} ignored SIGTERM",
                                 {"log": self.log()[-3000:]}) from None
        return self.proc.returncode

    def reload(self, config: str | None = None) -> None:
        """Write ``config`` (if given) and send SIGHUP."""
        if config is not None:
            self.config = config
            self.vm.write_file(self.config_path, config)
        if self.proc is None:
            raise LabError("guardiand not started")
        self.proc.send_signal(signal.SIGHUP)

    # -- observation ---------------------------------------------------------------------
    @property
    def socket(self) -> str:
        return f"/proc/{self.vm.holder_pid}/root{CONTROL_SOCKET}"

    def status(self, *, timeout: float = 5.0) -> dict[str, Any]:
        from guardian._control import request

        reply = request(self.socket, "status", timeout=timeout)
        if not reply.get("ok") or not isinstance(reply.get("status"), dict):
            raise LabError(f"guardiand in {self.vm.name}: bad status reply {reply!r}")
        status: dict[str, Any] = reply["status"]
        return status

    def service(self, name: str) -> dict[str, Any]:
        for s in self.status()["services"]:
            if s["name"] == name:
                return dict(s)
        raise LabError(f"guardiand in {self.vm.name}: no service {name!r}")

    def wait(
        self,
        pred: Callable[[dict[str, Any]], bool],
        *,
        timeout: float = 15.0,
        what: str = "condition",
        poll: float = 0.02,
    ) -> dict[str, Any]:
        """Poll the status until ``pred(status)``; returns that status."""
        from guardian._control import ControlError

        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise LabError(f"guardiand in {self.vm.name} exited {self.proc.returncode}: "
                               + self.log()[-3000:])
            try:
                st = self.status(timeout=2.0)
                last = st
                if pred(st):
                    return st
            except ControlError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise LabTimeout(f"guardiand in {self.vm.name}: no {what} within {timeout:g} s",
                                 {"last": repr(last)[-3000:], "log": self.log()[-3000:]})
            time.sleep(poll)

    def wait_state(self, service: str, *states: str, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until ``service`` is in one of ``states``; returns its status entry."""
        found: dict[str, Any] = {}

        def pred(st: dict[str, Any]) -> bool:
            for s in st["services"]:
                if s["name"] == service and s["state"] in states:
                    found.update(s)
                    return True
            return False

        self.wait(pred, timeout=timeout, what=f"{service} in {'/'.join(states)}")
        return found

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``guardian ARGS`` inside the VM (e.g. ``status``)."""
        return self.vm.run([sys.executable, "-m", "guardian", "--config", self.config_path,
                            *args], check=check, env=self._env())
