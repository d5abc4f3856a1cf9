"""IP failover with ``fence = "dom0"`` in the lab: the master VM freezes; the backup
asks guardian-hostd in dom0 to fence it (a ``fence-peer`` request over signed HTTP),
hostd's ``lab`` driver destroys the frozen VM and confirms it is gone, and only then
does the backup take the VIP.

Without fencing, a frozen lab VM's kernel keeps answering for the VIP until its lease
runs out, so both VMs hold it for up to lease + 1 s (test_failover's
``test_frozen_master_vm_then_thawed``).  With fencing the overlap is zero: the old
master is gone before the new one adds the address.  The price is the fence's time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("pyroute2")
pytest.importorskip("scapy")

from test_failover import (  # noqa: E402
    KEY,
    KEY_FILE,
    LEASE,
    ClientPoller,
    Pair,
    Sampler,
    config,
    figure,
    overlap,
)

from guardian.hostd import HostdSpec, PolicySpec, VMSpec, build  # noqa: E402
from guardian.lab import (  # noqa: E402
    CLIENT_IP,
    DOM0_IP,
    VIP,
    VM,
    VM01_IP,
    VM02_IP,
    Guardiand,
    HostdInDom0,
    Lab,
    LabDriver,
    listener_program,
)
from ipfailover._wire import KeyRing  # noqa: E402

pytestmark = pytest.mark.lab

PORT = 7082
ESC_KEY_FILE = "/etc/guardian/escalation.key"
UUIDS = {"vm01": "0f0e0d0c-0000-4000-8000-000000000001",
         "vm02": "0f0e0d0c-0000-4000-8000-000000000002"}


def escalation(vm: str) -> str:
    return f"""
[escalation]
channel = "http"
url = "http://{DOM0_IP}:{PORT}"
key_file = "{ESC_KEY_FILE}"
vm = "{vm}"
vm_uuid = "{UUIDS[vm]}"
incarnation_file = "/run/guardian/incarnation"
timeout = "2s"
retry_max = "1s"
"""


def test_frozen_master_is_fenced_before_the_takeover(make_lab: Callable[[], Lab],
                                                     tmp_path: Path) -> None:
    lab = make_lab()
    client = lab.host("client", CLIENT_IP)
    dom0 = lab.host("dom0", DOM0_IP)
    vms: dict[str, VM] = {}
    for name, ip in (("vm01", VM01_IP), ("vm02", VM02_IP)):
        vms[name] = lab.vm(name, ip, autorestart=False, startsecs=0,
                           extra_programs=(listener_program(),), boot=False)
    lab.boot(timeout=30)
    keys = {name: os.urandom(32) for name in vms}
    for name, vm in vms.items():
        vm.wait_ready(timeout=20, services=("apache2",))
        vm.write_file(KEY_FILE, KEY, mode=0o600)
        vm.write_file(ESC_KEY_FILE, f"1 {keys[name].hex()} send\n", mode=0o600)
        vm.run(["mkdir", "-p", "/run/guardian"])
        vm.write_file("/run/guardian/incarnation", "0\n")

    drivers = {name: LabDriver(vm) for name, vm in vms.items()}
    spec = HostdSpec(
        source="lab", host=DOM0_IP, port=PORT, state_dir=tmp_path, journal_dir=tmp_path,
        policy=PolicySpec(min_interval=60, max_actions=3, confirm_timeout=10),
        vms={name: VMSpec(name=name, uuid=UUIDS[name], key_file=tmp_path / "none",
                          driver="lab", domain=name, keys=KeyRing({1: keys[name]}),
                          peer="vm02" if name == "vm01" else "vm01")
             for name in vms})
    hostd = build(spec, drivers=drivers, poll_interval=0.02)
    server = HostdInDom0(dom0, hostd, DOM0_IP, PORT)
    server.start()

    fence = 'fence = "dom0"\nfence_timeout = "10s"\n'
    g1 = Guardiand(vms["vm01"], config("vm01", VM01_IP, "vm02", VM02_IP, 150)
                   + escalation("vm01"))
    g2 = Guardiand(vms["vm02"], config("vm02", VM02_IP, "vm01", VM01_IP, 100, extra=fence)
                   + escalation("vm02"))
    samplers: list[Sampler | ClientPoller] = []
    try:
        g1.start()
        g2.start()
        p = Pair(lab, vms["vm01"], vms["vm02"], g1, g2)
        p.wait_group(g1, lambda g: g["state"] == "master" and g["vips_held"], 10,
                     "vm01 master")
        p.wait_group(g2, lambda g: g["state"] == "backup" and g["fence"] == "dom0", 10,
                     "vm02 backup, fencing through dom0")
        s1, s2 = Sampler(vms["vm01"]), Sampler(vms["vm02"])
        poller = ClientPoller(client)
        samplers += [s1, s2, poller]
        time.sleep(0.3)

        # -- the master VM freezes: silent, its kernel still holds the VIP
        t0 = time.monotonic()
        vms["vm01"].freeze()
        g2st = p.wait_group(g2, lambda g: g["state"] == "master" and g["vips_held"], 15,
                            "vm02 master after the fence")
        # the samplers are threads that may lag the status a little under load
        vip_at = served_at = None
        deadline = time.monotonic() + 5
        while (vip_at is None or served_at is None) and time.monotonic() < deadline:
            vip_at = s2.first_true_after(t0)
            served_at = poller.first_from("vm02", t0)
            time.sleep(0.02)
        assert vip_at is not None and served_at is not None, (
            f"VIP on vm02 at {vip_at}, served at {served_at}; client neighbours:\n"
            f"{client.ip_cmd('neigh', 'show', 'dev', 'eth0')}\npoller: {poller.samples[-8:]}")

        # -- hostd fenced vm01 (destroyed, death confirmed) at vm02's request
        recs = [r for r in hostd.engine.store.requests.values()
                if r.get("action") == "fence-peer"]
        assert len(recs) == 1, recs
        (req,) = recs
        assert (req["sender"], req["target"], req["state"]) == ("vm02", "vm01", "done"), req
        assert drivers["vm01"].calls == ["destroy"] and drivers["vm02"].calls == []
        assert not vms["vm01"].running
        assert "peer fenced (dom0: done:" in g2st["reason"], g2st["reason"]

        # -- never both: the old master was gone before the new one added the VIP
        last_on_vm01 = max((t for t, held in s1.samples if held), default=t0)
        ov = overlap(s1, s2, after=t0)
        figure("fenced frozen VM: VIP on vm02 after", vip_at - t0)
        figure("fenced frozen VM: client served by vm02 after", served_at - t0)
        figure("fenced frozen VM: VIP overlap", ov)
        figure("fenced frozen VM: VIP last seen on vm01", last_on_vm01 - t0)
        assert ov == 0.0, ov
        assert last_on_vm01 < vip_at, (last_on_vm01 - t0, vip_at - t0)
        assert vip_at - t0 < LEASE, vip_at - t0  # the fence beats waiting for the lease
        assert p.holders() == ["vm02"]
        assert client.http_get(VIP, timeout=1.0).body.strip() == "served by vm02"
    finally:
        for s in samplers:
            try:
                s.stop()
            except Exception:  # noqa: BLE001 - the VM may be gone
                pass
        for g in (g1, g2):
            if g.proc is not None and g.proc.poll() is None:
                try:
                    g.stop()
                except Exception:  # noqa: BLE001 - report the test's own failure
                    pass
        server.stop()
        for d in drivers.values():
            d.close()
        for g in (g1, g2):
            print(f"---- guardiand {g.vm.name} log\n{g.log()[-3000:]}")
