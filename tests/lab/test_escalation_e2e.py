"""Escalation end to end over ``http``: guardiand in a lab VM gives up on apache2, asks
guardian-hostd in dom0 to recreate the VM, and dom0 really does it.

client, dom0 and vm01 on the lab LAN. guardiand runs in vm01 (supervisord backend,
restart budget 1, ``ladder = ["escalate"]``, ``[escalation] channel = "http"``);
guardian-hostd runs in-process in dom0's network namespace with hostd's ``lab`` driver
(``guardian.lab.LabDriver``, around ``guardian.lab.VM``; see test_hostd_lab.py). The
driver's create step boots the VM again and publishes hostd's new incarnation in the
fresh VM's ``/run/guardian/incarnation`` (the VM's /run is a fresh tmpfs at every boot).

Timeline measured and printed: "restart budget spent" (guardiand's log) -> request
accepted (hostd's journal) -> VM serving again (client), and the VM's boot time.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import HostdInDom0

from guardian.hostd import DomainState, Hostd, HostdSpec, PolicySpec, VMSpec, build, sign
from guardian.lab import (
    CLIENT_IP,
    DOM0_IP,
    VM,
    VM01_IP,
    Guardiand,
    Host,
    Lab,
    LabDriver,
    listener_program,
)
from ipfailover._wire import KeyRing

pytestmark = pytest.mark.lab

KEY = os.urandom(32)
PATH = "/v1/escalations"
PORT = 7081
VM_UUID = "6f1c2a4e-0b7d-4c51-9a4e-e2e0e2e0e2e0"
KEY_FILE = "/etc/guardian/escalation.key"
INCARNATION_FILE = "/run/guardian/incarnation"
SPENT_RE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) .*restart budget spent", re.M)


def make_config() -> str:
    return f"""\
[guardian]
control_socket = "/run/guardian/control.sock"
log_level = "debug"

[backends.supervisord]
url = "unix:///run/supervisor.sock"
kill_after = "2s"

[services.apache2]
backend = "supervisord"
start_grace = "5s"
ladder = ["escalate"]
[services.apache2.restart]
budget = 1
window = "2m"
backoff = "200ms"
[[services.apache2.checks]]
type = "http"
url = "http://127.0.0.1/"
expect_status = [200]
interval = "500ms"
timeout = "500ms"

[escalation]
channel = "http"
url = "http://{DOM0_IP}:{PORT}"
key_file = "{KEY_FILE}"
vm = "vm01"
vm_uuid = "{VM_UUID}"
incarnation_file = "{INCARNATION_FILE}"
timeout = "5s"
retry_max = "2s"
"""


class RecordingLabVMDriver(LabDriver):
    """The lab driver, also publishing hostd's incarnation in the new VM and timing
    the boot; records the states seen after the destroy (confirm death)."""

    def __init__(self, vm: VM, root_ns: ThreadPoolExecutor) -> None:
        super().__init__(vm, root_ns)
        self.hostd: Hostd | None = None
        self.states_after_destroy: list[DomainState] = []
        self.boot_s: float | None = None
        self.boot_done_wall: float | None = None

    def state(self) -> DomainState:
        st = super().state()
        if self.calls and self.calls[-1] == "destroy":
            self.states_after_destroy.append(st)
        return st

    def boot(self) -> None:
        assert self.hostd is not None
        inc = self.hostd.engine.store.incarnation(self.vm.name)  # persisted before create
        t0 = time.monotonic()
        super().boot()
        self.boot_s = time.monotonic() - t0
        self.boot_done_wall = time.time()
        publish_incarnation(self.vm, inc)


def publish_incarnation(vm: VM, incarnation: int) -> None:
    vm.run(["mkdir", "-p", os.path.dirname(INCARNATION_FILE)])
    vm.write_file(INCARNATION_FILE, f"{incarnation}\n")


def install_key(vm: VM) -> None:
    vm.run(["mkdir", "-p", os.path.dirname(KEY_FILE)])
    vm.write_file(KEY_FILE, f"1 {KEY.hex()} send\n", mode=0o600)


def request(method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(DOM0_IP, PORT, timeout=5)
    try:
        conn.request(method, path, body=body if method == "POST" else None,
                     headers=sign(1, KEY, method, path, body))
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def wait_for(pred: Callable[[], Any], timeout: float, what: str,
             detail: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"no {what} within {timeout:g} s\n{detail()}")
        time.sleep(0.02)


def serves(client: Host, ip: str) -> bool:
    try:
        return client.http_get(ip, timeout=0.5).status == 200
    except Exception:  # noqa: BLE001 - any failure to answer is 'not serving'
        return False


def spent_wall(log: str) -> float | None:
    """Wall time of guardiand's first "restart budget spent" line (local HH:MM:SS.mmm)."""
    m = SPENT_RE.search(log)
    if m is None:
        return None
    h, mi, s, ms = (int(x) for x in m.groups())
    now = dt.datetime.now()
    t = now.replace(hour=h, minute=mi, second=s, microsecond=ms * 1000)
    if t > now + dt.timedelta(minutes=5):  # logged before midnight
        t -= dt.timedelta(days=1)
    return t.timestamp()


def journal(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "journal.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def root_ns() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="root-ns")
    pool.submit(lambda: None).result()  # its one worker is created here, in the root netns
    yield pool
    pool.shutdown(wait=True)


def test_escalation_over_http_recreates_vm(make_lab: Callable[[], Lab], tmp_path: Path,
                                           root_ns: ThreadPoolExecutor) -> None:
    t_test = time.monotonic()
    lab = make_lab()
    client = lab.host("client", CLIENT_IP)
    dom0 = lab.host("dom0", DOM0_IP)
    vm = lab.vm("vm01", VM01_IP, autorestart=False, startsecs=0,
                extra_programs=(listener_program(),))
    vm.wait_ready(timeout=30)
    old_holder = vm.holder_pid

    driver = RecordingLabVMDriver(vm, root_ns)
    spec = HostdSpec(
        source="lab", host=DOM0_IP, port=PORT, state_dir=tmp_path, journal_dir=tmp_path,
        policy=PolicySpec(min_interval=600, max_actions=3, confirm_timeout=15),
        vms={"vm01": VMSpec(name="vm01", uuid=VM_UUID, key_file=tmp_path / "none",
                            driver="lab", domain="vm01", keys=KeyRing({1: KEY}))},
    )
    hostd = build(spec, drivers={"vm01": driver}, poll_interval=0.05)
    driver.hostd = hostd
    server = HostdInDom0(dom0, hostd, DOM0_IP, PORT)

    guardiands: list[Guardiand] = []

    def start_guardiand(n: int) -> Guardiand:
        install_key(vm)
        publish_incarnation(vm, hostd.engine.store.incarnation("vm01"))
        g = Guardiand(vm, make_config())
        g.log_path = tmp_path / f"guardiand-{n}.log"  # vm.boot() wipes the VM's dir
        guardiands.append(g)
        g.start(timeout=15)
        g.wait_state("apache2", "up", timeout=10)
        return g

    server.start()
    try:
        g1 = start_guardiand(1)
        assert g1.status()["escalations"] == []

        # -- the fault: apache's config broken, apache killed: restarts cannot help
        vm.break_apache_config()
        vm.signal("apache2", signal.SIGKILL, group=True)

        # -- guardiand spends its budget and escalates; hostd accepts and recreates
        def accepted() -> dict[str, Any] | None:
            return next((r for r in journal(tmp_path) if r["decision"] == "accepted"), None)

        acc = wait_for(accepted, 20, "escalation accepted by hostd",
                       lambda: f"guardiand log:\n{g1.log()[-3000:]}")
        rid = acc["request_id"]
        assert acc["vm"] == "vm01" and acc["action"] == "recreate", acc
        assert acc["reason"]["service"] == "apache2", acc

        def finished() -> dict[str, Any] | None:
            r = hostd.engine.store.requests.get(rid, {})
            return r if r.get("state") in ("done", "failed") else None

        final = wait_for(finished, 30, "recreate finished",
                         lambda: f"request: {hostd.engine.store.requests.get(rid)}")
        assert final["state"] == "done", final
        assert driver.calls == ["destroy", "create"]
        assert driver.states_after_destroy and driver.states_after_destroy[-1].dead, \
            driver.states_after_destroy
        assert not g1.running(), "the old guardiand survived its VM"
        assert vm.running and vm.holder_pid != old_holder
        assert hostd.engine.store.incarnation("vm01") == 1
        assert vm.read_file(INCARNATION_FILE).strip() == "1"

        # -- the fresh VM has a fresh apache config: it serves again
        wait_for(lambda: serves(client, VM01_IP), 20, "vm01 serving HTTP again",
                 lambda: vm.debug_report())
        t_serving = time.time()
        assert client.http_get(VM01_IP).status == 200

        # -- guardiand again, in the new VM
        g2 = start_guardiand(2)
        assert g2.status()["escalations"] == []

        # -- hostd's record: incarnation + 1, exactly one recreate, finished and done
        status, view = dom0.call(lambda: request("GET", f"{PATH}/{rid}"))
        assert status == 200 and view["state"] == "done" and view["incarnation"] == 1, view
        recs = journal(tmp_path)
        done = [r for r in recs if r["decision"] == "finished"]
        assert len(done) == 1 and done[0]["outcome"] == "done", recs
        assert [r["decision"] for r in recs] == ["accepted", "finished"], recs

        # -- the first request again from the OLD incarnation
        first = hostd.engine.store.requests[rid]
        body = {"request_id": rid, "vm": "vm01", "vm_uuid": VM_UUID,
                "incarnation": first["incarnation_sent"], "action": "recreate",
                "peer": None, "reason": first["reason"], "sent_at": time.time()}
        assert body["incarnation"] == 0
        # same id, fresh signature: its state, never a second recreate
        status, again = vm.call(
            lambda: request("POST", PATH, json.dumps(body).encode()))
        assert status == 202 and again["state"] == "done", again
        # a new id from the old incarnation: stale
        stale = body | {"request_id": str(uuid.uuid4())}
        status, reply = vm.call(
            lambda: request("POST", PATH, json.dumps(stale).encode()))
        assert status == 409 and reply["error"] == "stale incarnation", reply
        assert driver.calls == ["destroy", "create"]
        assert [r["decision"] for r in journal(tmp_path)] == ["accepted", "finished", "stale"]
        assert hostd.engine.store.incarnation("vm01") == 1

        # -- figures
        t_spent = spent_wall(g1.log())
        assert t_spent is not None, f"no 'restart budget spent' in:\n{g1.log()[-3000:]}"
        t_acc = float(acc["wall"])
        timings = done[0].get("timings", {})
        assert driver.boot_s is not None and driver.boot_done_wall is not None
        print(f"\nbudget spent -> request accepted by hostd: {t_acc - t_spent:.3f} s")
        print(f"budget spent -> VM serving again:          {t_serving - t_spent:.3f} s")
        print(f"  of which vm.boot():                      {driver.boot_s:.3f} s")
        print(f"  boot done -> serving:                    "
              f"{t_serving - driver.boot_done_wall:.3f} s")
        print(f"hostd timings: {timings}")
        assert -0.5 < t_acc - t_spent < 10
        assert time.monotonic() - t_test < 60
    finally:
        errors = []
        for g in guardiands:
            try:
                g.stop()
            except Exception as exc:  # noqa: BLE001 - stop the rest, then report
                errors.append(repr(exc))
        server.stop()
        for g in guardiands:
            print(f"--- {g.log_path.name}\n{g.log()[-4000:]}")
    assert not errors, errors
