"""The exec check with real scripts (and check_tcp from monitoring-plugins if present)."""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from unit_helpers import build, wait_gone

from checks import CheckResult, ConfigError, Status
from checks.exec import STDOUT_CAP, ExecCheck, parse_perfdata, parse_plugin_output

RunSync = Callable[[Any, float], CheckResult]
CHECK_TCP = Path("/usr/lib/nagios/plugins/check_tcp")

PLUGIN = """#!/bin/sh
cat <<'EOF'
SVC $STATE - all fine here | load=0.5;1;2 'inode use'=5%;80;90;0;100
line two of long text
line three | extra=1;;;
more=2s
EOF
exit $CODE
"""


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def execcheck(**options: Any) -> ExecCheck:
    return build("exec", ExecCheck, options, "services.x.checks[1]")


def wait_dead(pids: list[int], within: float = 2.0) -> list[int]:
    """The pids still alive (not even a zombie) after ``within`` seconds."""
    deadline = time.monotonic() + within
    return [pid for pid in pids if not wait_gone(pid, deadline - time.monotonic())]


@pytest.mark.parametrize(("code", "status"), [
    (0, Status.OK), (1, Status.WARNING), (2, Status.CRITICAL), (3, Status.UNKNOWN)])
def test_exit_codes_map_to_status(tmp_path: Path, run_sync: RunSync, code: int,
                                  status: Status) -> None:
    prog = script(tmp_path, "check_svc", PLUGIN.replace("$STATE", status.value)
                  .replace("$CODE", str(code)))
    result = run_sync(execcheck(command=[str(prog)]), 2.0)
    assert result.status is status
    assert result.detail == f"SVC {status.value} - all fine here"
    assert result.perfdata == ("load=0.5;1;2", "'inode use'=5%;80;90;0;100", "extra=1;;;",
                               "more=2s")
    assert result.transcript[0] == f"$ {prog}"
    assert "  line two of long text" in result.transcript
    assert "  line three" in result.transcript
    assert f"  exit {code}" in result.transcript


def test_other_exit_code_is_unknown(tmp_path: Path, run_sync: RunSync) -> None:
    prog = script(tmp_path, "weird", "#!/bin/sh\necho 'it broke'\nexit 7\n")
    result = run_sync(execcheck(command=str(prog)), 2.0)
    assert result.status is Status.UNKNOWN
    assert result.detail == "it broke (exit code 7)"


def test_no_output(tmp_path: Path, run_sync: RunSync) -> None:
    prog = script(tmp_path, "mute", "#!/bin/sh\necho oops >&2\nexit 2\n")
    result = run_sync(execcheck(command=[str(prog)]), 2.0)
    assert result.status is Status.CRITICAL
    assert result.detail == "exec mute exited 2 with no output (stderr: oops)"
    assert "! oops" in result.transcript


def test_killed_by_signal_is_unknown(tmp_path: Path, run_sync: RunSync) -> None:
    prog = script(tmp_path, "crash", "#!/bin/sh\necho 'about to crash'\nkill -SEGV $$\n")
    result = run_sync(execcheck(command=[str(prog)]), 2.0)
    assert result.status is Status.UNKNOWN
    assert result.detail == "exec crash killed by SIGSEGV"


def test_string_command_env_and_cwd(tmp_path: Path, run_sync: RunSync) -> None:
    check = execcheck(command="sh -c 'echo \"OK - $GUARDIAN_T in $(pwd)\"'",
                      env={"GUARDIAN_T": "hello world"}, cwd=str(tmp_path))
    assert check.command == ["sh", "-c", 'echo "OK - $GUARDIAN_T in $(pwd)"']
    result = run_sync(check, 2.0)
    assert result.status is Status.OK
    assert result.detail == f"OK - hello world in {tmp_path}"


def test_program_not_found_is_unknown(tmp_path: Path, run_sync: RunSync) -> None:
    result = run_sync(execcheck(command=[str(tmp_path / "no_such_plugin")]), 2.0)
    assert result.status is Status.UNKNOWN
    assert "no_such_plugin: program not found" in result.detail


def test_not_executable_is_unknown(tmp_path: Path, run_sync: RunSync) -> None:
    prog = tmp_path / "plain.txt"
    prog.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    result = run_sync(execcheck(command=[str(prog)]), 2.0)
    assert result.status is Status.UNKNOWN
    assert "not executable" in result.detail


def test_missing_cwd_is_unknown(tmp_path: Path, run_sync: RunSync) -> None:
    result = run_sync(execcheck(command=["true"], cwd=str(tmp_path / "gone")), 2.0)
    assert result.status is Status.UNKNOWN
    assert "cwd" in result.detail and "does not exist" in result.detail


def test_hung_plugin_killed_with_its_children(tmp_path: Path, run_sync: RunSync) -> None:
    pids = tmp_path / "pids"
    prog = script(tmp_path, "hang", f"""#!/bin/sh
sleep 30 &
echo $! > {pids}
echo $$ >> {pids}
echo "starting"
sleep 30
""")
    started = time.monotonic()
    result = run_sync(execcheck(command=[str(prog)]), 0.5)
    elapsed = time.monotonic() - started
    assert result.status is Status.CRITICAL
    assert "timed out" in result.detail
    assert elapsed < 0.5 + 0.5
    found = [int(p) for p in pids.read_text().split()]
    assert len(found) == 2
    assert wait_dead(found) == []


def test_children_left_behind_do_not_hold_the_check(tmp_path: Path,
                                                    run_sync: RunSync) -> None:
    pids = tmp_path / "pids"
    prog = script(tmp_path, "leaky", f"""#!/bin/sh
sleep 30 &
echo $! > {pids}
echo "OK - left a child holding stdout"
exit 0
""")
    started = time.monotonic()
    result = run_sync(execcheck(command=[str(prog)]), 3.0)
    assert time.monotonic() - started < 1.5
    assert result.status is Status.OK
    assert result.detail == "OK - left a child holding stdout"
    assert wait_dead([int(pids.read_text())]) == []


def test_pipe_held_outside_the_group(tmp_path: Path, run_sync: RunSync) -> None:
    pidfile = tmp_path / "pid"
    prog = script(tmp_path, "escape", f"""#!/bin/sh
setsid sh -c 'echo $$ > {pidfile}; exec sleep 30' &
while [ ! -s {pidfile} ]; do sleep 0.01; done
echo "OK - a daemon escaped"
""")
    started = time.monotonic()
    try:
        result = run_sync(execcheck(command=[str(prog)]), 3.0)
        assert time.monotonic() - started < 1.5
        assert result.status is Status.OK
        assert result.detail == "OK - a daemon escaped"
        assert result.transcript[-1].endswith("held open by a process outside the group)")
    finally:
        os.kill(int(pidfile.read_text()), 9)


def test_output_capped(tmp_path: Path, run_sync: RunSync) -> None:
    prog = script(tmp_path, "chatty", """#!/bin/sh
echo "OK - very chatty | lines=4000"
i=0
while [ $i -lt 4000 ]; do
  echo "0123456789012345678901234567890123456789012345678901234567890123456789"
  i=$((i+1))
done
""")
    result = run_sync(execcheck(command=[str(prog)]), 5.0)
    assert result.status is Status.OK
    assert result.detail == "OK - very chatty"
    assert result.perfdata == ("lines=4000",)
    assert f"  (output cut at {STDOUT_CAP} bytes)" in result.transcript
    assert len(result.transcript) < 30


@pytest.mark.skipif(not os.access(CHECK_TCP, os.X_OK), reason="monitoring-plugins not installed")
def test_monitoring_plugins_check_tcp(run_sync: RunSync) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        result = run_sync(execcheck(command=[str(CHECK_TCP), "-H", "127.0.0.1", "-p",
                                             str(port), "-t", "2"]), 3.0)
    assert result.status is Status.OK, result.detail
    assert result.detail.startswith("TCP OK")
    assert any(p.startswith("time=") for p in result.perfdata)
    down = run_sync(execcheck(command=[str(CHECK_TCP), "-H", "127.0.0.1", "-p", str(port),
                                       "-t", "2"]), 3.0)
    assert down.status is Status.CRITICAL
    assert "refused" in down.detail.lower()


def test_parse_perfdata() -> None:
    assert parse_perfdata(" a=1;2;3 'b c'=4s 'it''s'=5 junk d=") == [
        "a=1;2;3", "'b c'=4s", "'it''s'=5", "d="]
    assert parse_perfdata("") == []


def test_parse_plugin_output() -> None:
    text, perf, long_text = parse_plugin_output("X OK - fine|a=1\nmore\nstill | b=2\nc=3\n")
    assert (text, perf, long_text) == ("X OK - fine", ["a=1", "b=2", "c=3"], ["more", "still"])
    assert parse_plugin_output("") == ("", [], [])


@pytest.mark.parametrize(("options", "message"), [
    ({}, "checks[1].command: is required"),
    ({"command": []}, "checks[1].command: is empty"),
    ({"command": ""}, "checks[1].command: is empty"),
    ({"command": 5}, "checks[1].command: 5 is not a command"),
    ({"command": "x 'unbalanced"}, "checks[1].command: No closing quotation"),
    ({"command": "true", "env": {"A": 1}}, "checks[1].env: {'A': 1} is not a table of strings"),
    ({"command": "true", "args": ["-v"]}, "checks[1].args: unknown key"),
])
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        execcheck(**options)
    assert str(info.value).startswith("guardian.toml: services.x.")
    assert message in str(info.value)


def test_describe_and_defaults() -> None:
    check = execcheck(command="/usr/lib/nagios/plugins/check_load -w 5 -c 10")
    assert check.describe() == "exec check_load"
    assert (check.env, check.cwd) == ({}, None)
