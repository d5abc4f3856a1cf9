"""The command backend with real commands: a ``sleep`` daemon with a pidfile."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from unit_helpers import kill_all, pids_in, run, sigkilled, soon, started, state_of, wait_gone

from checks import ConfigError, Options
from guardian.backends import BackendError, CommandBackend, UnitState, load_backend_class
from guardian.backends.command import CommandController


class Daemon:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.pidfile = d / "d.pid"
        self.log = d / "log"

    def table(self, **extra: Any) -> dict[str, Any]:
        d = self.dir
        return {
            # started in the background, like a daemon; every pid recorded for cleanup
            "start_command": ["sh", "-c", f"echo start >> {d}/log; sleep 600 & "
                              f"echo $! > {self.pidfile}; echo $! >> {d}/all-pids"],
            "stop_command": f"sh -c 'echo stop >> {d}/log; kill $(cat {self.pidfile}) "
                            f"&& rm {self.pidfile}'",
            "pidfile": str(self.pidfile),
            **extra,
        }

    def controller(self, **extra: Any) -> CommandController:
        return CommandBackend().controller(
            "web", Options(self.table(**extra), "services.web", "test"))

    def calls(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    def pid(self) -> int:
        return int(self.pidfile.read_text())


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield Daemon(tmp_path)
    kill_all(pids_in(tmp_path / "all-pids"))


def test_options() -> None:
    assert load_backend_class("command") is CommandBackend
    ctl = CommandBackend().controller("web", Options({"start_command": "apachectl start",
                                                     "stop_command": ["apachectl", "stop"]}))
    assert ctl.start_command == ("apachectl", "start")
    assert ctl.stop_command == ("apachectl", "stop")
    assert (ctl.restart_command, ctl.status_command, ctl.pidfile) == (None, None, None)
    assert CommandBackend().controller("web", Options({"start_command": "x"})).stop_command \
        is None
    cases: list[tuple[dict[str, Any], str]] = [
        ({"stop_command": "x"}, "start_command"),
        ({"start_command": "x", "stop_command": []}, "stop_command"),
        ({"start_command": "", "stop_command": "x"}, "start_command"),
        ({"start_command": "x", "stop_command": "x", "pidfile": "p"}, "pidfile"),
        ({"start_command": "x", "stop_command": "x", "status_command": 3}, "status_command"),
    ]
    for table, key in cases:
        with pytest.raises(ConfigError, match=f"services.web.{key}"):
            CommandBackend().controller("web", Options(table, "services.web", "g.toml"))


def test_lifecycle_with_pidfile(daemon: Daemon) -> None:
    ctl = daemon.controller()
    assert run(ctl.status(soon())).state is UnitState.STOPPED
    pid = started(ctl, daemon.pid)
    sigkilled(ctl, pid)

    # default restart: stop, then start
    run(ctl.restart(soon()))
    assert daemon.pid() != pid
    assert run(ctl.status(soon())).state is UnitState.RUNNING
    run(ctl.stop(soon()))
    assert run(ctl.status(soon())).state is UnitState.STOPPED
    assert daemon.calls() == ["start", "stop", "start", "stop"]


def test_restart_and_status_commands(daemon: Daemon) -> None:
    d = daemon.dir
    ctl = daemon.controller(
        restart_command=["sh", "-c", f"echo restart >> {d}/log"],
        status_command=["sh", "-c", f"echo status >> {d}/log; test -e {d}/up"])
    st = run(ctl.status(soon()))
    assert st.state is UnitState.STOPPED and "exit status 1" in st.detail
    (d / "up").touch()
    assert run(ctl.status(soon())).state is UnitState.RUNNING
    run(ctl.restart(soon()))
    assert daemon.calls() == ["status", "status", "restart"]


def test_failure_carries_the_last_stderr_line(daemon: Daemon) -> None:
    ctl = daemon.controller(start_command=["sh", "-c", "echo noise >&2; "
                                           "echo 'port 80 already in use' >&2; exit 4"])
    with pytest.raises(BackendError,
                       match="start web: sh failed: exit status 4: port 80 already in use"):
        run(ctl.start(soon()))


def test_restart_reports_both_failures(daemon: Daemon) -> None:
    ctl = daemon.controller(start_command=["sh", "-c", "echo cannot start >&2; exit 1"],
                            stop_command=["sh", "-c", "echo cannot stop >&2; exit 1"])
    with pytest.raises(BackendError, match="cannot start.*after: .*cannot stop"):
        run(ctl.restart(soon()))


def test_deadline_kills_a_hung_command(tmp_path: Path) -> None:
    pidfile = tmp_path / "hung.pid"
    ctl = CommandBackend().controller("web", Options({
        "start_command": ["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"],
        "stop_command": "true"}))
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"start web: .* did not finish within 0.[23]\d* s"):
        run(ctl.start(t0 + 0.3))
    assert time.monotonic() - t0 < 1.0
    child = int(pidfile.read_text())
    assert wait_gone(child)


def test_no_way_to_know_status() -> None:
    ctl = CommandBackend().controller("web", Options({"start_command": "true",
                                                     "stop_command": "true"}))
    st = run(ctl.status(soon()))
    assert st.state is UnitState.UNKNOWN and "no status_command" in st.detail


def test_stop_without_stop_command_signals_the_pidfile(daemon: Daemon) -> None:
    table = daemon.table()
    del table["stop_command"]
    ctl = CommandBackend().controller("web", Options(table))
    run(ctl.start(soon()))
    pid = daemon.pid()
    t0 = time.monotonic()
    run(ctl.stop(soon()))
    assert time.monotonic() - t0 < 3.0   # well before the 5 s deadline
    assert state_of(pid) in ("", "Z")
    assert run(ctl.status(soon())).state is UnitState.EXITED  # pidfile left behind
    run(ctl.stop(soon()))  # a dead pid: nothing to do


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    pidfile = tmp_path / "stubborn.pid"
    stubborn = tmp_path / "stubborn"
    stubborn.write_text(f"#!/bin/sh\ntrap '' TERM\necho $$ > {pidfile}\n"
                        "while :; do sleep 0.05; done\n")
    stubborn.chmod(0o755)
    ctl = CommandBackend().controller("web", Options({
        "start_command": ["sh", "-c", f"{stubborn} >/dev/null 2>&1 &"],
        "pidfile": str(pidfile)}))
    run(ctl.start(soon()))
    deadline = time.monotonic() + 3
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = int(pidfile.read_text())
    try:
        t0 = time.monotonic()
        run(ctl.stop(t0 + 0.5))
        took = time.monotonic() - t0
        assert state_of(pid) in ("", "Z")
        assert 0.35 <= took < 1.0, took   # TERM ignored: KILL at 80 % of the time
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_stop_with_nothing_to_go_on() -> None:
    ctl = CommandBackend().controller("web", Options({"start_command": "true"}))
    with pytest.raises(BackendError, match="no stop_command and no pidfile"):
        run(ctl.stop(soon()))
