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

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guardian.hostd import HostdSpec, PolicySpec, VMSpec, build
from guardian.hostd._xsinput import XenstoreInput
from guardian.lab import (
    CLIENT_IP,
    DOM0_IP,
    VM,
    VM01_IP,
    Guardiand,
    HostdInDom0,
    Lab,
    LabDriver,
    listener_program,
)
from guardian.lab._escalation import guardiand_config, wait_for
from ipfailover._wire import KeyRing

pytestmark = pytest.mark.lab

PORT = 7082          # hostd's HTTP listener: on, but unused here
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


class Rig:
    """client, dom0, vm01 with the lab's xenstore; hostd in dom0 with its XenStore
    input on the stand-in's dom0 socket and the ``lab`` driver."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.xs = lab.xenstore()
        self.client = lab.host("client", CLIENT_IP)
        self.dom0 = lab.host("dom0", DOM0_IP)
        self.vm = lab.vm("vm01", VM01_IP, autorestart=False, startsecs=0,
                         extra_programs=(listener_program(),))
        self.config = config(self.vm.uuid)
        spec = HostdSpec(
            source="lab", host=DOM0_IP, port=PORT, state_dir=workdir / "hostd",
            journal_dir=workdir / "hostd",
            policy=PolicySpec(min_interval=600, max_actions=3, confirm_timeout=15),
            vms={"vm01": VMSpec(name="vm01", uuid=self.vm.uuid,
                                key_file=workdir / "none", driver="lab",
                                domain=f"{lab.id}-vm01",  # the session's lab has a vm01
                                keys=KeyRing({1: os.urandom(32)}))},
            xenstore=str(self.xs.dom0_socket))
        self.hostd = build(spec, poll_interval=0.05)    # the lab driver, by registry
        driver = self.hostd.engine.drivers["vm01"]
        assert isinstance(driver, LabDriver) and driver.vm is self.vm
        self.driver = driver
        self.server = HostdInDom0(self.dom0, self.hostd, DOM0_IP, PORT)
        self.input = XenstoreInput(self.hostd.engine, spec.xenstore, rescan=1.0, timeout=5)
        self.guardiands: list[Guardiand] = []

    def start(self) -> None:
        self.vm.wait_ready(timeout=30)
        self.server.start()
        asyncio.run_coroutine_threadsafe(self.input.start(), self.server.loop).result(10)
        self.start_guardiand()

    def stop(self) -> list[str]:
        errors: list[str] = []
        for g in self.guardiands:
            try:
                g.stop()
            except Exception as exc:  # noqa: BLE001 - stop the rest, then report
                errors.append(repr(exc))
        if self.server.loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self.input.close(),
                                                 self.server.loop).result(15)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"xenstore input: {exc!r}")
        self.server.stop()
        self.driver.close()
        return errors

    def start_guardiand(self) -> Guardiand:
        g = Guardiand(self.vm, self.config)
        g.log_path = self.workdir / f"guardiand-{len(self.guardiands) + 1}.log"
        self.guardiands.append(g)
        g.start(timeout=15)
        return g

    def journal(self) -> list[dict[str, Any]]:
        path = self.workdir / "hostd" / "journal.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def decisions(self, decision: str) -> list[dict[str, Any]]:
        return [r for r in self.journal() if r.get("decision") == decision]

    def first(self, decision: str) -> dict[str, Any] | None:
        found = self.decisions(decision)
        return found[0] if found else None

    def serves(self) -> bool:
        try:
            return self.client.http_get(VM01_IP, timeout=0.5).status == 200
        except Exception:  # noqa: BLE001 - any failure to answer is "not serving"
            return False

    def fault(self) -> float:
        """Break Apache's config and kill it: restarts cannot help.  The kill's wall
        time."""
        self.vm.break_apache_config()
        t = time.time()
        self.vm.signal("apache2", signal.SIGKILL, group=True)
        return t

    def debug(self) -> str:
        seen = [(r.get("decision"), r.get("outcome")) for r in self.journal()]
        parts = [f"hostd journal: {seen}", f"hostd counters: {self.hostd.engine.counters}",
                 self.vm.debug_report(tail=5)]
        for g in self.guardiands[-2:]:
            parts.append(f"--- {g.log_path.name}\n{g.log()[-2500:]}")
        return "\n".join(parts)


def test_escalation_over_lab_xenstore_recreates_vm(make_lab: Callable[[], Lab],
                                                   tmp_path: Path) -> None:
    t_test = time.monotonic()
    rig = Rig(make_lab(), tmp_path)
    errors: list[str] = []
    try:
        rig.start()
        vm = rig.vm
        old_domid, old_holder = vm.domid, vm.holder_pid
        g1 = rig.guardiands[0]
        assert g1.status()["escalations"] == []
        # hostd knows the domain by its UUID and published incarnation 0 into it
        wait_for(lambda: as_guest(vm, "guardian/incarnation")["guardian/incarnation"]
                 == "0", 10, "incarnation 0 in vm01's domain", rig.debug)

        # -- the fault: guardiand escalates through XenStore, hostd recreates vm01
        t_fault = rig.fault()
        acc = wait_for(lambda: rig.first("accepted"), 30,
                       "hostd accepting the request", rig.debug)
        assert acc["vm"] == "vm01" and acc["action"] == "recreate", acc
        assert acc["reason"]["service"] == "apache2", acc
        # sent with the incarnation hostd published (0), read by g1 from XenStore
        sent = rig.hostd.engine.store.requests[acc["request_id"]]["incarnation_sent"]
        assert sent == 0, sent
        done = wait_for(lambda: rig.first("finished"), 40,
                        "the recreate finished", rig.debug)
        assert done["outcome"] == "done", done
        wait_for(rig.serves, 20, "vm01 serving HTTP again", rig.debug)
        t_serving = time.time()
        assert rig.driver.calls == ["destroy", "create"]
        assert not g1.running(), "the old guardiand survived its VM"
        assert vm.running and vm.holder_pid != old_holder
        new_domid = vm.domid
        assert new_domid is not None and new_domid != old_domid
        assert rig.xs.domid_of("vm01") == new_domid
        assert [r["decision"] for r in rig.journal()] == ["accepted", "finished"]
        assert rig.hostd.engine.store.incarnation("vm01") == 1

        # -- the new domain: incarnation 1, read as the guest reads it; not forgeable
        def incarnation_1() -> dict[str, str] | None:
            s = as_guest(vm, "guardian/incarnation", "domid")
            return s if s["guardian/incarnation"] == "1" else None

        seen = wait_for(incarnation_1, 10, "incarnation 1 in the new domain", rig.debug)
        assert seen["domid"] == str(new_domid) and seen["forge"] == "EACCES", seen
        answer = as_guest(vm, f"guardian/answer/{acc['request_id']}")
        assert json.loads(answer[f"guardian/answer/{acc['request_id']}"])["state"] == "done"

        # -- a guardiand of the new VM: nothing open; its next request carries
        # incarnation 1 (from XenStore), so hostd finds it current, not stale
        g2 = rig.start_guardiand()
        g2.wait_state("apache2", "up", timeout=10)
        assert g2.status()["escalations"] == []
        rig.fault()
        esc = g2.wait(lambda st: bool(st["escalations"]), timeout=30,
                      what="a second escalation")["escalations"]
        assert len(esc) == 1 and esc[0]["incarnation"] == 1, esc
        limited = wait_for(lambda: rig.decisions("rate-limited"), 20,
                           "hostd's answer to the second request", rig.debug)
        assert limited[0]["request_id"] == esc[0]["request_id"], limited
        assert rig.decisions("stale") == []
        assert rig.driver.calls == ["destroy", "create"]

        print(f"\nfault -> request accepted by hostd: {acc['wall'] - t_fault:.3f} s")
        print(f"fault -> vm01 serving again:        {t_serving - t_fault:.3f} s")
        print(f"domains: {old_domid} -> {new_domid}; hostd timings: {done.get('timings')}")
        assert time.monotonic() - t_test < 120
    finally:
        errors = rig.stop()
    assert not errors, errors
