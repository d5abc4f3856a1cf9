"""Smoke tests of the lab itself: the LAN, the VMs' services, isolation, faults, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from guardian.lab import (
    CLIENT_IP,
    VIP,
    VM,
    VM01_IP,
    VM02_IP,
    WRONG_ADDRESS,
    Host,
    Lab,
    cleanup_stale,
)

pytestmark = pytest.mark.lab


def _until(what: str, pred: Callable[[], bool], timeout: float = 10.0) -> float:
    """Poll ``pred`` (exceptions count as False) until true; seconds it took."""
    t0 = time.monotonic()
    while True:
        try:
            if pred():
                return time.monotonic() - t0
        except Exception:  # noqa: BLE001 - a probe failing is "not yet"
            pass
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.01)


def _live(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _netns_names() -> list[str]:
    return os.listdir("/run/netns") if os.path.isdir("/run/netns") else []


def test_client_reaches_the_services_of_vm01(client: Host, vm01: VM) -> None:
    resp = client.http_get(VM01_IP)
    assert resp.status == 200
    assert "served by vm01" in resp.body
    assert client.dns_query(VM01_IP, "www.example.test", "A") == [VIP]
    assert client.smtp_banner(VM01_IP).startswith("220 vm01.example.test ")


def test_vm02_serves_its_own_copy(client: Host, vm02: VM) -> None:
    assert client.http_get(VM02_IP).body == "served by vm02\n"
    assert client.http_get("2001:db8::12").status == 200  # IPv6 too
    assert client.dns_query(VM02_IP, "www.example.test") == [VIP]
    assert client.smtp_banner(VM02_IP).startswith("220 vm02.example.test ")


def test_everything_is_named_by_the_lab_id(lab: Lab) -> None:
    ours = sorted(n for n in _netns_names() if n.startswith(lab.id + "-"))
    assert ours == sorted(f"{lab.id}-{n}" for n in ("lan", "client", "vm01", "vm02"))
    ports = lab["client"].ip_cmd("link")  # inside a host: lo and eth0 only
    assert "eth0" in ports
    lan = subprocess.run(
        ["ip", "-n", lab.lan_netns, "-o", "link"], capture_output=True, text=True, check=True
    ).stdout
    for name in (lab.bridge, *(h.port for h in lab)):
        assert len(name) <= 15 and name in lan
    root = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    assert lab.id not in root.stdout  # nothing in the root namespace


def test_vm_mounts_and_hostname_are_private(lab: Lab, vm01: VM, vm02: VM) -> None:
    probe = f"/run/guardian-lab-isolation-{lab.id}"
    vm01.write_file(probe, "vm01 only\n")
    vm01.write_file("/tmp/isolation", "vm01 only\n")
    try:
        assert vm01.read_file(probe) == "vm01 only\n"
        assert not os.path.exists(probe)  # not on the host ...
        assert not os.path.exists("/tmp/isolation")
        assert vm02.run(["test", "-e", probe], check=False).returncode == 1  # ... nor in vm02
        assert vm01.run(["hostname"]).stdout.strip() == "vm01"
        assert vm02.run(["hostname"]).stdout.strip() == "vm02"
        assert vm01.read_file("/var/www/html/index.html") == "served by vm01\n"
        assert vm01.read_file("/run/lab/incarnation").strip() == str(vm01.incarnation)
        assert int(vm01.read_file("/run/supervisord.pid")) in vm01.pids()
    finally:
        vm01.remove_file(probe)


def test_supervisord_restarts_sigkilled_apache(client: Host, vm01: VM) -> None:
    assert vm01.process("apache2").statename == "RUNNING"
    old = vm01.signal("apache2", signal.SIGKILL)
    t0 = time.monotonic()
    new = vm01.wait_pid_change("apache2", old, timeout=10)
    took = _until("HTTP 200 again", lambda: client.http_get(VM01_IP, timeout=0.5).status == 200)
    print(f"apache2 SIGKILLed: RUNNING again (pid {new}) after {time.monotonic() - t0:.2f} s")
    assert took < 10
    # The old parent's workers (orphans) were killed before the new parent started:
    # every apache2 in the VM now descends from the new parent.
    for pid in vm01.pids():
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        if comm == "apache2" and pid != new:
            assert ppid == new, f"apache2 {pid} has parent {ppid}, not {new}"


def test_broken_apache_config_ends_in_backoff_or_fatal(client: Host, vm01: VM) -> None:
    vm01.break_apache_config()
    vm01.restart("apache2")
    info = vm01.wait_state("apache2", {"BACKOFF", "FATAL"}, timeout=15)
    assert info.statename in ("BACKOFF", "FATAL")
    with pytest.raises(OSError):
        client.http_get(VM01_IP, timeout=1.0)
    assert "GuardianLabBrokenDirective" in vm01.log("apache2")
    vm01.fix_apache_config()
    vm01.wait_state("apache2", {"BACKOFF", "FATAL"}, timeout=1)
    if vm01.state("apache2") == "FATAL":
        vm01.supervisor.start("apache2", False)
    _until("HTTP 200 after the fix", lambda: client.http_get(VM01_IP).status == 200, 15)


def test_wrong_zone_survives_a_named_restart(client: Host, vm01: VM) -> None:
    vm01.serve_wrong_zone()
    assert client.dns_query(VM01_IP, "www.example.test") == [WRONG_ADDRESS]
    vm01.restart("named")
    _until(
        "named answers again, wrongly",
        lambda: client.dns_query(VM01_IP, "www.example.test", timeout=0.3) == [WRONG_ADDRESS],
    )
    vm01.serve_right_zone()
    assert client.dns_query(VM01_IP, "www.example.test") == [VIP]


def test_destroy_and_boot(lab: Lab, client: Host, vm01: VM) -> None:
    incarnation = vm01.incarnation
    pids = vm01.pids()
    assert len(pids) >= 6  # holder, supervisord, apache2 x3, named, exim4
    t0 = time.monotonic()
    vm01.destroy()
    destroyed = time.monotonic() - t0
    assert not vm01.running
    assert vm01.netns not in _netns_names()
    assert not [p for p in pids if _live(p)]
    with pytest.raises(OSError):
        client.http_get(VM01_IP, timeout=0.5)
    t0 = time.monotonic()
    vm01.boot()
    ready = vm01.wait_ready(timeout=20)
    print(f"destroy {destroyed:.3f} s, boot + ready {time.monotonic() - t0:.3f} s {ready}")
    assert vm01.incarnation == incarnation + 1
    assert vm01.read_file("/run/lab/incarnation").strip() == str(incarnation + 1)
    assert client.http_get(VM01_IP).body == "served by vm01\n"


def test_close_removes_every_namespace_and_process(make_lab: Callable[[], Lab]) -> None:
    lab = make_lab()
    client = lab.host("client", CLIENT_IP)
    vm = lab.vm("vm01", VM01_IP, autorestart=False, services=("apache2",))
    vm.wait_ready()
    vm.wait_running()  # killed while STARTING, supervisord would retry regardless
    # autorestart=false: a crashed program stays down (what guardiand must handle).
    vm.signal("apache2", signal.SIGKILL, group=True)
    vm.wait_state("apache2", {"EXITED"}, timeout=5)
    with pytest.raises(OSError):
        client.http_get(VM01_IP, timeout=0.5)
    sleeper = client.popen(["sleep", "600"])
    pids = [*vm.pids(), sleeper.pid]
    lab_id, labdir = lab.id, lab.dir
    lab.close()
    assert not [n for n in _netns_names() if n.startswith(lab_id + "-")]
    assert not [p for p in pids if _live(p)]
    assert not labdir.exists()
    lab.close()  # idempotent


def test_cleanup_stale_removes_a_crashed_lab(lab: Lab) -> None:
    code = (
        "import os, signal\n"
        "from guardian.lab import Lab, VMSpec\n"
        "lab = Lab()\n"
        "lab.host('client', '192.0.2.10')\n"
        "vm = lab.add_vm(VMSpec('vm01', '192.0.2.11', programs=()))\n"
        "print(lab.id, vm.holder_pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    stale_id, holder = proc.stdout.split()
    assert _live(int(holder))
    assert any(n.startswith(stale_id + "-") for n in _netns_names())
    report = cleanup_stale()
    assert stale_id in report.removed
    assert lab.id in report.live  # a live lab is never touched
    assert not report.errors
    assert not any(n.startswith(stale_id + "-") for n in _netns_names())
    assert not _live(int(holder))
    vm01 = lab["vm01"]
    assert isinstance(vm01, VM) and vm01.running
