"""The supervisord backend against a real supervisord (Debian's), started per test
in a private directory with a unix socket, and the event listener registered in it.

Timings are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from unit_helpers import dead, free_port, pids_in, run, serving, soon, wait_for

from checks import Options
from guardian.backends import (
    BackendError,
    SupervisordBackend,
    UnitEvent,
    UnitState,
    listener_config_snippet,
    load_backend_class,
)
from guardian.backends.supervisord import event_from_message

if TYPE_CHECKING:
    from conftest import SupervisordFactory, SupervisordProc

PY = sys.executable


def programs(d: Path, web_port: int, holder_port: int) -> dict[str, str]:
    """The programs of these tests; ``d`` is where ``holder`` notes its orphans."""
    holder = (f"sh -c 'sleep 60 & echo $! >> {d}/orphans; "
              f"exec {PY} -m http.server --bind 127.0.0.1 {holder_port}'")
    return {
        "web": f"""\
command={PY} -m http.server --bind 127.0.0.1 {web_port}
autorestart=false
startsecs=1
stopwaitsecs=5
""",
        # like apache2: a child process keeps stdout/stderr open after the main
        # process dies, so supervisord sees no EOF and notices the death late
        "holder": f"""\
command={holder}
autorestart=false
startsecs=1
""",
        "broken": f"""\
command={d}/no-such-program
autostart=false
""",
        "crashy": """\
command=sh -c 'exit 3'
autostart=false
autorestart=false
startsecs=1
startretries=0
""",
        # ignores the stop signal: only a SIGKILL ends it
        "stubborn": """\
command=sh -c 'trap "" TERM; exec sleep 600'
autostart=false
autorestart=false
startsecs=0
stopwaitsecs=30
""",
        "member": """\
command=sleep 600
autostart=false
startsecs=0
""",
    }


@pytest.fixture
def supervisord(supervisord_factory: SupervisordFactory,
                tmp_path: Path) -> Iterator[SupervisordProc]:
    """A private supervisord running ``programs`` (``member`` in group ``grp``),
    with the ports of ``web`` and ``holder`` in ``ports``."""
    ports = {"web": free_port(), "holder": free_port()}
    sd = supervisord_factory(programs(tmp_path, ports["web"], ports["holder"]),
                             extra="[group:grp]\nprograms=member\n")
    sd.ports.update(ports)
    try:
        yield sd
    finally:
        sd.extra_pids += pids_in(tmp_path / "orphans")   # killed by the factory


# ----------------------------------------------------------------------------- config
def test_registry_finds_it() -> None:
    assert load_backend_class("supervisord") is SupervisordBackend


def test_options_defaults_and_errors() -> None:
    b = SupervisordBackend.from_options(Options({}))
    assert b.url == "unix:///run/supervisor.sock"
    assert b.events_enabled is True
    assert b.event_socket == "/run/guardian/events.sock"
    b = SupervisordBackend.from_options(Options({"url": "http://127.0.0.1:9001",
                                                 "username": "u", "password": "p",
                                                 "events": False}))
    assert (b.url, b.username, b.password, b.events_enabled, b.local) == \
        ("http://127.0.0.1:9001", "u", "p", False, True)
    assert SupervisordBackend.from_options(Options({"url": "http://10.0.0.1:9001"})).local \
        is False
    for table, key in [({"url": "ftp://x"}, "url"), ({"url": "unix://relative"}, "url"),
                       ({"url": "http://h:notaport"}, "url"), ({"username": "u"}, "password"),
                       ({"event_socket": "rel.sock"}, "event_socket")]:
        with pytest.raises(ValueError, match=f"backends.supervisord.{key}"):
            SupervisordBackend.from_options(Options(table, "backends.supervisord", "g.toml"))


def test_unit_names() -> None:
    b = SupervisordBackend()
    assert b.controller("web", Options({})).unit == "web"
    assert b.controller("web", Options({"unit": "apache2"})).unit == "apache2"
    assert b.controller("web", Options({"unit": "grp:member"})).unit == "grp:member"
    # a program that is its own group is named like supervisord's events name it
    assert b.controller("web", Options({"unit": "web:web"})).unit == "web"
    for bad in ("grp:", ":x", "a:b:c", "grp:*", "two words", 3):
        with pytest.raises(ValueError, match="services.web.unit"):
            b.controller("web", Options({"unit": bad}, "services.web", "g.toml"))


def test_event_messages() -> None:
    ev = event_from_message(b'{"eventname":"PROCESS_STATE_EXITED","processname":"web",'
                            b'"groupname":"web","from_state":"RUNNING","pid":42,"expected":0}')
    assert ev == UnitEvent("web", UnitState.EXITED, 42, "RUNNING -> EXITED (unexpected exit)")
    ev = event_from_message(b'{"eventname":"PROCESS_STATE_FATAL","processname":"member",'
                            b'"groupname":"grp","from_state":"BACKOFF"}')
    assert ev == UnitEvent("grp:member", UnitState.FAILED, None, "BACKOFF -> FATAL")
    assert event_from_message(b"not json") is None
    assert event_from_message(b'{"eventname":"TICK_5"}') is None
    assert event_from_message(b"[1]") is None


def test_listener_snippet_escapes() -> None:
    text = listener_config_snippet("/opt/my env/python", "/run/a%b/ev.sock")
    assert "[eventlistener:guardian]" in text
    assert "events=PROCESS_STATE" in text
    assert "command='/opt/my env/python' -m guardian.backends.listener --socket " \
           "/run/a%%b/ev.sock" in text


# ----------------------------------------------------------------------------- real supervisord
def test_status_start_stop(supervisord: SupervisordProc) -> None:
    web = supervisord.controller(None)
    assert web.unit == "web"

    st = run(web.status(soon()))
    assert st.state is UnitState.RUNNING
    assert st.pid == supervisord.info("web")["pid"]
    assert "RUNNING" in st.detail and "pid" in st.detail

    run(web.stop(soon()))
    st = run(web.status(soon()))
    assert (st.state, st.pid) == (UnitState.STOPPED, None)
    assert not serving(supervisord.ports["web"])
    run(web.stop(soon()))  # stopping a stopped program is fine

    run(web.start(soon()))
    st = run(web.status(soon()))
    assert st.state in (UnitState.STARTING, UnitState.RUNNING)
    assert st.pid is not None
    wait_for(lambda: serving(supervisord.ports["web"]), 5.0, "web to serve after start")
    pid = st.pid
    run(web.start(soon()))  # starting a running program is fine and keeps it
    assert supervisord.info("web")["pid"] == pid


def test_restart_running_gives_new_pid(supervisord: SupervisordProc) -> None:
    web = supervisord.controller(None)
    old = supervisord.info("web")["pid"]
    t0 = time.monotonic()
    run(web.restart(soon()))
    took = time.monotonic() - t0
    info = supervisord.info("web")
    assert info["statename"] in ("STARTING", "RUNNING")
    assert info["pid"] not in (0, old)
    wait_for(lambda: serving(supervisord.ports["web"]), 5.0, "web to serve after restart")
    print(f"\nrestart of a running program (stop+start): {took * 1000:.1f} ms")


def test_restart_of_a_stopped_process_lets_it_handle_the_stop_signal(
        supervisord: SupervisordProc) -> None:
    """SIGSTOPped (hung) program: its SIGTERM stays pending until SIGCONT; without
    the backend's SIGCONT supervisord would wait stopwaitsecs (5 s) and SIGKILL."""
    web = supervisord.controller(None, kill_after="20s")
    old = supervisord.info("web")["pid"]
    os.kill(old, signal.SIGSTOP)
    t0 = time.monotonic()
    run(web.restart(soon(15)))
    took = time.monotonic() - t0
    assert dead(old)
    assert supervisord.info("web")["pid"] not in (0, old)
    assert took < 4.0, f"restart of a stopped program took {took:.2f} s (stopwaitsecs 5 s)"
    wait_for(lambda: serving(supervisord.ports["web"]), 5.0, "web to serve after restart")
    print(f"\nrestart of a SIGSTOPped program: {took * 1000:.1f} ms")


def test_restart_kills_a_program_that_ignores_the_stop_signal(
        supervisord: SupervisordProc) -> None:
    stubborn = supervisord.controller("stubborn", kill_after="300ms")
    run(stubborn.start(soon()))
    old = wait_for(lambda: supervisord.info("stubborn")["pid"], 5.0, "stubborn's pid")

    def ignoring() -> bool:   # the trap is set once the shell has exec'd sleep
        try:
            return Path(f"/proc/{old}/comm").read_text().strip() == "sleep"
        except OSError:
            return False

    wait_for(ignoring, 5.0, "stubborn to ignore SIGTERM")
    t0 = time.monotonic()
    run(stubborn.restart(soon(15)))
    took = time.monotonic() - t0
    assert dead(old)
    assert supervisord.info("stubborn")["pid"] not in (0, old)
    assert 0.3 <= took < 5.0, f"took {took:.2f} s (stopwaitsecs is 30 s)"
    run(stubborn.stop(soon(15)))


def test_kill_after_option() -> None:
    opts = Options({"kill_after": "2 parsecs"}, "backends.supervisord", "test")
    with pytest.raises(Exception, match="kill_after"):
        SupervisordBackend.from_options(opts)
    assert SupervisordBackend().kill_after == 3.0


def test_restart_from_exited_and_fatal(supervisord: SupervisordProc) -> None:
    web = supervisord.controller(None)
    os.kill(supervisord.info("web")["pid"], signal.SIGTERM)
    wait_for(lambda: supervisord.info("web")["statename"] == "EXITED", 5.0, "web EXITED")
    st = run(web.status(soon()))
    assert st.state is UnitState.EXITED and st.pid is None
    run(web.restart(soon()))
    assert supervisord.info("web")["statename"] in ("STARTING", "RUNNING")

    crashy = supervisord.controller("crashy", "crashy")
    with contextlib.suppress(BackendError):  # may already fail while starting
        run(crashy.start(soon()))
    wait_for(lambda: supervisord.info("crashy")["statename"] == "FATAL", 5.0, "crashy FATAL")
    st = run(crashy.status(soon()))
    assert st.state is UnitState.FAILED
    assert "FATAL" in st.detail
    # restart from FATAL is attempted (and fails or dies again: it exits 3)
    with contextlib.suppress(BackendError):
        run(crashy.restart(soon()))
    assert supervisord.info("crashy")["start"] > 0


def test_restart_right_after_sigkill(supervisord: SupervisordProc) -> None:
    """SIGKILL the program, restart at once: back with a new pid, quickly."""
    timings = []
    for name, port in supervisord.ports.items():   # web, holder
        ctl = supervisord.controller(name, name)
        for _ in range(3):
            wait_for(lambda: serving(port), 5.0, f"{name} to serve")  # noqa: B023
            old = supervisord.info(name)["pid"]
            os.kill(old, signal.SIGKILL)
            t0 = time.monotonic()
            run(ctl.restart(t0 + 5.0))
            restarted = time.monotonic() - t0
            info = supervisord.info(name)
            assert info["statename"] in ("STARTING", "RUNNING")
            assert info["pid"] not in (0, old)
            wait_for(lambda: serving(port), 5.0, f"{name} to serve again")  # noqa: B023
            back = time.monotonic() - t0
            timings.append((name, restarted, back))
    for name, restarted, back in timings:
        print(f"\n{name}: SIGKILL -> restart() returned {restarted * 1000:.1f} ms, "
              f"serving HTTP again {back * 1000:.1f} ms", end="")
    # well under supervisord's own 1 s poll tick, even when it has not noticed the death
    assert max(r for _, r, _ in timings) < 0.5


def test_restart_after_death_keeps_the_crash_record(supervisord: SupervisordProc) -> None:
    """The child died while its pipes are still held open (supervisord was not
    woken by an EOF): restart must not make supervisord record a stop by us."""
    holder = supervisord.controller("holder", "holder")
    old = supervisord.info("holder")["pid"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: dead(old), 2.0, "holder to die")
    t0 = time.monotonic()
    run(holder.restart(t0 + 5.0))
    took = time.monotonic() - t0
    info = supervisord.info("holder")
    assert info["statename"] in ("STARTING", "RUNNING") and info["pid"] not in (0, old)
    log = (supervisord.dir / "supervisord.log").read_text()
    assert "exited: holder (terminated by SIGKILL; not expected)" in log
    assert "stopped: holder" not in log
    print(f"\nrestart of a dead, unreaped child: {took * 1000:.1f} ms")
    assert took < 0.5


def test_status_right_after_sigkill_says_exited(supervisord: SupervisordProc) -> None:
    holder = supervisord.controller("holder", "holder")
    old = supervisord.info("holder")["pid"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: dead(old), 2.0, "holder to die")
    assert supervisord.proc.poll() is None
    st = run(holder.status(soon()))
    assert st.state is UnitState.EXITED
    assert st.pid is None


def test_group_member(supervisord: SupervisordProc) -> None:
    member = supervisord.controller("grp:member", "member")
    assert run(member.status(soon())).state is UnitState.STOPPED
    run(member.start(soon()))
    st = run(member.status(soon()))
    assert st.state is UnitState.RUNNING and st.pid == supervisord.info("grp:member")["pid"]
    run(member.stop(soon()))
    assert supervisord.info("grp:member")["statename"] == "STOPPED"


def test_bad_name_is_a_clear_error(supervisord: SupervisordProc) -> None:
    ghost = supervisord.controller("ghost", "ghost")
    for call in (ghost.status, ghost.start, ghost.stop, ghost.restart):
        with pytest.raises(BackendError, match=r"no program named 'ghost' .*services.ghost.unit"):
            run(call(soon()))


def test_spawn_error_is_a_clear_error(supervisord: SupervisordProc) -> None:
    broken = supervisord.controller("broken", "broken")
    with pytest.raises(BackendError, match="broken: its command cannot run .*no-such-program"):
        run(broken.start(soon()))


def test_not_running_is_an_error_bounded_by_the_deadline(short_dir: Path) -> None:
    path = f"{short_dir}/none.sock"
    ctl = SupervisordBackend(url=f"unix://{path}").controller("web", Options({}))
    with pytest.raises(BackendError, match="supervisord is not running: no socket"):
        run(ctl.status(soon(2.0)))
    # a socket file that nobody listens on: connection refused
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    with pytest.raises(BackendError, match="connection to .* refused"):
        run(ctl.restart(soon(2.0)))
    # a socket that accepts but never answers (a hung supervisord): the deadline bounds it
    os.unlink(path)
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(path)
    hung.listen(5)
    try:
        t0 = time.monotonic()
        with pytest.raises(BackendError, match=r"restart web: supervisord did not finish in "
                                               r"time \(waiting for getProcessInfo\('web'\)\)"):
            run(ctl.restart(t0 + 0.3))
        took = time.monotonic() - t0
        assert 0.25 <= took < 1.0, took
    finally:
        hung.close()


def test_call_latency(supervisord: SupervisordProc) -> None:
    web = supervisord.controller(None)

    async def many(n: int) -> float:
        t0 = time.monotonic()
        for _ in range(n):
            await web.status(soon())
        return (time.monotonic() - t0) / n

    per_call = run(many(200))
    rpc = supervisord.rpc()
    t0 = time.monotonic()
    for _ in range(200):
        rpc.getProcessInfo("web")
    raw = (time.monotonic() - t0) / 200
    print(f"\nstatus() through the backend (thread + connection + getProcessInfo): "
          f"{per_call * 1000:.2f} ms per call; raw getProcessInfo on a kept connection: "
          f"{raw * 1000:.2f} ms")
    assert per_call < 0.05


def test_event_listener_delivers_exit(supervisord: SupervisordProc) -> None:
    """SIGKILL a program: its PROCESS_STATE_EXITED arrives through events().

    supervisord hands an event to listeners one loop iteration after it reaps the
    child, and an idle supervisord loops once a second: so on its own the event
    takes 1-2 s; any XML-RPC request (a status() call) flushes it at once.
    """
    backend = supervisord.backend()
    web = supervisord.controller(None)

    async def scenario() -> tuple[float, float]:
        queue: asyncio.Queue[tuple[float, UnitEvent]] = asyncio.Queue()

        async def pump() -> None:
            async for ev in backend.events():
                queue.put_nowait((time.monotonic(), ev))

        async def next_event(unit: str, state: UnitState) -> tuple[float, UnitEvent]:
            async with asyncio.timeout(5.0):
                while True:
                    at, ev = await queue.get()
                    if ev.unit == unit and ev.state is state:
                        return at, ev

        task = asyncio.create_task(pump())
        try:
            for _ in range(500):
                if os.path.exists(supervisord.event_socket):
                    break
                await asyncio.sleep(0.01)
            assert os.stat(supervisord.event_socket).st_mode & 0o777 == 0o600

            # 1. nobody talks to supervisord after the kill
            old = supervisord.info("web")["pid"]
            os.kill(old, signal.SIGKILL)
            killed = time.monotonic()
            at, ev = await next_event("web", UnitState.EXITED)
            assert ev.pid == old
            assert ev.detail == "RUNNING -> EXITED (unexpected exit)"
            passive = at - killed

            # a restart is reported too
            await web.restart(soon())
            _, ev = await next_event("web", UnitState.STARTING)
            _, ev = await next_event("web", UnitState.RUNNING)
            assert ev.pid == supervisord.info("web")["pid"]

            # 2. guardiand asks for the status right after the kill
            old = ev.pid
            assert old is not None
            os.kill(old, signal.SIGKILL)
            killed = time.monotonic()
            while not dead(old):
                await asyncio.sleep(0.001)
            st = await web.status(soon())
            assert st.state is UnitState.EXITED
            at, ev = await next_event("web", UnitState.EXITED)
            assert ev.pid == old
            return passive, at - killed
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    passive, nudged = run(scenario())
    print(f"\nSIGKILL -> PROCESS_STATE_EXITED UnitEvent: {passive * 1000:.1f} ms on its own, "
          f"{nudged * 1000:.1f} ms with a status() call right after the kill")
    assert nudged < 0.5
    # the generator removed its socket when it ended
    assert not os.path.exists(supervisord.event_socket)


def test_events_replace_a_stale_socket_and_refuse_a_file(short_dir: Path) -> None:
    path = str(short_dir / "run" / "ev.sock")   # the directory is created
    backend = SupervisordBackend(event_socket=path)
    os.mkdir(short_dir / "run")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(path)
    stale.close()

    async def first_event() -> UnitEvent:
        agen = backend.events()
        assert isinstance(agen, AsyncGenerator)
        nxt = asyncio.ensure_future(agen.__anext__())
        try:
            for _ in range(500):
                if os.stat(path).st_mode & 0o777 == 0o600:
                    break
                await asyncio.sleep(0.01)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.sendto(b"garbage", path)
            s.sendto(b'{"eventname":"PROCESS_STATE_RUNNING","processname":"x",'
                     b'"groupname":"x","from_state":"STARTING","pid":7}', path)
            s.close()
            async with asyncio.timeout(5.0):
                ev: UnitEvent = await nxt
                return ev
        finally:
            nxt.cancel()
            await agen.aclose()

    ev = run(first_event())
    assert ev == UnitEvent("x", UnitState.RUNNING, 7, "STARTING -> RUNNING")

    assert not os.path.exists(path)
    Path(path).write_text("not a socket")
    from guardian.backends.supervisord import _bind_event_socket
    with pytest.raises(BackendError, match="is not a socket"):
        _bind_event_socket(path)
    assert Path(path).read_text() == "not a socket"


def test_events_disabled_yields_nothing() -> None:
    backend = SupervisordBackend(events=False, event_socket="/nonexistent/dir/ev.sock")

    async def collect() -> list[UnitEvent]:
        return [ev async for ev in backend.events()]

    assert run(collect()) == []


def test_aclose_ends_events_and_removes_the_socket(short_dir: Path) -> None:
    path = str(short_dir / "ev.sock")
    backend = SupervisordBackend(event_socket=path)

    async def scenario() -> None:
        async def pump() -> None:
            async for _ in backend.events():
                pass

        task = asyncio.create_task(pump())
        for _ in range(500):
            if os.path.exists(path):
                break
            await asyncio.sleep(0.01)
        assert os.path.exists(path)
        await backend.aclose()
        async with asyncio.timeout(2.0):
            await task  # ends by itself, not cancelled

    run(scenario())
    assert not os.path.exists(path)
