"""Escalation end to end over ``xenstore``, in the lab with its stand-in xenstored
(``Lab.xenstore()``): every boot of vm01 is a new domain (new domid, same UUID), as
Xen's toolstack makes one; guardiand in vm01 talks to XenStore as its own domain
(``XENSTORED_PATH``: inside the VM, its own domain's socket and nothing else);
guardian-hostd in dom0 reads requests from XenStore (``[hostd] xenstore``) and
recreates vm01 with the ``lab`` driver.

1. The plumbing: a domain per boot, released by destroy; the guest sees its own
   socket only, reads its domain's nodes and cannot write dom0's.
2. Apache's config broken and Apache killed -> guardiand escalates through XenStore ->
   hostd recreates vm01 once -> vm01 serves again; the new domain's
   ``guardian/incarnation`` (read from inside vm01) is 1; a guardiand started in the
   new VM has nothing open, and when it escalates, it sends incarnation 1 (read from
   XenStore: its ``incarnation_file`` does not exist) -- not stale, only rate-limited.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from guardian.lab import (
    VM,
    VM01_IP,
    Lab,
)
from guardian.lab._escalation import VM_UUID, EscalationRig, guardiand_config, wait_for

pytestmark = pytest.mark.lab

#: guardiand's incarnation file: never written, so the incarnation it reads comes
#: from XenStore
NO_INCARNATION_FILE = "/run/guardian/no-incarnation"


def config(vm_uuid: str) -> str:
    """vm01's guardiand (``guardian.lab``'s escalation config), escalating through
    XenStore."""
    return guardiand_config(f"""\
[escalation]
channel = "xenstore"
vm = "vm01"
vm_uuid = "{vm_uuid}"
incarnation_file = "{NO_INCARNATION_FILE}"
timeout = "5s"
retry_max = "2s"
""")


#: run inside the VM with the guest's XENSTORED_PATH: read (and try to forge) nodes
GUEST_SCRIPT = """\
import json, sys
from guardian.xenstore import Client, XenstoreError
out = {}
with Client(timeout=5) as c:
    for key in sys.argv[1:]:
        try:
            out[key] = c.read_text(key)
        except XenstoreError as exc:
            out[key] = exc.name
    try:
        c.write("guardian/incarnation", "99")
        out["forge"] = "written"
    except XenstoreError as exc:
        out["forge"] = exc.name
print(json.dumps(out))
"""


def as_guest(vm: VM, *keys: str) -> dict[str, str]:
    """XenStore nodes as vm's processes see them (their own domain's socket)."""
    proc = vm.run([sys.executable, "-c", GUEST_SCRIPT, *keys])  # env: vm.env
    return dict(json.loads(proc.stdout))


def test_lab_xenstore_gives_each_boot_a_domain(make_lab: Callable[[], Lab]) -> None:
    lab = make_lab()
    xs = lab.xenstore()
    assert lab.xenstore() is xs
    vm = lab.vm("vm01", VM01_IP, services=("apache2",))
    first = vm.domid
    assert first is not None and xs.domid_of("vm01") == first
    assert vm.env["XENSTORED_PATH"] == str(xs.name_socket("vm01"))
    # inside the VM: its own domain's socket, at the same path, and nothing else
    assert vm.run(["ls", "-A", str(xs.directory)]).stdout.split() == ["vm01.sock"]
    seen = as_guest(vm, "domid", "name", "vm")
    assert seen == {"domid": str(first), "name": "vm01", "vm": f"/vm/{vm.uuid}",
                    "forge": "EACCES"}, seen
    vm.destroy()
    assert vm.domid is None and xs.domid_of("vm01") is None
    assert xs.daemon.read(f"/local/domain/{first}/vm") is None      # released
    vm.boot()
    second = vm.domid
    assert second is not None and second != first
    seen = as_guest(vm, "domid", "vm")
    assert seen["domid"] == str(second) and seen["vm"] == f"/vm/{vm.uuid}", seen


def test_escalation_over_lab_xenstore_recreates_vm(make_lab: Callable[[], Lab],
                                                   tmp_path: Path) -> None:
    t_test = time.monotonic()
    rig = EscalationRig(make_lab(), tmp_path, xenstore=True, config=config(VM_UUID))
    errors: list[str] = []
    try:
        rig.start()
        vm, hostd, driver, xs = rig.vm, rig.hostd, rig.driver, rig.xs
        assert hostd is not None and driver is not None and xs is not None
        old_domid, old_holder = vm.domid, vm.holder_pid
        g1 = rig.guardiand
        assert g1.status()["escalations"] == []
        # hostd knows the domain by its UUID and published incarnation 0 into it
        wait_for(lambda: as_guest(vm, "guardian/incarnation")["guardian/incarnation"]
                 == "0", 10, "incarnation 0 in vm01's domain", rig.debug)

        # -- the fault: guardiand escalates through XenStore, hostd recreates vm01
        t_fault = rig.fault()
        acc = rig.wait_decision("accepted", timeout=30)
        assert acc["vm"] == "vm01" and acc["action"] == "recreate", acc
        assert acc["reason"]["service"] == "apache2", acc
        # sent with the incarnation hostd published (0), read by g1 from XenStore
        sent = hostd.engine.store.requests[acc["request_id"]]["incarnation_sent"]
        assert sent == 0, sent
        done = rig.wait_decision("finished", timeout=40)
        assert done["outcome"] == "done", done
        t_serving = rig.wait_serving(20)
        assert driver.calls == ["destroy", "create"]
        assert not g1.running(), "the old guardiand survived its VM"
        assert vm.running and vm.holder_pid != old_holder
        new_domid = vm.domid
        assert new_domid is not None and new_domid != old_domid
        assert xs.domid_of("vm01") == new_domid
        assert [r["decision"] for r in rig.journal()] == ["accepted", "finished"]
        assert hostd.engine.store.incarnation("vm01") == 1

        # -- the new domain: incarnation 1, read as the guest reads it; not forgeable
        def incarnation_1() -> dict[str, str] | None:
            s = as_guest(vm, "guardian/incarnation", "domid")
            return s if s["guardian/incarnation"] == "1" else None

        seen = wait_for(incarnation_1, 10, "incarnation 1 in the new domain", rig.debug)
        assert seen["domid"] == str(new_domid) and seen["forge"] == "EACCES", seen
        answer = as_guest(vm, f"guardian/answer/{acc['request_id']}")
        assert json.loads(answer[f"guardian/answer/{acc['request_id']}"])["state"] == "done"

        # -- the new VM's guardiand (started at its boot): nothing open; its next
        # request carries incarnation 1 (from XenStore), so hostd finds it current,
        # not stale
        g2 = rig.guardiand
        assert g2 is not g1
        g2.wait_state("apache2", "up", timeout=10)
        assert g2.status()["escalations"] == []
        rig.fault()
        esc = g2.wait(lambda st: bool(st["escalations"]), timeout=30,
                      what="a second escalation")["escalations"]
        assert len(esc) == 1 and esc[0]["incarnation"] == 1, esc
        limited = rig.wait_decision("rate-limited", timeout=20)
        assert limited["request_id"] == esc[0]["request_id"], limited
        assert rig.decisions("stale") == []
        assert driver.calls == ["destroy", "create"]

        print(f"\nfault -> request accepted by hostd: {acc['wall'] - t_fault:.3f} s")
        print(f"fault -> vm01 serving again:        {t_serving - t_fault:.3f} s")
        print(f"domains: {old_domid} -> {new_domid}; hostd timings: {done.get('timings')}")
        assert time.monotonic() - t_test < 120
    finally:
        errors = rig.stop()
    assert not errors, errors
