"""guardian-hostd in the lab: hostd serving in the ``dom0`` namespace, a signed request
from inside ``vm01`` makes dom0 really tear vm01 down and boot it again.

The VM is configured with ``driver = "lab"``: hostd builds ``guardian.lab.LabDriver``
through its ``guardian.hypervisors`` registry, which finds vm01 in the Lab alive in this
process (destroy() -> VM.destroy(), create() -> VM.boot(), state from its processes).
Lab operations (veth, namespaces) must run in the root network namespace: the driver
hands them to a worker thread in it; hostd's own threads live in dom0's namespace.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guardian.hostd import HostdSpec, PolicySpec, VMSpec, build, sign
from guardian.lab import DOM0_IP, VM01_IP, HostdInDom0, Lab, LabDriver
from ipfailover._wire import KeyRing

pytestmark = pytest.mark.lab

KEY = os.urandom(32)
PATH = "/v1/escalations"
PORT = 7080


def _request(method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(DOM0_IP, PORT, timeout=5)
    try:
        conn.request(method, path, body=body if method == "POST" else None,
                     headers=sign(1, KEY, method, path, body))
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_escalation_recreates_lab_vm(make_lab: Callable[[], Lab], tmp_path: Path) -> None:
    lab = make_lab()
    dom0 = lab.host("dom0", DOM0_IP)
    vm01 = lab.vm("vm01", VM01_IP, services=("apache2",))
    vm01.wait_ready(timeout=20)
    old_holder = vm01.holder_pid
    old_lab_incarnation = vm01.incarnation

    spec = HostdSpec(
        source="lab", host=DOM0_IP, port=PORT, state_dir=tmp_path, journal_dir=tmp_path,
        policy=PolicySpec(min_interval=600, max_actions=3, confirm_timeout=15),
        vms={"vm01": VMSpec(name="vm01", uuid="uuid-vm01", key_file=tmp_path / "none",
                            # the lab's id: the session's shared lab has a vm01 too
                            driver="lab", domain=f"{lab.id}-vm01",
                            keys=KeyRing({1: KEY}))},
    )
    hostd = build(spec, poll_interval=0.05)  # the driver from the registry
    driver = hostd.engine.drivers["vm01"]
    assert isinstance(driver, LabDriver) and driver.vm is vm01
    server = HostdInDom0(dom0, hostd, DOM0_IP, PORT)
    server.start()
    try:
        rid = str(uuid.uuid4())
        body = json.dumps({
            "request_id": rid, "vm": "vm01", "vm_uuid": "uuid-vm01", "incarnation": 0,
            "action": "recreate", "peer": None,
            "reason": {"service": "apache2", "verdicts": "CRITICAL x3", "restarts": 5,
                       "detail": "lab test"},
            "sent_at": time.time(),
        }).encode()
        # from inside the sick VM, over the lab LAN
        status, reply = vm01.call(lambda: _request("POST", PATH, body))
        assert status == 202 and reply["state"] == "accepted", reply

        deadline = time.monotonic() + 40
        final: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status, final = dom0.call(lambda: _request("GET", f"{PATH}/{rid}"))
            assert status == 200, final
            if final["state"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert final.get("state") == "done", final
        assert final["incarnation"] == 1
        assert driver.calls == ["destroy", "create"]
        assert vm01.running and vm01.holder_pid != old_holder
        assert vm01.incarnation == old_lab_incarnation + 1
        vm01.wait_ready(timeout=20)  # the new instance serves again

        # the same request id again: its state, no second recreate
        status, again = vm01.call(lambda: _request("POST", PATH, body))
        assert status == 202 and again["state"] == "done"
        # a request from the old incarnation is stale now
        stale = json.loads(body) | {"request_id": str(uuid.uuid4())}
        status, reply = vm01.call(
            lambda: _request("POST", PATH, json.dumps(stale).encode()))
        assert status == 409 and reply["error"] == "stale incarnation"
        assert driver.calls == ["destroy", "create"]
        journal = [json.loads(line) for line in
                   (tmp_path / "journal.jsonl").read_text().splitlines()]
        assert [r["decision"] for r in journal] == ["accepted", "finished", "stale"]
    finally:
        server.stop()
        driver.close()
