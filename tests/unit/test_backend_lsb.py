"""The lsb backend against a real (small) init script written by the test: it
starts a ``sleep`` in the background and keeps a pidfile, like a daemon's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from unit_helpers import kill_all, pids_in, run, sigkilled, soon, started, state_of

from checks import ConfigError, Options
from guardian.backends import BackendError, LsbBackend, UnitState, load_backend_class
from guardian.backends.lsb import LsbController

SCRIPT = """\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          testd
# Short-Description: a test daemon (a sleep with a pidfile)
### END INIT INFO
PIDFILE=@DIR@/testd.pid
echo "$1" >> @DIR@/calls

# zombie-aware: PID 1 in a container may not reap orphans
alive() {
    [ -f "$PIDFILE" ] || return 1
    pid=$(cat "$PIDFILE")
    [ -r "/proc/$pid/stat" ] || return 1
    state=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
    [ "$state" != Z ]
}

case "$1" in
  start)
    alive && exit 0
    if [ -e @DIR@/broken ]; then echo "testd: bad config at line 3" >&2; exit 6; fi
    sleep 600 &
    echo $! > "$PIDFILE"
    echo $! >> @DIR@/all-pids
    exit 0 ;;
  stop)
    alive && kill "$(cat "$PIDFILE")"
    rm -f "$PIDFILE"
    exit 0 ;;
  restart)
    [ -e @DIR@/no-restart ] && exit 3
    "$0" stop && "$0" start ;;
  status)
    alive && exit 0
    [ -f "$PIDFILE" ] && exit 1
    exit 3 ;;
  *)
    echo "Usage: $0 {start|stop|restart|status}" >&2
    exit 2 ;;
esac
"""


@dataclass
class InitScript:
    dir: Path
    path: Path

    @property
    def pidfile(self) -> Path:
        return self.dir / "testd.pid"

    def calls(self) -> list[str]:
        f = self.dir / "calls"
        return f.read_text().split() if f.exists() else []

    def pid(self) -> int:
        return int(self.pidfile.read_text())

    def controller(self, **extra: Any) -> LsbController:
        table = {"script": str(self.path), "pidfile": str(self.pidfile), **extra}
        return LsbBackend().controller("testd", Options(table, "services.testd", "test"))


@pytest.fixture
def script(tmp_path: Path) -> Iterator[InitScript]:
    path = tmp_path / "testd"
    path.write_text(SCRIPT.replace("@DIR@", str(tmp_path)))
    path.chmod(0o755)
    yield InitScript(tmp_path, path)
    kill_all(pids_in(tmp_path / "all-pids"))


def test_registry_and_options() -> None:
    assert load_backend_class("lsb") is LsbBackend
    ctl = LsbBackend().controller("named", Options({}))
    assert (ctl.unit, ctl.script, ctl.pidfile) == ("named", "/etc/init.d/named", None)
    ctl = LsbBackend().controller("dns", Options({"unit": "bind9"}))
    assert ctl.script == "/etc/init.d/bind9"
    backend = LsbBackend.from_options(Options({"script_dir": "/etc/rc.d"}))
    assert backend.controller("x", Options({})).script == "/etc/rc.d/x"
    for table, key in [({"script": "relative/x"}, "script"), ({"pidfile": "x.pid"}, "pidfile"),
                       ({"unit": "a/b"}, "unit")]:
        with pytest.raises(ConfigError, match=f"services.dns.{key}"):
            LsbBackend().controller("dns", Options(table, "services.dns", "g.toml"))


def test_lifecycle(script: InitScript) -> None:
    ctl = script.controller()
    st = run(ctl.status(soon()))
    assert (st.state, st.pid) == (UnitState.STOPPED, None)
    assert "not running" in st.detail

    pid = started(ctl, script.pid)   # (the daemon keeps the script's stdout open)
    assert state_of(pid) in ("S", "R")
    st = sigkilled(ctl, pid)
    assert "dead, pid file exists" in st.detail

    run(ctl.restart(soon()))
    new = script.pid()
    assert new != pid
    assert run(ctl.status(soon())).state is UnitState.RUNNING

    run(ctl.stop(soon()))
    assert not script.pidfile.exists()
    assert run(ctl.status(soon())).state is UnitState.STOPPED
    assert script.calls() == ["status", "start", "status", "status", "restart", "stop",
                              "start", "status", "stop", "status"]


def test_failed_start_says_why(script: InitScript) -> None:
    (script.dir / "broken").touch()
    with pytest.raises(BackendError, match=r"testd start failed: exit status 6: testd: bad "
                                           r"config at line 3 \(program is not configured\)"):
        run(script.controller().start(soon()))


def test_restart_falls_back_to_stop_start(script: InitScript) -> None:
    (script.dir / "no-restart").touch()
    ctl = script.controller()
    run(ctl.start(soon()))
    first = script.pid()
    run(ctl.restart(soon()))
    assert script.pid() != first
    assert script.calls() == ["start", "restart", "stop", "start"]


def test_status_without_pidfile_option_has_no_pid(script: InitScript) -> None:
    ctl = LsbBackend().controller("testd", Options({"script": str(script.path)}))
    run(ctl.start(soon()))
    st = run(ctl.status(soon()))
    assert (st.state, st.pid) == (UnitState.RUNNING, None)


def test_missing_script_and_hung_script(tmp_path: Path) -> None:
    ctl = LsbBackend().controller("x", Options({"script": str(tmp_path / "nope")}))
    with pytest.raises(BackendError, match="nope: no such file"):
        run(ctl.start(soon()))
    hung = tmp_path / "hung"
    hung.write_text("#!/bin/sh\nexec sleep 30\n")
    hung.chmod(0o755)
    ctl = LsbBackend().controller("x", Options({"script": str(hung)}))
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="did not finish within"):
        run(ctl.status(t0 + 0.3))
    assert time.monotonic() - t0 < 1.0
