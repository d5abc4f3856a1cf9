"""The systemd backend against a hand-written fake ``systemctl`` on PATH: it
records each argv as a JSON line and answers from files the test writes
(``out.VERB``, ``err.VERB``, ``rc.VERB``, ``sleep.VERB``)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from unit_helpers import kill_all, run, soon

from checks import ConfigError, Options
from guardian.backends import BackendError, SystemdBackend, UnitState, load_backend_class
from guardian.backends.systemd import PROPERTIES, SystemdController, parse_show

FAKE = """\
#!{python}
import json, os, sys, time
state = {state!r}
argv = sys.argv[1:]
verb = next((a for a in argv if not a.startswith("-")), "")
with open(os.path.join(state, "calls"), "a") as fh:
    fh.write(json.dumps(argv) + "\\n")
with open(os.path.join(state, "pids"), "a") as fh:
    fh.write(f"{{os.getpid()}}\\n")

def read(name, default=""):
    try:
        with open(os.path.join(state, f"{{name}}.{{verb}}")) as fh:
            return fh.read()
    except FileNotFoundError:
        return default

if read("sleep"):
    time.sleep(float(read("sleep")))
sys.stdout.write(read("out"))
sys.stderr.write(read("err"))
sys.exit(int(read("rc", "0")))
"""

SHOW_RUNNING = "LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=1234\n" \
               "Result=success\n"


class FakeSystemctl:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.path = d / "bin" / "systemctl"
        self.path.parent.mkdir()
        self.path.write_text(FAKE.format(python=sys.executable, state=str(d)))
        self.path.chmod(0o755)

    def answer(self, verb: str, out: str = "", err: str = "", rc: int = 0,
               sleep: float = 0.0) -> None:
        (self.dir / f"out.{verb}").write_text(out)
        (self.dir / f"err.{verb}").write_text(err)
        (self.dir / f"rc.{verb}").write_text(str(rc))
        if sleep:
            (self.dir / f"sleep.{verb}").write_text(str(sleep))

    def calls(self) -> list[list[str]]:
        f = self.dir / "calls"
        return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []

    def pids(self) -> list[int]:
        f = self.dir / "pids"
        return [int(x) for x in f.read_text().split()] if f.exists() else []


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemctl]:
    fake = FakeSystemctl(tmp_path)
    monkeypatch.setenv("PATH", f"{fake.path.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    yield fake
    kill_all(fake.pids())


def controller(unit: str | None = None, **backend: Any) -> SystemdController:
    b = SystemdBackend.from_options(Options(backend, "backends.systemd", "test"))
    table = {} if unit is None else {"unit": unit}
    return b.controller("web", Options(table, "services.web", "test"))


def test_options() -> None:
    assert load_backend_class("systemd") is SystemdBackend
    ctl = controller()
    assert (ctl.systemctl, ctl.unit) == ("systemctl", "web.service")
    assert controller("apache2.service", systemctl="/bin/systemctl").systemctl == \
        "/bin/systemctl"
    for bad in ("two words", "-evil", ""):
        with pytest.raises(ConfigError, match="services.web.unit"):
            controller(bad)


def test_start_stop_restart_commands(fake: FakeSystemctl) -> None:
    ctl = controller("apache2.service")
    run(ctl.start(soon()))
    run(ctl.stop(soon()))
    run(ctl.restart(soon()))
    assert fake.calls() == [
        ["--no-ask-password", "reset-failed", "apache2.service"],
        ["--no-ask-password", "start", "apache2.service"],
        ["--no-ask-password", "stop", "apache2.service"],
        ["--no-ask-password", "reset-failed", "apache2.service"],
        ["--no-ask-password", "restart", "apache2.service"],
    ]


def test_reset_failed_failure_does_not_stop_the_start(fake: FakeSystemctl) -> None:
    fake.answer("reset-failed", err="Failed to reset failed state of unit web.service: "
                                    "Unit web.service not loaded.\n", rc=1)
    run(controller().restart(soon()))
    assert [c[1] for c in fake.calls()] == ["reset-failed", "restart"]


def test_failure_message(fake: FakeSystemctl) -> None:
    fake.answer("start", rc=1, err=(
        "Job for web.service failed because the control process exited with error code.\n"
        "See \"systemctl status web.service\" and \"journalctl -xeu web.service\" for "
        "details.\n"))
    with pytest.raises(BackendError, match=r"systemctl start web.service failed: exit status "
                                           r"1: Job for web.service failed because .* See"):
        run(controller().start(soon()))


@pytest.mark.parametrize("show, state, pid, detail", [
    (SHOW_RUNNING, UnitState.RUNNING, 1234, "active (running)"),
    ("ActiveState=activating\nSubState=start\nMainPID=0\nResult=success\nLoadState=loaded\n",
     UnitState.STARTING, None, "activating (start)"),
    ("ActiveState=activating\nSubState=auto-restart\nMainPID=0\nResult=exit-code\n",
     UnitState.EXITED, None, "activating (auto-restart), result: exit-code"),
    ("ActiveState=failed\nSubState=failed\nMainPID=0\nResult=start-limit-hit\n",
     UnitState.FAILED, None, "failed (failed), result: start-limit-hit"),
    ("ActiveState=inactive\nSubState=dead\nMainPID=0\nResult=success\nLoadState=masked\n",
     UnitState.STOPPED, None, "inactive (dead), masked"),
    ("ActiveState=deactivating\nSubState=stop-sigterm\nMainPID=77\nResult=success\n",
     UnitState.STOPPING, 77, "deactivating (stop-sigterm)"),
    ("ActiveState=maintenance\nSubState=x\nMainPID=0\nResult=success\n",
     UnitState.UNKNOWN, None, "maintenance (x)"),
])
def test_status(fake: FakeSystemctl, show: str, state: UnitState, pid: int | None,
                detail: str) -> None:
    fake.answer("show", out=show)
    st = run(controller().status(soon()))
    assert (st.state, st.pid, st.detail) == (state, pid, detail)
    props = []
    for prop in PROPERTIES:
        props += ["-p", prop]
    assert fake.calls() == [["--no-ask-password", "show", *props, "web.service"]]


def test_status_of_a_missing_unit(fake: FakeSystemctl) -> None:
    fake.answer("show", out="LoadState=not-found\nActiveState=inactive\nSubState=dead\n"
                            "MainPID=0\nResult=success\n")
    with pytest.raises(BackendError, match="systemd has no unit web.service"):
        run(controller().status(soon()))
    fake.answer("show", rc=1, err="Failed to connect to bus: No such file or directory\n")
    with pytest.raises(BackendError, match="Failed to connect to bus"):
        run(controller().status(soon()))


def test_hung_systemctl_is_killed_at_the_deadline(fake: FakeSystemctl) -> None:
    fake.answer("restart", sleep=30)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="did not finish within"):
        run(controller().restart(t0 + 1.0))
    assert time.monotonic() - t0 < 1.6
    hung = fake.pids()[-1]
    deadline = time.monotonic() + 3
    while os.path.exists(f"/proc/{hung}") and time.monotonic() < deadline:
        with open(f"/proc/{hung}/stat") as fh:
            if fh.read().rpartition(")")[2].split()[0] == "Z":
                break
        time.sleep(0.01)
    with contextlib.suppress(FileNotFoundError), open(f"/proc/{hung}/stat") as fh:
        assert fh.read().rpartition(")")[2].split()[0] == "Z"


def test_explicit_systemctl_path(fake: FakeSystemctl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    fake.answer("show", out=SHOW_RUNNING)
    assert run(controller(systemctl=str(fake.path)).status(soon())).pid == 1234
    with pytest.raises(BackendError, match="no such file"):
        run(controller(systemctl="/nonexistent/systemctl").status(soon()))


def test_parse_show() -> None:
    assert parse_show("A=1\nExecStart={ path=/bin/x ; argv[]=/bin/x -a=b }\n\njunk\n") == \
        {"A": "1", "ExecStart": "{ path=/bin/x ; argv[]=/bin/x -a=b }"}
