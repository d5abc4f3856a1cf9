"""Kill guardiand and guardian-hostd (SIGKILL) at random points of an escalation;
afterwards exactly one recreate has happened.

Both daemons run for real, as processes, talking signed HTTP on loopback.  Only the
hypervisor is stood in for: hostd's ``command`` driver runs ``xl-standin`` (below),
which keeps the domain's state in a file.  "Destroying the VM" SIGKILLs the guest's
guardiand (everything in a VM dies with it) and "creating" it starts a fresh
guardiand, with the fault gone (it lived in the old VM's memory) and the incarnation
hostd persisted before the create.  The guest's state directory (its outbox) is on
the "VM's disk" and survives the recreate, as /var/lib/guardian does.

Each seed kills guardiand at a random moment, hostd at another, and restarts each
at once (guardiand only while its VM is up: a lock shared with the stand-in).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from unit_helpers import flag_service_toml

KEY_HEX = "5a" * 32
VM_UUID = "0d7e5a52-5b7c-4f0e-9a55-2c1d3e4f5a6b"
ROOT = Path(__file__).resolve().parents[2]

XL = r"""#!/bin/sh
# xl stand-in: state | destroy | create for the one domain of this test
D="$(dirname "$0")"
exec 9>"$D/vm.lock"
flock 9
state=$(cat "$D/state" 2>/dev/null || echo absent)
case "$1" in
state) echo "$state" ;;
destroy)
    echo destroy >> "$D/calls"
    sleep 0.2  # a real destroy takes a while: room for a kill in the middle
    if [ -s "$D/guardiand.pid" ]; then
        kill -KILL "$(cat "$D/guardiand.pid")" 2>/dev/null
        while kill -0 "$(cat "$D/guardiand.pid")" 2>/dev/null; do sleep 0.01; done
        rm -f "$D/guardiand.pid"
    fi
    echo absent > "$D/state" ;;
create)
    if [ "$state" = running ]; then
        echo create-refused >> "$D/calls"; echo "domain already running" >&2; exit 1
    fi
    echo create >> "$D/calls"
    sleep 0.2
    rm -f "$D/broken"
    "$PYTHON" -c \
        'import json,sys; print(json.load(open(sys.argv[1]))["vms"]["vm01"]["incarnation"])' \
        "$D/hostd/state.json" > "$D/incarnation" 2>/dev/null || echo 0 > "$D/incarnation"
    echo running > "$D/state"
    setsid "$PYTHON" -m guardian --config "$D/guardian.toml" run \
        >> "$D/guardiand.log" 2>&1 < /dev/null 9>&- &
    echo $! > "$D/guardiand.pid" ;;
*) exit 2 ;;
esac
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class World:
    def __init__(self, d: Path, port: int) -> None:
        self.d = d
        self.port = port
        self.hostd: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ, PYTHON=sys.executable,
                        PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        (d / "hostd").mkdir()
        (d / "guest-state").mkdir()
        key = d / "vm01.key"
        key.write_text(f"1 {KEY_HEX} send\n")
        key.chmod(0o600)
        xl = d / "xl-standin"
        xl.write_text(XL)
        xl.chmod(0o755)
        (d / "hostd.toml").write_text(textwrap.dedent(f"""\
            [hostd]
            listen = "127.0.0.1:{port}"
            state_dir = "{d}/hostd"

            [policy]
            min_interval = "1s"
            confirm_timeout = "5s"

            [vms.vm01]
            uuid = "{VM_UUID}"
            key_file = "{key}"
            driver = "command"
            destroy_command = ["{xl}", "destroy"]
            create_command = ["{xl}", "create"]
            state_command = ["{xl}", "state"]
            command_timeout = "10s"
            """))
        (d / "guardian.toml").write_text(textwrap.dedent(f"""\
            [guardian]
            control_socket = "{d}/control.sock"
            state_dir = "{d}/guest-state"
            """) + flag_service_toml(d / "broken", ladder="escalate", interval="500ms",
                                     timeout="250ms", exhausted_retry="1m")
            + textwrap.dedent(f"""
            [escalation]
            channel = "http"
            url = "http://127.0.0.1:{port}"
            key_file = "{key}"
            vm = "vm01"
            vm_uuid = "{VM_UUID}"
            incarnation_file = "{d}/incarnation"
            timeout = "2s"
            retry_max = "1s"
            """))
        (d / "incarnation").write_text("0\n")

    def xl(self, *args: str) -> str:
        return subprocess.run([str(self.d / "xl-standin"), *args], env=self.env, check=True,
                              capture_output=True, text=True, timeout=30).stdout.strip()

    def start_hostd(self) -> None:
        with open(self.d / "hostd.log", "ab") as log:
            self.hostd = subprocess.Popen(
                [sys.executable, "-m", "guardian.hostd", "--config",
                 str(self.d / "hostd.toml"), "run"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def kill_hostd(self) -> None:
        assert self.hostd is not None
        self.hostd.kill()
        self.hostd.wait(10)

    def guardiand_pid(self) -> int | None:
        try:
            return int((self.d / "guardiand.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def kill_and_restart_guardiand(self) -> bool:
        """SIGKILL the guest's guardiand and start it again, only while its VM runs
        (under the stand-in's lock, so that a destroy or create cannot interleave)."""
        import fcntl

        with open(self.d / "vm.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (self.d / "state").read_text().strip() != "running":
                return False
            pid = self.guardiand_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                while _alive(pid):
                    time.sleep(0.01)
            # started the way the stand-in's create starts it: orphaned at once (not
            # our child), so that whoever kills it later sees it gone, not a zombie
            out = subprocess.run(
                ["sh", "-c", 'setsid "$PYTHON" -m guardian --config "$1" run '
                 '>> "$2" 2>&1 < /dev/null & echo $!', "sh",
                 str(self.d / "guardian.toml"), str(self.d / "guardiand.log")],
                env=self.env, check=True, capture_output=True, text=True, timeout=10)
            (self.d / "guardiand.pid").write_text(out.stdout)
            return True

    def web_up(self) -> bool:
        proc = subprocess.run(
            [sys.executable, "-m", "guardian", "--config", str(self.d / "guardian.toml"),
             "status", "--json"], env=self.env, capture_output=True, text=True, timeout=10)
        if proc.returncode != 0:
            return False
        st = json.loads(proc.stdout)
        return any(s["name"] == "web" and s["state"] == "up" for s in st["services"])

    def calls(self) -> list[str]:
        p = self.d / "calls"
        return p.read_text().split() if p.exists() else []

    def journal(self) -> list[dict[str, Any]]:
        p = self.d / "hostd" / "journal.jsonl"
        if not p.exists():
            return []
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]

    def stop(self) -> None:
        if self.hostd is not None and self.hostd.poll() is None:
            self.hostd.terminate()
            try:
                self.hostd.wait(10)
            except subprocess.TimeoutExpired:
                self.hostd.kill()
        pid = self.guardiand_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours is dead
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def wait_for(pred: Any, timeout: float, what: str, world: World) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            tail = ""
            for name in ("hostd.log", "guardiand.log"):
                p = world.d / name
                tail += f"\n--- {name}\n" + (p.read_text()[-3000:] if p.exists() else "")
            journal = [(r["decision"], r.get("outcome"), r.get("detail"))
                       for r in world.journal()]
            raise AssertionError(f"no {what} within {timeout} s; calls {world.calls()}, "
                                 f"journal {journal}{tail}")
        time.sleep(0.05)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, free_port())
    try:
        yield w
    finally:
        w.stop()


@pytest.mark.parametrize("seed", range(8))
def test_random_kills_during_an_escalation_leave_exactly_one_recreate(
        world: World, seed: int) -> None:
    rng = random.Random(seed)
    world.start_hostd()
    world.xl("create")  # the VM boots with guardiand in it
    wait_for(world.web_up, 20, "web up in the first VM", world)
    calls0 = world.calls()
    assert calls0 == ["create"]

    # the fault; then kills at random moments after events of the escalation.  Seeds
    # 0-3: guardiand killed right after the fault (before its next probe sees it);
    # 4-7: hostd killed at the fault and kept down 1.5 s (the request's first sends
    # fail and are retried).  Then hostd killed after accepting, in the destroy, in
    # the create, or after finishing (seed % 4).
    h_event = ("accepted", "destroy", "create", "finished")[seed % 4]
    first = ("guardiand", 0.0) if seed < 4 else ("hostd", 1.5)
    events = {
        "fault": lambda: True,
        "accepted": lambda: any(r["decision"] == "accepted" for r in world.journal()),
        "destroy": lambda: "destroy" in world.calls(),
        "create": lambda: world.calls().count("create") >= 2,
        "finished": lambda: any(r["decision"] == "finished" for r in world.journal()),
    }
    (world.d / "broken").touch()
    killed: list[tuple[str, str, bool]] = []
    for event, (what, down) in [("fault", first), (h_event, ("hostd", 0.0))]:
        wait_for(events[event], 20, f"event {event}", world)
        # right after the fault: before guardiand's next probe (every 500 ms) sees it
        time.sleep(rng.uniform(0.0, 0.03 if event == "fault" else 0.15))
        if what == "hostd":
            world.kill_hostd()
            time.sleep(down or rng.uniform(0.0, 0.3))
            world.start_hostd()
            killed.append((what, event, True))
        else:
            killed.append((what, event, world.kill_and_restart_guardiand()))
    assert all(k for _, _, k in killed), killed

    # the VM comes back (once), with incarnation 1, and its service is up
    wait_for(lambda: world.calls().count("create") == 2 and world.web_up(), 40,
             "the VM recreated and serving", world)
    wait_for(lambda: [r for r in world.journal() if r["decision"] == "finished"], 10,
             "hostd's finished record", world)
    time.sleep(1.0)  # anything late would show now
    calls = world.calls()
    journal = world.journal()
    finished = [r for r in journal if r["decision"] == "finished"]
    accepted = [r for r in journal if r["decision"] == "accepted"]
    detail = f"seed {seed}, kills {killed}, calls {calls}, journal " \
             f"{[(r['decision'], r.get('outcome')) for r in journal]}"
    print(detail)
    assert calls.count("create") == 2 and "create-refused" not in calls, detail
    assert len(accepted) == 1 and len(finished) == 1, detail
    assert finished[0]["outcome"] == "done", detail
    assert (world.d / "incarnation").read_text().strip() == "1", detail
    state = json.loads((world.d / "hostd" / "state.json").read_text())
    assert state["vms"]["vm01"]["incarnation"] == 1, detail
    # the guest's outbox: the one request, closed
    outbox = [json.loads(p.read_text())
              for p in (world.d / "guest-state" / "outbox").glob("*.json")]
    assert [e["request"]["request_id"] for e in outbox] == [accepted[0]["request_id"]], detail
