"""run_command: exit status and output, the deadline that kills a process group,
daemons that keep stdout open, and the small helpers beside it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from unit_helpers import kill_all, run, state_of, wait_gone

from guardian.backends import BackendError
from guardian.backends._proc import (
    last_line,
    pid_alive,
    read_pidfile,
    run_command,
    to_command,
)


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Pids a test leaves behind on purpose; killed at the end, pass or fail."""
    pids: list[int] = []
    yield pids
    kill_all(pids)


def test_result_and_output() -> None:
    res = run(run_command(["sh", "-c", "echo out; echo first >&2; echo 'last words' >&2; "
                           "exit 3"], time.monotonic() + 5))
    assert res.returncode == 3 and not res.ok
    assert res.stdout == "out\n"
    assert res.stderr == "first\nlast words\n"
    assert res.reason() == "exit status 3: last words"
    ok = run(run_command(["true"], time.monotonic() + 5))
    assert ok.ok and ok.reason() == "exit status 0"


def test_env_is_added_and_stdin_is_empty() -> None:
    res = run(run_command(["sh", "-c", 'echo "$GUARDIAN_X"; cat'], time.monotonic() + 5,
                          env={"GUARDIAN_X": "hello"}))
    assert res.stdout == "hello\n"


def test_deadline_kills_the_process_group(tmp_path: Path, leftovers: list[int]) -> None:
    pidfile = tmp_path / "child.pid"
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"did not finish within 0.[23]\d* s; killed .*"
                                           r"\(last output: started\)"):
        run(run_command(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; echo started >&2; "
                                     "wait"], t0 + 0.3))
    took = time.monotonic() - t0
    assert 0.28 <= took < 1.0, took
    child = int(pidfile.read_text())
    leftovers.append(child)
    assert wait_gone(child), "the grandchild in the process group must be killed"


def test_a_daemon_holding_stdout_does_not_delay_the_return(tmp_path: Path,
                                                           leftovers: list[int]) -> None:
    pidfile = tmp_path / "daemon.pid"
    t0 = time.monotonic()
    res = run(run_command(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; echo launched"],
                          t0 + 5))
    took = time.monotonic() - t0
    daemon = int(pidfile.read_text())
    leftovers.append(daemon)
    assert res.ok and res.stdout == "launched\n"
    assert took < 1.0
    assert state_of(daemon) not in ("", "Z"), "a successful command's daemon is left alone"


def test_cancel_kills_the_process_group(tmp_path: Path, leftovers: list[int]) -> None:
    pidfile = tmp_path / "child.pid"

    async def scenario() -> None:
        task = asyncio.create_task(run_command(
            ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"], time.monotonic() + 30))
        for _ in range(300):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    pid = int(pidfile.read_text())
    leftovers.append(pid)
    assert wait_gone(pid)


def test_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="no-such-program: no such file"):
        run(run_command(["/nonexistent/no-such-program"], time.monotonic() + 5))
    not_executable = tmp_path / "script"
    not_executable.write_text("#!/bin/sh\n")
    not_executable.chmod(0o644)
    with pytest.raises(BackendError, match="script: permission denied"):
        run(run_command([str(not_executable)], time.monotonic() + 5))
    with pytest.raises(BackendError, match="no time left"):
        run(run_command(["true"], time.monotonic() - 1))


def test_signal_reason() -> None:
    res = run(run_command(["sh", "-c", "kill -TERM $$"], time.monotonic() + 5))
    assert res.returncode == -signal.SIGTERM
    assert res.reason() == "killed by SIGTERM"


def test_pid_alive_sees_zombies_as_dead() -> None:
    assert pid_alive(os.getpid())
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert pid_alive(proc.pid)
        proc.kill()
        deadline = time.monotonic() + 3
        while state_of(proc.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.005)
        assert state_of(proc.pid) == "Z"
        assert not pid_alive(proc.pid)       # kill(pid, 0) would say alive here
    finally:
        proc.wait()
    assert not pid_alive(proc.pid)
    assert not pid_alive(0)


def test_read_pidfile(tmp_path: Path) -> None:
    f = tmp_path / "x.pid"
    assert read_pidfile(str(f)) is None
    f.write_text("1234\n")
    assert read_pidfile(str(f)) == 1234
    f.write_text("garbage")
    assert read_pidfile(str(f)) is None
    f.write_text("")
    assert read_pidfile(str(f)) is None


def test_to_command_and_last_line() -> None:
    assert to_command("apachectl -k 'graceful stop'") == ("apachectl", "-k", "graceful stop")
    assert to_command(["a", "b c"]) == ("a", "b c")
    for bad in ("", "   ", [], [""], 3, ["a", 3], "unbalanced 'quote"):
        with pytest.raises((ValueError, TypeError)):
            to_command(bad)
    assert last_line("a\nb\n\n  \n") == "b"
    assert last_line("") == ""
    assert last_line("x" * 500).endswith("...") and len(last_line("x" * 500)) == 300
