"""Helpers the unit tests share: waiting on a deadline, loopback ports and servers,
and processes read from /proc independently of the code under test.

A plain module, not a test file: pytest's default ("prepend") import mode puts
this directory on ``sys.path``, so the tests here ``import unit_helpers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import socketserver
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from checks import Check, CheckResult, Options, Status, build_check
from guardian import CheckSpec, LadderAction, LadderStep, RestartPolicy, ServiceSpec
from guardian.backends import Controller, UnitState, UnitStatus

T = TypeVar("T")
C = TypeVar("C", bound=Check)
S = TypeVar("S", bound="LoopbackServer")


# ----------------------------------------------------------------------------- time
def run(coro: Any) -> Any:
    """``asyncio.run`` in a fresh event loop."""
    return asyncio.run(coro)


def soon(seconds: float = 5.0) -> float:
    """A deadline ``seconds`` from now on the monotonic clock."""
    return time.monotonic() + seconds


def give_up_at(deadline: float, timeout: float, what: str,
               show: Callable[[], Any] | None = None) -> None:
    """Fail once ``deadline`` has passed, with what ``show()`` returns (as JSON) if given."""
    if time.monotonic() >= deadline:
        extra = f"\n{json.dumps(show(), indent=1, default=str)}" if show else ""
        raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")


def wait_for(predicate: Callable[[], T], timeout: float, what: str,
             interval: float = 0.01) -> T:
    """Poll ``predicate`` until it is truthy and return its value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        give_up_at(deadline, timeout, what)
        time.sleep(interval)
    return value


async def until(predicate: Callable[[], T], timeout: float, what: str,
                show: Callable[[], Any] | None = None) -> T:
    """:func:`wait_for` on the event loop (``predicate`` runs in it)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        give_up_at(deadline, timeout, what, show)
        await asyncio.sleep(0.01)
    return value


# ----------------------------------------------------------------------------- network
def free_port() -> int:
    """A loopback TCP port with nobody listening (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serving(port: int) -> bool:
    """True if http://127.0.0.1:port/ answers 200 within half a second."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=0.5) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


def build(kind: str, cls: type[C], options: dict[str, Any], path: str,
          server: LoopbackServer | None = None) -> C:
    """``build_check(kind, options)`` as the configuration loader calls it (for
    ``path`` in guardian.toml); it must make a ``cls``.  With ``server``, its
    address is the default ``host`` and ``port``."""
    if server is not None:
        options = {"host": "127.0.0.1", "port": server.port, **options}
    check = build_check(kind, options, path=path, source="guardian.toml")
    assert isinstance(check, cls)
    return check


class LoopbackServer:
    """A socketserver server on 127.0.0.1 run by a daemon thread; ``close()`` (or
    the end of a ``with`` block) sets ``release`` first, so handlers waiting on it end."""

    release: threading.Event

    def _serve(self, server: socketserver.BaseServer) -> None:
        self.server = server
        self.port = int(server.server_address[1])  # type: ignore[index]
        self.thread = threading.Thread(target=server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LoopbackTcpServer(LoopbackServer):
    """Runs ``session(conn)`` for each TCP connection in a thread of its own; an
    OSError (TLS errors included) ends the session quietly."""

    def __init__(self) -> None:
        self.release = threading.Event()
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with contextlib.suppress(OSError):
                    owner.session(self.request)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._serve(Server(("127.0.0.1", 0), Handler))

    def session(self, conn: socket.socket) -> None:
        raise NotImplementedError


# ----------------------------------------------------------------------------- processes
def state_of(pid: int) -> str:
    """'' if gone, else the /proc state letter (Z for a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return ""


def dead(pid: int) -> bool:
    """Gone or a zombie."""
    return state_of(pid) in ("", "Z", "X")


def wait_gone(pid: int, timeout: float = 3.0) -> bool:
    """Whether ``pid`` is dead (see :func:`dead`) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not dead(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def pids_in(path: Path) -> list[int]:
    """The pids listed in ``path`` (none if it does not exist)."""
    return [int(word) for word in path.read_text().split()] if path.exists() else []


def kill_all(pids: Iterable[int]) -> None:
    """SIGKILL every pid; those already gone are fine."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def started(ctl: Controller, pid_of: Callable[[], int]) -> int:
    """Start a daemon through ``ctl`` -- at once, though the daemon keeps the
    command's stdout open -- and see it RUNNING with the pid ``pid_of()`` reads."""
    t0 = time.monotonic()
    run(ctl.start(soon()))
    assert time.monotonic() - t0 < 2.0
    pid = pid_of()
    st = run(ctl.status(soon()))
    assert (st.state, st.pid) == (UnitState.RUNNING, pid)
    return pid


def sigkilled(ctl: Controller, pid: int) -> UnitStatus:
    """SIGKILL the daemon ``pid`` and, once it is gone, see ``ctl`` say EXITED."""
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    st: UnitStatus = run(ctl.status(soon()))
    assert (st.state, st.pid) == (UnitState.EXITED, None)
    return st


# ----------------------------------------------------------------------------- specs
class NullCheck(Check):
    """Never probed for real: the state-machine tests feed verdicts themselves."""

    kind = "null"

    @classmethod
    def from_options(cls, opts: Options) -> NullCheck:
        return cls()

    async def probe(self, deadline: float) -> CheckResult:
        return CheckResult(Status.OK, "ok")


def service_spec(*, interval: float = 1.0, **kw: Any) -> ServiceSpec:
    """A service "web" with one "http" check every ``interval`` s, budget 3 in 5 min,
    ladder exec + alert; ``kw`` replaces any field."""
    base = ServiceSpec(
        name="web", backend="command",
        checks=(CheckSpec("http", NullCheck(), interval, 1.0),),
        rise=2, fall=2, start_grace=5.0,
        restart=RestartPolicy(budget=3, window=300, backoff=1.0, factor=2.0, backoff_max=30,
                              jitter=0.0, timeout=10, exhausted_retry=60),
        ladder=(LadderStep(LadderAction.EXEC, ("/bin/true",)), LadderStep(LadderAction.ALERT)),
        healthy_reset=600,
    )
    return replace(base, **kw)


def flag_service_toml(flag: str | Path, *, ladder: str, interval: str = "50ms",
                      timeout: str = "1s", exhausted_retry: str = "0s") -> str:
    """``[services.web]``: a command-backend service whose exec check fails while the
    file ``flag`` exists; restart budget 0, so its ladder runs on the first failure."""
    return f"""
[services.web]
backend = "command"
start_command = ["/bin/true"]
watch_pid = false
rise = 1
fall = 1
start_grace = "0s"
ladder = ["{ladder}"]
[services.web.restart]
budget = 0
exhausted_retry = "{exhausted_retry}"
[[services.web.checks]]
type = "exec"
command = ["/bin/sh", "-c", "test ! -e {flag} || exit 2"]
interval = "{interval}"
timeout = "{timeout}"
"""
