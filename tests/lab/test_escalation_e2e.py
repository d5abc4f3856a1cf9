"""Escalation end to end over ``http``: guardiand in a lab VM gives up on apache2, asks
guardian-hostd in dom0 to recreate the VM, and dom0 really does it
(``guardian.lab.EscalationRig``: client, dom0, vm01; hostd with the ``lab`` driver;
guardiand restart budget 1, ``ladder = ["escalate"]``, started again in every new
instance of the VM as a guest's boot would).

1. Apache's config broken and Apache killed -> one recreate -> serving again with
   incarnation 1; the journal shows exactly one recreate; a late duplicate does
   nothing and a new request from the old incarnation is stale.
2. A VM whose fault survives the recreate (its disk carries it) keeps failing: two
   recreates, then hostd's rate limit refuses the third, runs the alert hook, and
   leaves the VM alone.
"""

from __future__ import annotations

import http.client
import json
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guardian.hostd import PolicySpec, sign
from guardian.lab import DOM0_IP, VM, EscalationRig, Lab
from guardian.lab._escalation import INCARNATION_FILE, VM_UUID, wait_for

pytestmark = pytest.mark.lab

PATH = "/v1/escalations"


def request(rig: EscalationRig, method: str, path: str,
            body: bytes = b"") -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(DOM0_IP, rig.port, timeout=5)
    try:
        conn.request(method, path, body=body if method == "POST" else None,
                     headers=sign(1, rig.key, method, path, body))
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_escalation_over_http_recreates_vm(make_lab: Callable[[], Lab],
                                           tmp_path: Path) -> None:
    t_test = time.monotonic()
    rig = EscalationRig(make_lab(), tmp_path)
    errors: list[str] = []
    try:
        rig.start()
        vm = rig.vm
        old_holder = vm.holder_pid
        g1 = rig.guardiand
        assert g1.status()["escalations"] == []

        # -- the fault: restarts cannot help; guardiand escalates, hostd recreates
        rig.fault()
        acc = rig.wait_decision("accepted", timeout=20)
        rid = acc["request_id"]
        assert acc["vm"] == "vm01" and acc["action"] == "recreate", acc
        assert acc["reason"]["service"] == "apache2", acc
        done = rig.wait_decision("finished", timeout=30)
        assert done["outcome"] == "done", done
        driver = rig.driver
        assert driver is not None and driver.calls == ["destroy", "create"]
        assert driver.states_after_destroy and driver.states_after_destroy[-1].dead, \
            driver.states_after_destroy
        assert not g1.running(), "the old guardiand survived its VM"
        assert vm.running and vm.holder_pid != old_holder
        assert rig.hostd is not None and rig.hostd.engine.store.incarnation("vm01") == 1
        assert vm.read_file(INCARNATION_FILE).strip() == "1"

        # -- the fresh VM has a fresh apache config: it serves again, and its own
        # guardiand (started at its boot) has nothing open
        t_serving = rig.wait_serving(20)
        g2 = rig.guardiand
        assert g2 is not g1 and g2.running()
        g2.wait_state("apache2", "up", timeout=10)
        assert g2.status()["escalations"] == []

        # -- hostd's record: incarnation + 1, exactly one recreate, finished and done
        status, view = rig.dom0.call(lambda: request(rig, "GET", f"{PATH}/{rid}"))
        assert status == 200 and view["state"] == "done" and view["incarnation"] == 1, view
        assert [r["decision"] for r in rig.journal()] == ["accepted", "finished"]

        # -- the first request again from the OLD incarnation
        first = rig.hostd.engine.store.requests[rid]
        body = {"request_id": rid, "vm": "vm01", "vm_uuid": VM_UUID,
                "incarnation": first["incarnation_sent"], "action": "recreate",
                "peer": None, "reason": first["reason"], "sent_at": time.time()}
        assert body["incarnation"] == 0
        # same id, fresh signature: its state, never a second recreate
        status, again = vm.call(
            lambda: request(rig, "POST", PATH, json.dumps(body).encode()))
        assert status == 202 and again["state"] == "done", again
        # a new id from the old incarnation: stale
        stale = body | {"request_id": str(uuid.uuid4())}
        status, reply = vm.call(
            lambda: request(rig, "POST", PATH, json.dumps(stale).encode()))
        assert status == 409 and reply["error"] == "stale incarnation", reply
        assert driver.calls == ["destroy", "create"]
        assert [r["decision"] for r in rig.journal()] == ["accepted", "finished", "stale"]
        assert rig.hostd.engine.store.incarnation("vm01") == 1

        # -- figures
        t_spent = rig.spent_wall(g1)
        assert t_spent is not None, f"no 'restart budget spent' in:\n{g1.log()[-3000:]}"
        (boot,) = driver.boots
        print(f"\nbudget spent -> request accepted by hostd: {acc['wall'] - t_spent:.3f} s")
        print(f"budget spent -> VM serving again:          {t_serving - t_spent:.3f} s")
        print(f"  of which VM.boot():                      {boot.vm_boot_s:.3f} s")
        print(f"  boot done -> serving:                    {t_serving - boot.done_wall:.3f} s")
        print(f"hostd timings: {done.get('timings')}")
        assert -0.5 < acc["wall"] - t_spent < 10
        assert time.monotonic() - t_test < 90
    finally:
        errors = rig.stop()
    assert not errors, errors


def test_vm_failing_after_each_recreate_hits_the_rate_limit_and_is_left_alone(
        make_lab: Callable[[], Lab], tmp_path: Path) -> None:
    alerts = tmp_path / "alerts.jsonl"
    hook = tmp_path / "alert-hook"
    hook.write_text("#!/bin/sh\n{ cat; echo; } >> " + str(alerts) + "\n")
    hook.chmod(0o755)

    def fault_on_disk(vm: VM) -> None:
        """The fault lives on the VM's disk: every new instance has it."""
        vm.break_apache_config()
        vm.signal("apache2", signal.SIGKILL, group=True)

    rig = EscalationRig(make_lab(), tmp_path,
                        policy=PolicySpec(min_interval=0.1, max_actions=2, window=3600,
                                          healthy_reset=3600, confirm_timeout=15),
                        alert_command=(str(hook),), after_boot=fault_on_disk)
    errors: list[str] = []
    try:
        rig.start()
        rig.fault()
        # two recreates, each followed by the same failure in the new instance
        first = rig.wait_decision("finished", 1, timeout=30)
        second = rig.wait_decision("finished", 2, timeout=40)
        assert first["outcome"] == second["outcome"] == "done", (first, second)
        # the third request: refused by the rate limit (max_actions 2 in the window)
        # (min_interval 0.1 s: no 429 from the backoff before; one would not matter)
        def by_max_actions() -> dict[str, Any] | None:
            return next((r for r in rig.decisions("rate-limited")
                         if "max_actions" in str(r.get("detail"))), None)

        limited = wait_for(by_max_actions, 30, "a refusal by max_actions", rig.debug)
        assert limited["vm"] == "vm01", limited
        assert limited["retry_after"] > 3000, limited
        # the alert hook ran with the refusal
        lines = wait_for(lambda: alerts.exists() and [
            json.loads(x) for x in alerts.read_text().splitlines() if x.strip()],
            10, "an alert", rig.debug)
        assert any(a.get("decision") == "rate-limited" and a.get("vm") == "vm01"
                   and "max_actions" in str(a.get("detail")) for a in lines), lines
        # left alone: no third destroy while guardiand keeps asking (429s, counted once)
        time.sleep(4.0)
        driver = rig.driver
        assert driver is not None
        assert driver.calls == ["destroy", "create", "destroy", "create"], driver.calls
        assert rig.hostd is not None and rig.hostd.engine.store.incarnation("vm01") == 2
        assert len(rig.decisions("accepted")) == 2
        g = rig.guardiand
        esc = g.status()["escalations"]
        assert len(esc) == 1 and esc[0]["state"] == "pending", esc
        assert "rate limited" in esc[0]["detail"], esc
        assert not rig.serves()
        print(f"\nrecreates: 2, then {len(rig.decisions('rate-limited'))} rate-limited "
              f"request(s); alerts: {[a.get('decision') for a in lines]}")
    finally:
        errors = rig.stop()
    assert not errors, errors
