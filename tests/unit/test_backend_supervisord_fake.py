"""The supervisord controller's decisions, against a hand-written fake supervisord:
an XML-RPC server on a unix socket (or loopback HTTP) that plays a scripted
story and records every call.

A real supervisord reaps a dead child as soon as any request wakes it up, so
the "pid dead but still reported RUNNING" window cannot be produced on demand
with it; the fake holds that window open for as many calls as a test wants.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import socketserver
import subprocess
import tempfile
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler

import pytest

from checks import Options
from guardian.backends import BackendError, SupervisordBackend, UnitState

ALREADY_STARTED = 60
NOT_RUNNING = 70
SPAWN_ERROR = 50
BAD_NAME = 10


class FakeSupervisor:
    """One program's story: ``info`` says what getProcessInfo returns next,
    ``on_start`` / ``on_stop`` decide what those calls do; ``calls`` records."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.info: Callable[[], dict[str, Any]] = lambda: self.make("RUNNING", 0)
        self.on_start: Callable[[], Any] = lambda: True
        self.on_stop: Callable[[], Any] = lambda: True

    @staticmethod
    def make(statename: str, pid: int, spawnerr: str = "") -> dict[str, Any]:
        return {"name": "web", "group": "web", "statename": statename, "pid": pid,
                "description": f"{statename.lower()} (fake)", "spawnerr": spawnerr}

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def getProcessInfo(self, name: str) -> dict[str, Any]:  # noqa: N802 - supervisord's API
        self.calls.append(("getProcessInfo", (name,)))
        if name != "web":
            raise xmlrpc.client.Fault(BAD_NAME, f"BAD_NAME: {name}")
        return self.info()

    def startProcess(self, name: str, wait: bool = True) -> Any:  # noqa: N802
        self.calls.append(("startProcess", (name, wait)))
        return self.on_start()

    def stopProcess(self, name: str, wait: bool = True) -> Any:  # noqa: N802
        self.calls.append(("stopProcess", (name, wait)))
        return self.on_stop()


class _UnixXMLRPCServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer,
                        SimpleXMLRPCDispatcher):
    daemon_threads = True
    logRequests = False

    def __init__(self, path: str) -> None:
        SimpleXMLRPCDispatcher.__init__(self, allow_none=True, encoding=None)
        socketserver.UnixStreamServer.__init__(self, path, _Handler)


class _TCPXMLRPCServer(socketserver.ThreadingMixIn, socketserver.TCPServer,
                       SimpleXMLRPCDispatcher):
    daemon_threads = True
    allow_reuse_address = True
    logRequests = False

    def __init__(self) -> None:
        SimpleXMLRPCDispatcher.__init__(self, allow_none=True, encoding=None)
        socketserver.TCPServer.__init__(self, ("127.0.0.1", 0), _AuthHandler)


class _Handler(SimpleXMLRPCRequestHandler):
    disable_nagle_algorithm = False  # TCP_NODELAY on a unix socket: EOPNOTSUPP

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def address_string(self) -> str:
        return "unix"


class _AuthHandler(_Handler):
    """Basic auth ``guardian:s3cret`` like supervisord's [inet_http_server]."""

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        good = "Basic " + base64.b64encode(b"guardian:s3cret").decode()
        if self.headers.get("Authorization") != good:
            self.send_error(401, "Unauthorized")
            return False
        return True


def _register(server: SimpleXMLRPCDispatcher, fake: FakeSupervisor) -> None:
    for method in ("getProcessInfo", "startProcess", "stopProcess"):
        server.register_function(getattr(fake, method), f"supervisor.{method}")


@pytest.fixture
def fake() -> Iterator[tuple[FakeSupervisor, str]]:
    d = Path(tempfile.mkdtemp(prefix="gfk-", dir="/tmp"))
    fake = FakeSupervisor()
    server = _UnixXMLRPCServer(str(d / "s.sock"))
    _register(server, fake)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield fake, f"unix://{d}/s.sock"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5.0)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def zombie() -> Iterator[int]:
    """The pid of a child of this test that exited and is not reaped yet."""
    proc = subprocess.Popen(["sleep", "60"])
    proc.kill()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/stat") as fh:
            if fh.read().rpartition(")")[2].split()[0] == "Z":
                break
        time.sleep(0.005)
    else:
        raise AssertionError("no zombie")
    try:
        yield proc.pid
    finally:
        proc.wait()


def controller(url: str) -> Any:
    backend = SupervisordBackend.from_options(Options({"url": url}))
    return backend.controller("web", Options({}, "services.web", "g.toml"))


def test_dead_but_reported_running_retries_start_without_stop(
        fake: tuple[FakeSupervisor, str], zombie: int) -> None:
    sup, url = fake
    reaped = threading.Event()
    sup.info = lambda: sup.make("EXITED" if reaped.is_set() else "RUNNING",
                                0 if reaped.is_set() else zombie)

    def start() -> bool:
        # supervisord reaps right after answering a request: here, after the 2nd start
        if sup.names().count("startProcess") < 3:
            if sup.names().count("startProcess") == 2:
                reaped.set()
            raise xmlrpc.client.Fault(ALREADY_STARTED, "ALREADY_STARTED: web")
        return True

    sup.on_start = start
    t0 = time.monotonic()
    asyncio.run(controller(url).restart(t0 + 5.0))
    took = time.monotonic() - t0
    assert "stopProcess" not in sup.names()
    assert sup.names().count("startProcess") == 3
    assert sup.calls[-1] == ("startProcess", ("web", False))   # never waits for startsecs
    assert took < 0.5


def test_live_running_is_stopped_then_started(fake: tuple[FakeSupervisor, str]) -> None:
    import os
    sup, url = fake
    states = iter(["RUNNING", "STOPPING", "STOPPED"])
    sup.info = lambda: sup.make(next(states, "STOPPED"), os.getpid())
    asyncio.run(controller(url).restart(time.monotonic() + 5.0))
    assert sup.names() == ["getProcessInfo", "stopProcess", "getProcessInfo",
                           "getProcessInfo", "startProcess"]
    assert sup.calls[1] == ("stopProcess", ("web", False))


@pytest.mark.parametrize("state", ["EXITED", "FATAL", "STOPPED"])
def test_not_running_states_just_start(fake: tuple[FakeSupervisor, str], state: str) -> None:
    sup, url = fake
    sup.info = lambda: sup.make(state, 0)
    asyncio.run(controller(url).restart(time.monotonic() + 5.0))
    assert sup.names() == ["getProcessInfo", "startProcess"]


def test_backoff_is_stopped_first(fake: tuple[FakeSupervisor, str]) -> None:
    sup, url = fake
    states = iter(["BACKOFF", "STOPPED"])
    sup.info = lambda: sup.make(next(states, "STOPPED"), 0)
    asyncio.run(controller(url).restart(time.monotonic() + 5.0))
    assert sup.names() == ["getProcessInfo", "stopProcess", "getProcessInfo", "startProcess"]


def test_stuck_dead_pid_gives_up_at_the_deadline(fake: tuple[FakeSupervisor, str],
                                                 zombie: int) -> None:
    sup, url = fake
    sup.info = lambda: sup.make("RUNNING", zombie)

    def start() -> bool:
        raise xmlrpc.client.Fault(ALREADY_STARTED, "ALREADY_STARTED: web")

    sup.on_start = start
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=f"still reports it RUNNING although pid {zombie}"):
        asyncio.run(controller(url).restart(t0 + 0.3))
    took = time.monotonic() - t0
    assert 0.25 < took < 1.0
    assert "stopProcess" not in sup.names()


def test_status_of_a_dead_pid_reported_running_is_exited(fake: tuple[FakeSupervisor, str],
                                                          zombie: int) -> None:
    sup, url = fake
    sup.info = lambda: sup.make("RUNNING", zombie)
    st = asyncio.run(controller(url).status(time.monotonic() + 5.0))
    assert st.state is UnitState.EXITED
    assert st.pid is None
    assert f"pid {zombie} is gone" in st.detail


def test_spawn_error_names_the_reason(fake: tuple[FakeSupervisor, str]) -> None:
    sup, url = fake
    sup.info = lambda: sup.make("BACKOFF" if "startProcess" in sup.names() else "EXITED", 0,
                                "Exited too quickly (process log may have details)")

    def start() -> bool:
        raise xmlrpc.client.Fault(SPAWN_ERROR, "SPAWN_ERROR: web")

    sup.on_start = start
    with pytest.raises(BackendError, match="could not spawn it .*Exited too quickly"):
        asyncio.run(controller(url).start(time.monotonic() + 5.0))


def test_stop_of_a_stopped_program_is_fine(fake: tuple[FakeSupervisor, str]) -> None:
    sup, url = fake
    sup.info = lambda: sup.make("STOPPED", 0)

    def stop() -> bool:
        raise xmlrpc.client.Fault(NOT_RUNNING, "NOT_RUNNING: web")

    sup.on_stop = stop
    asyncio.run(controller(url).stop(time.monotonic() + 5.0))
    assert sup.names() == ["getProcessInfo", "stopProcess", "getProcessInfo"]


def test_http_url_with_credentials() -> None:
    fake = FakeSupervisor()
    fake.info = lambda: fake.make("RUNNING", 1)
    server = _TCPXMLRPCServer()
    _register(server, fake)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        good = SupervisordBackend.from_options(
            Options({"url": url, "username": "guardian", "password": "s3cret"}))
        st = asyncio.run(good.controller("web", Options({})).status(time.monotonic() + 5.0))
        assert st.state is UnitState.RUNNING
        assert st.pid == 1
        bad = SupervisordBackend.from_options(
            Options({"url": url, "username": "guardian", "password": "wrong"}))
        with pytest.raises(BackendError, match="refused the credentials"):
            asyncio.run(bad.controller("web", Options({})).status(time.monotonic() + 5.0))
        assert fake.names() == ["getProcessInfo"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5.0)
