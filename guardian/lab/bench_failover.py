"""The failover benchmark: how fast does the service IP (VIP) move to the standby VM,
and how often does it move for nothing (design.md section 4).

    python -m guardian.lab.bench_failover --runs 10 --json bench-failover.json

Everything runs in one lab (root, network namespaces), in one run: a client and two
VMs, ``vm01`` (192.0.2.11) and ``vm02`` (192.0.2.12), each with Debian's stock apache2
under supervisord, whose index page says ``served by vm01`` / ``served by vm02``. The
VIP is 192.0.2.100/24 on the VMs' ``eth0``. The systems, one at a time, each set up
afresh for every scenario and profile:

``guardian``
    guardiand in each VM with a ``[failover]`` group (needs ``ipfailover._engine``;
    without it, its figures are "not available" and the benchmark says so).
``keepalived``
    Debian's keepalived, VRRPv3, unicast adverts between the VMs' own addresses (as
    guardian's heartbeats are unicast), started in each VM's namespaces with its
    configuration in the VM's private /run (see :func:`keepalived_config`).

Profiles: ``100ms`` (heartbeat/advert interval 100 ms for both) and ``defaults``
(each at its own defaults: keepalived's advert_int 1 s; guardian's interval is 100 ms
by default, so its two profiles differ only in what the configuration spells out).

Scenarios:

``vm-dies``
    The active VM (whoever holds the VIP) "dies": its switch port goes down
    (``VM.link_down()``, a crashed VM or host as the LAN sees it). Clock: from right
    before the link goes down to the client's first HTTP 200 *from the standby* via
    the VIP (polled from the client: 20 staggered workers, a new connection every
    ~5 ms while nothing answers, 50 ms timeout each). Also timed from the VMs' side
    (netlink events, see :class:`VipWatcher`): when the standby had the VIP, how long
    the cut-off VM kept it, and how long both held it once the link was back (a split
    brain on the LAN). Then the link comes back and the pair settles before the next
    run (random 0-1 s wait first, so runs do not line up with the adverts). The clock
    includes the ``ip link set ... down`` command (a few ms), as the supervision
    benchmark's includes its kill.

    keepalived preempts (its default), so vm01 (150) is the master again after every
    run and every run measures vm02 (100) taking over, as the earlier anchors did.
    guardian does not preempt (its default), so its runs alternate vm01 -> vm02,
    vm02 -> vm01. In the lab both notice their own link's lost carrier (the veth
    peer is down) and drop the VIP at once, so the cut-off VM keeps it for
    milliseconds; a crashed VM would not, and a live-but-isolated one would not notice
    a cut further away.
``false-failovers``
    No failure, ``--loss-seconds`` (60) of ``--loss-percent`` (10 %) random loss of the
    heartbeat packets (VRRP, IP protocol 112; guardian's UDP port), both directions, on
    the backup's side: an nftables table ``inet guardianbench_<labid>`` in the backup's
    network namespace (``numgen random mod 100 < 10 drop``, counted), deleted after.
    Counted: how many times the VIP appeared on a VM that did not hold it (a false
    failover), how long the backup held it, how long both did.
``service-cold`` (guardian only)
    A tracked service fails for good on the active VM (apache2's configuration broken,
    then apache2 SIGKILLed: its one restart fails, the ladder's ``failover`` rung
    follows); the standby, with apache2 stopped (cold), starts it and takes the VIP.
    Clock: kill -> first HTTP 200 from the standby. Then the failed VM is repaired as
    an operator would (config fixed, guardiand restarted: a node whose tracked cold
    service failed stays FAULT otherwise, as its cold service is stopped with the
    release and never comes up again by itself).
``switchover`` (guardian only)
    ``guardian switchover`` on the active VM. Clock: command -> first 200 from the
    standby.

"Settled" (before every run, after every run): one VM has held the VIP alone for a
while (keepalived: 2 adverts, at least 1 s; guardian: 1 s), the client gets that VM's
page through the VIP, and the system agrees: keepalived's master is vm01 again;
guardian's status shows the holder MASTER and the other BACKUP hearing a live master
(so the next fault never meets a standby that is still FAULT from the last one).

Records: one per scenario (with the profile in its name: ``vm-dies-100ms``) and
system, the supervision benchmark's fields (``scenario, system, runs, median_s, max_s``
...) plus the VM-side figures; ``ratio_vs_guardian`` (keepalived median / guardian
median) on keepalived's records. The exit status is 1 if a measured run failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import importlib
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Protocol

from ._errors import LabError, LabTimeout
from ._host import Host
from ._lab import Lab
from ._probes import HttpResponse
from ._spec import CLIENT_IP, VIP, VM01_IP, VM02_IP
from ._vm import VM
from .bench import (
    SYSTEM_ERRORS,
    Log,
    OutageClock,
    _csv,
    _first,
    _fmt_s,
    _round,
    _stderr,
    _wrap,
    run_main,
)

# ---------------------------------------------------------------- names
VM_DIES = "vm-dies"
FALSE_FAILOVERS = "false-failovers"
SERVICE_COLD = "service-cold"
SWITCHOVER = "switchover"
SCENARIOS = (VM_DIES, FALSE_FAILOVERS, SERVICE_COLD, SWITCHOVER)
#: Scenarios only guardian has: they run once, at guardian's defaults.
GUARDIAN_ONLY = (SERVICE_COLD, SWITCHOVER)

GUARDIAN = "guardian"
KEEPALIVED = "keepalived"
SYSTEMS = (GUARDIAN, KEEPALIVED)

FAST = "100ms"
DEFAULTS = "defaults"
PROFILES = (FAST, DEFAULTS)
PROFILE_TITLES = {
    FAST: "heartbeat/advert interval 100 ms for both",
    DEFAULTS: "each system at its defaults",
}

GUARDIAN_UNAVAILABLE = "not available: ipfailover engine not built yet"

#: Goals and earlier measurements (design.md section 4, the issue).
GOAL_MEDIAN_S = 0.25
ANCHORS: dict[str, str] = {
    FAST: "keepalived, advert 0.1 s (VRRPv3): 0.41 s",
    DEFAULTS: "keepalived, advert 1 s: 3.6 s",
}
ANCHOR_FALSE = "keepalived, advert 0.1 s, 10% loss of adverts: 1 false failover in 60 s"

# ---------------------------------------------------------------- the lab
IFACE = "eth0"
VIP_PREFIX = 24
VIP_CIDR = f"{VIP}/{VIP_PREFIX}"
#: The client's outage clock: with every request hanging until its timeout (SYNs to a
#: dead MAC), a new connection starts every (timeout + gap) / workers = 5 ms.
POLL_WORKERS = 20
POLL_GAP = 0.05
POLL_TIMEOUT = 0.05
POLL_STAGGER = 0.005
#: A random wait before each fault, so runs do not line up with the adverts.
PHASE_JITTER = 1.0
#: How long the cut-off VM stays cut off after the standby answered.
CUT_HOLD = 0.3
SETTLE_TIMEOUT = 30.0


def served_by(resp: HttpResponse) -> str | None:
    """The VM that answered (the lab's index page says ``served by NAME``)."""
    m = re.match(r"served by (\S+)", resp.body.strip())
    return m.group(1) if m else None


# ---------------------------------------------------------------- the VIP, seen by the VMs
class VipWatcher:
    """Who holds the VIP, from one VM's kernel: ``ip -o monitor address dev eth0`` in
    the VM's network namespace, each event stamped with ``time.monotonic()`` when read.

    Netlink events, not polling: a false failover under VRRP can last a millisecond
    (the backup adds the VIP, adverts once, hears the master's forced election and
    drops it again), which a 5-10 ms poll of ``ip addr`` would mostly miss. The
    starting state comes from ``ip -o addr show`` once the monitor listens; ``check()``
    compares the tracked state with a fresh listing.
    """

    def __init__(self, vm: VM, address: str = VIP, interface: str = IFACE) -> None:
        self.vm = vm
        self.interface = interface
        self._needle = f" inet {address}/"
        self._lock = threading.Lock()
        #: (time, held) at every change of state (the first entry: the start state)
        self.changes: list[tuple[float, bool]] = []
        self.events = 0
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> VipWatcher:
        self._proc = self.vm.popen(
            ["ip", "-o", "monitor", "address", "dev", self.interface],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1)
        self._thread = threading.Thread(target=self._read, daemon=True,
                                        name=f"vip-watch:{self.vm.name}")
        self._thread.start()
        time.sleep(0.3)  # the monitor subscribes within milliseconds of its start
        t = time.monotonic()
        held = self.listed()
        with self._lock:
            # Events read before t are older than the listing; later ones are newer
            # (or repeat it): they carry a state, not a toggle, so order is enough.
            later = [(ts, h) for ts, h in self.changes if ts >= t]
            self.changes = []
            self._apply(t, held)
            for ts, h in later:
                self._apply(ts, h)
        return self

    def _apply(self, t: float, held: bool) -> None:
        if not self.changes or self.changes[-1][1] != held:
            self.changes.append((t, held))

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            t = time.monotonic()
            if self._needle not in line:
                continue
            held = not line.startswith("Deleted")
            with self._lock:
                self.events += 1
                self._apply(t, held)

    def listed(self) -> bool:
        """Whether ``ip addr`` lists the VIP on the interface right now."""
        out = self.vm.ip_cmd("-o", "-4", "addr", "show", "dev", self.interface)
        return self._needle in out

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def held(self) -> bool:
        with self._lock:
            return bool(self.changes) and self.changes[-1][1]

    def last_change(self) -> float:
        with self._lock:
            return self.changes[-1][0] if self.changes else 0.0

    def intervals(self, t0: float, t1: float) -> list[tuple[float, float]]:
        """The spans within [t0, t1] when this VM held the VIP."""
        with self._lock:
            changes = list(self.changes)
        out: list[tuple[float, float]] = []
        start: float | None = None
        for t, held in changes:
            if held and start is None:
                start = t
            elif not held and start is not None:
                out.append((start, t))
                start = None
        if start is not None:
            out.append((start, max(t1, start)))
        return [(max(a, t0), min(b, t1)) for a, b in out if b > t0 and a < t1]

    def rises(self, t0: float, t1: float) -> list[float]:
        """When the VIP appeared on this VM within (t0, t1]."""
        with self._lock:
            return [t for t, held in self.changes[1:] if held and t0 < t <= t1]

    def check(self) -> str:
        """"" if the tracked state matches ``ip addr``; otherwise what differs."""
        time.sleep(0.05)
        listed, tracked = self.listed(), self.held()
        if listed == tracked:
            return ""
        return f"{self.vm.name}: ip addr {'lists' if listed else 'lacks'} the VIP, " \
               f"the watcher says {'held' if tracked else 'not held'}"

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)


def overlap(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> float:
    """Total time both lists of spans cover."""
    return sum(max(0.0, min(a1, b1) - max(a0, b0)) for a0, a1 in a for b0, b1 in b)


def total(spans: Sequence[tuple[float, float]]) -> float:
    return sum(b - a for a, b in spans)


@dataclasses.dataclass
class Pair:
    """The lab pieces every system and scenario uses: the client, the two VMs, a VIP
    watcher in each, the client's outage clock."""

    lab: Lab
    client: Host
    vm01: VM
    vm02: VM
    watchers: dict[str, VipWatcher]
    clock: OutageClock

    @property
    def vms(self) -> tuple[VM, VM]:
        return (self.vm01, self.vm02)

    def other(self, vm: VM) -> VM:
        return self.vm02 if vm is self.vm01 else self.vm01

    def holders(self) -> list[VM]:
        return [vm for vm in self.vms if self.watchers[vm.name].held()]

    def holder(self) -> VM | None:
        """The one VM holding the VIP; None if none or both do."""
        held = self.holders()
        return held[0] if len(held) == 1 else None

    def served_by(self, timeout: float = 1.0) -> str | None:
        """Which VM answers HTTP on the VIP for the client now (None: nobody)."""
        try:
            resp = self.client.http_get(VIP, timeout=timeout)
        except (OSError, LabError):
            return None
        return served_by(resp) if resp.status == 200 else None

    def wait_stable(self, *, hold: float, check: Callable[[], None],
                    expected: VM | None = None, timeout: float = SETTLE_TIMEOUT,
                    ready: Callable[[VM], str | None] | None = None) -> VM:
        """Wait until one VM (``expected``, if given) has held the VIP alone for
        ``hold`` seconds and the client gets its page through the VIP. ``check()``
        raises if the system fell over (a daemon exited); ``ready(holder)`` says why
        the system is not settled yet (None: it is). Returns the holder."""
        deadline = time.monotonic() + timeout
        last = "nothing yet"
        while True:
            check()
            for w in self.watchers.values():
                if not w.alive():
                    raise LabError(f"VIP watcher in {w.vm.name} exited")
            holders = self.holders()
            since = time.monotonic() - max(w.last_change() for w in self.watchers.values())
            if len(holders) == 1 and (expected is None or holders[0] is expected):
                if since >= hold:
                    who = self.served_by()
                    not_yet = None if ready is None else ready(holders[0])
                    if who == holders[0].name and not_yet is None:
                        return holders[0]
                    last = f"{holders[0].name} holds the VIP, the client reaches {who}" + (
                        f", {not_yet}" if not_yet else "")
                else:
                    last = f"{holders[0].name} holds the VIP for {since:.2f} s"
            else:
                last = f"held by {[vm.name for vm in holders] or 'nobody'}"
            if time.monotonic() > deadline:
                raise LabTimeout(f"the pair did not settle in {timeout:g} s (last: {last})")
            time.sleep(0.02)


# ---------------------------------------------------------------- the systems
class System(Protocol):
    """A failover system under test. ``setup`` starts it in both VMs (for one
    profile); ``wait_stable`` waits until it settled and returns the VM holding the
    VIP; ``teardown`` stops it and leaves no VIP behind."""

    name: str

    def setup(self, pair: Pair, profile: str) -> None: ...

    def settings(self) -> str: ...

    def configs(self) -> dict[str, str]: ...

    def check(self) -> None: ...

    def wait_stable(self, timeout: float = SETTLE_TIMEOUT) -> VM: ...

    def holder(self) -> VM | None: ...

    def heartbeat_match(self) -> str: ...

    def master_transitions(self, vm: VM) -> int | None: ...

    def expected_false_failovers(self, heartbeats: int, loss: float) -> float | None: ...

    def teardown(self) -> None: ...


class SystemUnavailable(LabError):
    """The system cannot be set up in this build (its figures are "not available")."""


# -------------------------------- keepalived
KEEPALIVED_DIR = "/run/keepalived"  # the VM's private tmpfs: /etc/keepalived is shared
KEEPALIVED_CONF = f"{KEEPALIVED_DIR}/keepalived.conf"
KEEPALIVED_ADVERT = {FAST: 0.1, DEFAULTS: 1.0}
KEEPALIVED_PRIORITY = {"vm01": 150, "vm02": 100}
VRID = 51
VRRP_PROTO = 112


def keepalived_config(node: str, me: str, peer: str, priority: int, advert_int: float,
                      profile: str) -> str:
    """keepalived.conf of one VM. Set: what a unicast VRRPv3 pair needs (interface,
    router id, priority, unicast addresses, the VIP) and ``advert_int``; everything
    else at keepalived's defaults: ``preempt`` (the higher priority takes the VIP back),
    5 gratuitous ARPs at once on becoming master and 5 more 5 s later
    (``garp_master_repeat``/``garp_master_delay``: the first burst is what the client
    sees), no ``max_auto_priority`` (real-time scheduling) and no authentication
    (VRRPv3 has none). ``state BACKUP`` on both: the priorities elect vm01."""
    return f"""\
# generated by guardian.lab.bench_failover for {node}, profile {profile}
global_defs {{
    router_id {node}
}}

vrrp_instance web {{
    state BACKUP
    interface {IFACE}
    virtual_router_id {VRID}
    version 3
    priority {priority}
    advert_int {advert_int:g}
    unicast_src_ip {me}
    unicast_peer {{
        {peer}
    }}
    virtual_ipaddress {{
        {VIP_CIDR} dev {IFACE}
    }}
}}
"""


def vrrp_master_down(advert: float, priority: int) -> float:
    """RFC 5798: Master_Down_Interval = 3 x advert + (256 - priority) / 256 x advert."""
    return 3 * advert + (256 - priority) / 256 * advert


class KeepalivedSystem:
    """Debian's keepalived in each VM: ``keepalived -n -l -D -G -P`` (foreground, log to
    the console, detailed, no syslog, VRRP only) on a configuration in the VM's /run,
    with its pid files there, started through ``VM.popen`` (so it lives in the VM's
    namespaces) and its output in the VM's lab directory (keepalived-PROFILE.out)."""

    name = KEEPALIVED

    def __init__(self) -> None:
        self.pair: Pair | None = None
        self.profile = FAST
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._configs: dict[str, str] = {}
        self.version = "keepalived"

    @property
    def advert(self) -> float:
        return KEEPALIVED_ADVERT[self.profile]

    def _pair(self) -> Pair:
        if self.pair is None:
            raise LabError("keepalived: not set up")
        return self.pair

    def log_path(self, vm: VM) -> Path:
        return vm.vmdir / f"keepalived-{self.profile}.out"

    def setup(self, pair: Pair, profile: str) -> None:
        self.pair, self.profile = pair, profile
        self._configs = {}
        try:
            for vm in pair.vms:
                peer = pair.other(vm)
                conf = keepalived_config(vm.name, vm.ip, peer.ip, KEEPALIVED_PRIORITY[vm.name],
                                         self.advert, profile)
                self._configs[vm.name] = conf
                vm.run(["mkdir", "-p", "-m", "0700", KEEPALIVED_DIR])
                vm.write_file(KEEPALIVED_CONF, conf, mode=0o600)
                test = vm.run(["keepalived", "-t", "-f", KEEPALIVED_CONF], check=False)
                if test.returncode != 0:
                    raise LabError(f"keepalived -t in {vm.name}: exit {test.returncode}: "
                                   f"{(test.stderr + test.stdout).strip()[-1000:]}")
            ver = pair.vm01.run(["keepalived", "--version"], check=False)
            m = re.search(r"v(\d+(\.\d+)+)", ver.stderr + ver.stdout)  # it prints to stderr
            self.version = f"keepalived {m.group(1)}" if m else "keepalived"
            for vm in pair.vms:
                with open(self.log_path(vm), "ab") as out:
                    self.procs[vm.name] = vm.popen(
                        ["keepalived", "-n", "-l", "-D", "-G", "-P", "-f", KEEPALIVED_CONF,
                         "-p", f"{KEEPALIVED_DIR}/keepalived.pid",
                         "-r", f"{KEEPALIVED_DIR}/vrrp.pid"],
                        stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                        start_new_session=True)
        except BaseException:
            self.teardown()
            raise

    def settings(self) -> str:
        adv = self.advert
        down = vrrp_master_down(adv, KEEPALIVED_PRIORITY["vm02"])
        return (
            f"{self.version} (Debian), VRRPv3, unicast adverts between the VMs' addresses, "
            f"advert_int {adv:g} s, priority vm01 150 / vm02 100, state BACKUP on both, "
            f"preempt (keepalived's default), GARP defaults (5 at once on becoming master, "
            f"5 more after 5 s), no max_auto_priority, no authentication; run as "
            f"'keepalived -n -l -D -G -P' in each VM's namespaces. Backup (100) declares "
            f"the master down after {down:.3f} s of silence (3 adverts + skew)")

    def configs(self) -> dict[str, str]:
        return dict(self._configs)

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                pair = self._pair()
                vm = pair.vm01 if name == "vm01" else pair.vm02
                raise LabError(f"keepalived in {name} exited {proc.returncode}: "
                               f"{self.log(vm)[-1500:]}")

    def wait_stable(self, timeout: float = SETTLE_TIMEOUT) -> VM:
        # preempt: vm01 (150) ends up master; hold long enough for the backup to have
        # heard several adverts of the settled master.
        pair = self._pair()
        return pair.wait_stable(hold=max(1.0, 2 * self.advert), check=self.check,
                                expected=pair.vm01, timeout=timeout)

    def holder(self) -> VM | None:
        return self._pair().holder()

    def heartbeat_match(self) -> str:
        return f"ip protocol {VRRP_PROTO}"

    def log(self, vm: VM) -> str:
        try:
            return self.log_path(vm).read_text(errors="replace")
        except OSError:
            return ""

    def master_transitions(self, vm: VM) -> int | None:
        """"Entering MASTER STATE" lines in ``vm``'s keepalived log so far."""
        return self.log(vm).count("Entering MASTER STATE")

    def expected_false_failovers(self, heartbeats: int, loss: float) -> float | None:
        """What VRRP's rule predicts: the backup takes over after ``k`` adverts in a row
        are lost, k = floor(master down interval / advert) (3 for priority 100), so
        about heartbeats x (1 - loss) x loss^k times (each run of k losses counted
        once)."""
        k = int(vrrp_master_down(1.0, KEEPALIVED_PRIORITY["vm02"]))
        return heartbeats * (1 - loss) * loss ** k

    def teardown(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()  # keepalived removes its VIPs on SIGTERM
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs = {}
        if self.pair is not None:
            for vm in self.pair.vms:  # a VIP left behind would spoil the next system
                if vm.running:
                    vm.ip_cmd("addr", "del", VIP_CIDR, "dev", IFACE, check=False)


# -------------------------------- guardian
GUARDIAN_PRIORITY = {"vm01": 150, "vm02": 100}
GUARDIAN_KEY_FILE = "/etc/guardian/failover.key"
GUARDIAN_PORT = 694
GROUP = "web"


def guardian_unavailable_reason() -> str | None:
    """None if guardian's failover engine can run; otherwise why not."""
    try:
        importlib.import_module("ipfailover._engine")
    except ImportError as exc:
        return f"{GUARDIAN_UNAVAILABLE} ({type(exc).__name__}: {exc})"
    from guardian._model import GuardianSpec

    if "failover" not in {f.name for f in dataclasses.fields(GuardianSpec)}:
        return f"{GUARDIAN_UNAVAILABLE} (guardian's config has no [failover] section)"
    return None


def guardian_config(node: str, peer: str, me: str, peer_ip: str, priority: int, profile: str,
                    *, cold: bool = False) -> str:
    """guardian.toml of one VM: apache2 supervised through supervisord, and the
    failover group ``web`` (the VIP on eth0, one unicast path between the VMs).
    Profile ``100ms`` spells out the interval; ``defaults`` leaves it (100 ms too).
    ``cold``: apache2 is tracked (its failure fails the VIP over: ladder
    ["failover"] after one restart) and started on takeover (cold standby)."""
    interval = 'interval = "100ms"\n' if profile == FAST else ""
    ladder = '["failover"]' if cold else '["alert"]'
    budget = 1 if cold else 1000
    tracked = 'services = ["apache2"]\ncold = ["apache2"]\n' if cold else ""
    return f"""\
# generated by guardian.lab.bench_failover for {node}, profile {profile}
[guardian]
control_socket = "/run/guardian/control.sock"
state_dir = "/var/lib/guardian"
log_level = "info"

[backends.supervisord]
url = "unix:///run/supervisor.sock"

[services.apache2]
backend = "supervisord"
unit = "apache2"
rise = 1
fall = 1
start_grace = "5s"
ladder = {ladder}

[services.apache2.restart]
budget = {budget}
window = "1h"
backoff = "100ms"
backoff_max = "1s"

[[services.apache2.checks]]
type = "http"
url = "http://127.0.0.1/"
expect_status = [200]
interval = "200ms"
timeout = "200ms"

[failover]
node = "{node}"
key_file = "{GUARDIAN_KEY_FILE}"
port = {GUARDIAN_PORT}

[failover.groups.{GROUP}]
peer = "{peer}"
priority = {priority}
interface = "{IFACE}"
vips = ["{VIP_CIDR}"]
paths = [{{ local = "{me}", peer = "{peer_ip}" }}]
{interval}{tracked}"""


class GuardianSystem:
    """guardiand in each VM (``guardian.lab.Guardiand``) with a ``[failover]`` group;
    the key file is made fresh for every setup (one key, mode 0600)."""

    name = GUARDIAN

    def __init__(self) -> None:
        self.pair: Pair | None = None
        self.profile = FAST
        self.cold = False
        self.daemons: dict[str, Any] = {}
        self._configs: dict[str, str] = {}

    def _pair(self) -> Pair:
        if self.pair is None:
            raise LabError("guardian: not set up")
        return self.pair

    def setup(self, pair: Pair, profile: str, *, cold: bool = False) -> None:
        reason = guardian_unavailable_reason()
        if reason is not None:
            raise SystemUnavailable(reason)
        from ._guardian import Guardiand

        self.pair, self.profile, self.cold = pair, profile, cold
        key = os.urandom(32).hex()
        try:
            for vm in pair.vms:
                peer = pair.other(vm)
                conf = guardian_config(vm.name, peer.name, vm.ip, peer.ip,
                                       GUARDIAN_PRIORITY[vm.name], profile, cold=cold)
                self._configs[vm.name] = conf
                vm.run(["mkdir", "-p", os.path.dirname(GUARDIAN_KEY_FILE)])
                vm.write_file(GUARDIAN_KEY_FILE, f"1 {key} send\n", mode=0o600)
            for vm in pair.vms:  # the backup stops its cold apache2 by itself
                self.daemons[vm.name] = Guardiand(vm, self._configs[vm.name]).start()
        except BaseException:
            self.teardown()
            raise

    def settings(self) -> str:
        interval = "interval 100 ms" + (" (spelled out)" if self.profile == FAST
                                        else " (the default)")
        extra = ("; apache2 tracked (ladder: 1 restart, then failover; http check every "
                 "200 ms, fall 1) and cold on the standby; after each run the failed VM is "
                 "repaired as an operator would: apache2's config fixed, guardiand restarted"
                 if self.cold else "")
        return (f"guardiand, group {GROUP}: one unicast UDP path (port {GUARDIAN_PORT}) "
                f"between the VMs' addresses, {interval}, priority vm01 150 / vm02 100, "
                f"everything else at guardian's defaults (preempt off, lease 3 s, "
                f"suspicion + probes){extra}")

    def configs(self) -> dict[str, str]:
        return dict(self._configs)

    def check(self) -> None:
        for name, g in self.daemons.items():
            if not g.running():
                raise LabError(f"guardiand in {name} exited: {g.log()[-1500:]}")

    def group(self, vm: VM) -> dict[str, Any]:
        """The failover group's entry of ``guardian status`` in ``vm``."""
        groups = self.daemon(vm).status().get("failover") or []
        for g in groups:
            if g.get("group") == GROUP:
                return dict(g)
        raise LabError(f"guardiand in {vm.name}: no failover group {GROUP!r} in its status")

    def ready(self, holder: VM) -> str | None:
        """None once the holder is master and the other VM a backup that hears it (and,
        with a cold standby, has apache2 stopped while the holder's is up)."""
        pair = self._pair()
        other = pair.other(holder)
        gh, go = self.group(holder), self.group(other)
        if gh.get("state") != "master" or go.get("state") != "backup":
            return f"group states {holder.name} {gh.get('state')}, {other.name} {go.get('state')}"
        peer = go.get("peer") or {}
        if not peer.get("alive") or peer.get("state") != "master":
            return f"{other.name} does not hear {holder.name} as a live master yet"
        if self.cold:
            if other.pid("apache2") is not None:
                return f"apache2 still runs on the standby {other.name}"
            svc = self.daemon(holder).service("apache2")
            if svc.get("state") != "up":
                return f"apache2 on {holder.name} is {svc.get('state')}"
        return None

    def wait_stable(self, timeout: float = SETTLE_TIMEOUT) -> VM:
        # No preempt by default: whoever holds the VIP keeps it.
        return self._pair().wait_stable(hold=1.0, check=self.check, timeout=timeout,
                                        ready=self.ready)

    def holder(self) -> VM | None:
        return self._pair().holder()

    def heartbeat_match(self) -> str:
        return f"udp dport {GUARDIAN_PORT}"

    def master_transitions(self, vm: VM) -> int | None:
        return None

    def expected_false_failovers(self, heartbeats: int, loss: float) -> float | None:
        return None  # see ipfailover._machine's docstring: ~1e-7 per minute at 10 %

    def daemon(self, vm: VM) -> Any:
        return self.daemons[vm.name]

    def repair(self, vm: VM) -> None:
        """The operator's repair after a failed tracked cold service: restart guardiand
        (the config is fixed first). A node whose tracked *cold* service failed stays
        FAULT: the service was stopped with the release, so it never comes up again by
        itself, and the node never becomes a backup again without this."""
        g = self.daemon(vm)
        g.stop()
        g.start()

    def switchover(self, vm: VM) -> None:
        """``guardian switchover GROUP`` on ``vm``."""
        proc = self.daemon(vm).cli("switchover", GROUP)
        if proc.returncode != 0:
            raise LabError(f"guardian switchover on {vm.name}: exit {proc.returncode}: "
                           f"{(proc.stderr + proc.stdout).strip()[-500:]}")

    def teardown(self) -> None:
        errors = []
        for name, g in self.daemons.items():
            try:
                g.stop()
            except LabError as exc:
                errors.append(f"{name}: {exc}")
        self.daemons = {}
        if self.pair is not None:
            for vm in self.pair.vms:
                if vm.running:
                    vm.ip_cmd("addr", "del", VIP_CIDR, "dev", IFACE, check=False)
        if errors:
            raise LabError("guardiand did not stop: " + "; ".join(errors))


def make_system(name: str) -> System:
    if name == KEEPALIVED:
        return KeepalivedSystem()
    if name == GUARDIAN:
        return GuardianSystem()
    raise ValueError(f"unknown system {name!r}")


# ---------------------------------------------------------------- results
def scenario_name(scenario: str, profile: str | None) -> str:
    return scenario if profile is None else f"{scenario}-{profile}"


@dataclasses.dataclass
class Result:
    """The runs of one system in one scenario (and profile)."""

    scenario: str
    profile: str | None
    system: str
    settings: str = ""
    samples: list[float] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    #: per successful run: seconds until the standby held the VIP
    vip_samples: list[float] = dataclasses.field(default_factory=list)
    #: per run: how long the cut-off VM kept the VIP; both held it after the rejoin
    cut_off_hold: list[float] = dataclasses.field(default_factory=list)
    rejoin_overlap: list[float] = dataclasses.field(default_factory=list)
    takeovers: list[str] = dataclasses.field(default_factory=list)
    configs: dict[str, str] = dataclasses.field(default_factory=dict)
    note: str = ""
    broken: bool = False
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return scenario_name(self.scenario, self.profile)

    def add(self, t: Takeover) -> None:
        if t.took is None:
            self.failures.append(f"{t.why} ({t.path})")
        else:
            self.samples.append(t.took)
            if t.vip is not None:
                self.vip_samples.append(t.vip)
        if t.cut_off_hold is not None:
            self.cut_off_hold.append(t.cut_off_hold)
        if t.rejoin_overlap is not None:
            self.rejoin_overlap.append(t.rejoin_overlap)
        self.takeovers.append(t.path)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def record(self, baseline: Result | None = None) -> dict[str, Any]:
        s = self.samples
        rec: dict[str, Any] = {
            "scenario": self.name,
            "system": self.system,
            "runs": len(s),
            "median_s": _round(self.median),
            "max_s": _round(max(s) if s else None),
            "min_s": _round(min(s) if s else None),
            "attempts": len(s) + len(self.failures),
            "samples": [_round(x) for x in s],
            "failures": len(self.failures),
            "failure_reasons": list(self.failures),
            "profile": self.profile,
            "settings": self.settings,
        }
        if self.scenario != FALSE_FAILOVERS:
            rec["vip_on_standby_median_s"] = _round(
                statistics.median(self.vip_samples) if self.vip_samples else None)
            rec["vip_on_standby_samples"] = [_round(x) for x in self.vip_samples]
        if self.scenario == VM_DIES:
            rec["cut_off_vm_kept_vip_max_s"] = _round(max(self.cut_off_hold, default=None))
            rec["split_brain_after_rejoin_max_s"] = _round(
                max(self.rejoin_overlap, default=None))
            rec["split_brain_after_rejoin_samples"] = [_round(x) for x in self.rejoin_overlap]
            rec["takeovers"] = list(self.takeovers)
        rec.update(self.extra)
        if baseline is not None and baseline.median and self.median is not None:
            rec["ratio_vs_guardian"] = round(self.median / baseline.median, 2)
        if self.configs:
            rec["configs"] = dict(self.configs)
        if self.note:
            rec["note"] = self.note
        return rec


# ---------------------------------------------------------------- scenarios
@dataclasses.dataclass(frozen=True)
class Takeover:
    """One clocked run: the client's figure (or why it failed) and the VM-side ones."""

    took: float | None
    why: str
    #: fault -> the standby held the VIP (netlink event in the standby)
    vip: float | None
    #: vm-dies: how long the cut-off VM kept the VIP while cut off
    cut_off_hold: float | None
    #: vm-dies: how long both VMs held the VIP after the link came back
    rejoin_overlap: float | None
    path: str


class NoRecovery(LabError):
    """A run was clocked, but the pair did not settle afterwards: the run counts, the
    remaining ones are left out."""

    def __init__(self, takeover: Takeover, cause: BaseException) -> None:
        self.takeover = takeover
        super().__init__(f"no recovery after the run: {_first(cause)}")


def _settle(system: System, t: Takeover) -> VM:
    try:
        return system.wait_stable()
    except SYSTEM_ERRORS as exc:
        raise NoRecovery(t, exc) from exc


def _accept_from(standby: VM) -> Callable[[HttpResponse], str | None]:
    def accept(resp: HttpResponse) -> str | None:
        who = served_by(resp)
        return None if who == standby.name else f"served by {who}"
    return accept


def one_vm_death(system: System, pair: Pair, *, timeout: float,
                 rng: random.Random) -> Takeover:
    """Cut the active VM off the LAN, clock the client's way to the standby, bring the
    link back and let the pair settle."""
    active = system.wait_stable()
    standby = pair.other(active)
    time.sleep(rng.uniform(0.0, PHASE_JITTER))
    if pair.holder() is not active:
        raise LabError(f"the VIP left {active.name} by itself before the fault")
    t_kill = [0.0]

    def kill() -> None:
        t_kill[0] = time.monotonic()
        active.link_down()

    took: float | None = None
    why = "not run"
    try:
        took, why = pair.clock.measure(VIP, kill, lambda: True, timeout,
                                       accept=_accept_from(standby))
        if took is not None:
            time.sleep(CUT_HOLD)
    finally:
        t_up = time.monotonic()
        active.link_up()
    wa, ws = pair.watchers[active.name], pair.watchers[standby.name]
    rises = ws.rises(t_kill[0], t_up)
    vip = rises[0] - t_kill[0] if rises else None
    cut_off = total(wa.intervals(t_kill[0], t_up))
    path = f"{active.name}->{standby.name}"
    settled = _settle(system, Takeover(took, why, vip, cut_off, None, path))
    t_end = time.monotonic()
    return Takeover(took, why, vip, cut_off,
                    overlap(wa.intervals(t_up, t_end), ws.intervals(t_up, t_end)),
                    f"{path}, settled on {settled.name}")


def _in_background(fn: Callable[[], None]) -> tuple[Callable[[], None], Callable[[], str]]:
    """``start`` runs ``fn`` in a thread (so the outage clock's workers start at once);
    ``error`` joins it and says what it raised ("" if nothing)."""
    errors: list[str] = []
    thread = threading.Thread(target=lambda: _catch(fn, errors), daemon=True)

    def error() -> str:
        thread.join(timeout=30)
        return errors[0] if errors else ("still running after 30 s" if thread.is_alive() else "")
    return thread.start, error


def _catch(fn: Callable[[], None], errors: list[str]) -> None:
    try:
        fn()
    except SYSTEM_ERRORS as exc:
        errors.append(_first(exc))


def one_switchover(system: GuardianSystem, pair: Pair, *, timeout: float,
                   rng: random.Random) -> Takeover:
    """``guardian switchover`` on the active VM -> first 200 from the standby."""
    active = system.wait_stable()
    standby = pair.other(active)
    time.sleep(rng.uniform(0.0, PHASE_JITTER))
    start, error = _in_background(functools.partial(system.switchover, active))
    t0 = time.monotonic()
    took, why = pair.clock.measure(VIP, start, lambda: True, timeout,
                                   accept=_accept_from(standby))
    failed = error()
    if failed:
        took, why = None, f"the command failed: {failed}"
    return _finish(system, pair, active, t0, took, why)


def _finish(system: System, pair: Pair, active: VM, t0: float, took: float | None,
            why: str) -> Takeover:
    """Let the pair settle after a run clocked from ``t0``; the run's Takeover."""
    standby = pair.other(active)
    rises = pair.watchers[standby.name].rises(t0, time.monotonic())
    vip = rises[0] - t0 if rises else None
    path = f"{active.name}->{standby.name}"
    settled = _settle(system, Takeover(took, why, vip, None, None, path))
    return Takeover(took, why, vip, None, None, f"{path}, settled on {settled.name}")


def one_service_failure(system: GuardianSystem, pair: Pair, *, timeout: float,
                        rng: random.Random) -> Takeover:
    """apache2 fails for good on the active VM (broken config, then SIGKILL of its
    group) -> first 200 from the standby, which starts its cold apache2 first."""
    active = system.wait_stable()
    standby = pair.other(active)
    pid = active.pid("apache2")
    if pid is None:
        raise LabError(f"apache2 is not running on the active {active.name}")
    if standby.pid("apache2") is not None:
        raise LabError(f"apache2 runs on the standby {standby.name}: it is not cold")
    time.sleep(rng.uniform(0.0, PHASE_JITTER))
    active.break_apache_config()
    t0 = time.monotonic()
    try:
        took, why = pair.clock.measure(VIP, lambda: os.killpg(pid, signal.SIGKILL),
                                       lambda: True, timeout, accept=_accept_from(standby))
    finally:
        active.fix_apache_config()
    if took is not None:
        time.sleep(CUT_HOLD)
    system.repair(active)
    return _finish(system, pair, active, t0, took, why)


def _clocked_runs(result: Result, runs: int, one: Callable[[], Takeover], log: Log) -> None:
    for i in range(runs):
        try:
            t = one()
        except SYSTEM_ERRORS as exc:
            if isinstance(exc, NoRecovery):
                result.add(exc.takeover)
            why = f"run {i + 1}: no recovery, {runs - i - 1} run(s) left out: {_first(exc)}"
            result.failures.append(why)
            result.broken = True
            log(f"  {result.name} {result.system} run {i + 1}/{runs}: ABORTED: {why}")
            return
        result.add(t)
        extra = "" if t.rejoin_overlap is None else \
            f"; both held the VIP after the rejoin {t.rejoin_overlap:.3f} s"
        head = f"  {result.name} {result.system} run {i + 1}/{runs}: "
        if t.took is None:
            log(f"{head}FAILED: {t.why} ({t.path})")
        else:
            log(f"{head}{t.took:.3f} s (VIP on the standby after {_fmt_s(t.vip)}; "
                f"{t.path}{extra})")


def run_takeovers(system: System, pair: Pair, scenario: str, profile: str | None, runs: int,
                  *, timeout: float, rng: random.Random, log: Log) -> Result:
    """``runs`` clocked takeovers of one scenario on a freshly set up ``system``."""
    result = Result(scenario, profile, system.name)
    if scenario == VM_DIES:
        assert profile is not None
        system.setup(pair, profile)
    elif isinstance(system, GuardianSystem):
        system.setup(pair, DEFAULTS, cold=scenario == SERVICE_COLD)
    else:
        raise LabError(f"{system.name} has no scenario {scenario}")
    try:
        result.settings, result.configs = system.settings(), system.configs()
        if scenario == VM_DIES:
            one = functools.partial(one_vm_death, system, pair, timeout=timeout, rng=rng)
        elif scenario == SWITCHOVER and isinstance(system, GuardianSystem):
            one = functools.partial(one_switchover, system, pair, timeout=timeout, rng=rng)
        elif scenario == SERVICE_COLD and isinstance(system, GuardianSystem):
            one = functools.partial(one_service_failure, system, pair, timeout=timeout, rng=rng)
        else:
            raise LabError(f"{system.name} has no scenario {scenario}")
        _clocked_runs(result, runs, one, log)
    finally:
        system.teardown()
    return result


# -------------------------------- random loss, no failure
def loss_table(table: str, match: str, percent: int) -> str:
    """The nftables table that drops ``percent`` % of the heartbeats both ways (in the
    backup's namespace), counting what it saw and what it dropped."""
    def chain(name: str) -> str:
        return (f"    chain {name} {{\n"
                f"        type filter hook {name} priority 0; policy accept;\n"
                f"        {match} counter\n"
                f"        {match} numgen random mod 100 < {percent} counter drop\n"
                f"    }}\n")
    return f"table inet {table} {{\n{chain('input')}{chain('output')}}}\n"


def loss_counters(host: Host, table: str) -> dict[str, int]:
    """``{"to_backup", "dropped_to_backup", "from_backup", "dropped_from_backup"}``
    packets from the loss table's counters."""
    data = json.loads(host.run(["nft", "-j", "list", "table", "inet", table]).stdout)
    counts: dict[str, list[int]] = {"input": [], "output": []}
    for item in data.get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        for expr in rule.get("expr", []):
            if "counter" in expr:
                counts[rule["chain"]].append(int(expr["counter"]["packets"]))
    if len(counts["input"]) != 2 or len(counts["output"]) != 2:
        raise LabError(f"nft table {table}: unexpected rules {counts}")
    return {"to_backup": counts["input"][0], "dropped_to_backup": counts["input"][1],
            "from_backup": counts["output"][0], "dropped_from_backup": counts["output"][1]}


def run_false_failovers(system: System, pair: Pair, profile: str, *, seconds: float,
                        percent: int, log: Log) -> Result:
    """``seconds`` of ``percent`` % random heartbeat loss at the backup, no failure:
    count how often the VIP appears where it was not."""
    result = Result(FALSE_FAILOVERS, profile, system.name)
    system.setup(pair, profile)
    try:
        result.settings, result.configs = system.settings(), system.configs()
        master = system.wait_stable()
        backup = pair.other(master)
        table = f"guardianbench_{pair.lab.id}"
        backup.run(["nft", "-f", "-"], input=loss_table(table, system.heartbeat_match(),
                                                         percent))
        try:
            before = {vm.name: system.master_transitions(vm) for vm in pair.vms}
            t0 = time.monotonic()
            log(f"  {result.name} {system.name}: {seconds:g} s of {percent}% loss at "
                f"{backup.name} (master {master.name})")
            deadline = t0 + seconds
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(left, 1.0))
                system.check()
            t1 = time.monotonic()
            after = {vm.name: system.master_transitions(vm) for vm in pair.vms}
            counters = loss_counters(backup, table)
        finally:
            backup.run(["nft", "delete", "table", "inet", table], check=False)
        wm, wb = pair.watchers[master.name], pair.watchers[backup.name]
        rises = sorted(wb.rises(t0, t1) + wm.rises(t0, t1))
        backup_spans = wb.intervals(t0, t1)
        seen, dropped = counters["to_backup"], counters["dropped_to_backup"]
        seen_out, dropped_out = counters["from_backup"], counters["dropped_from_backup"]
        expected = system.expected_false_failovers(seen, percent / 100.0)
        transitions: int | None = None
        if all(before[k] is not None and after[k] is not None for k in before):
            transitions = sum(int(after[k] or 0) - int(before[k] or 0) for k in before)
        result.extra = {
            "runs": 1,
            "attempts": 1,
            "false_failovers": len(rises),
            "expected_false_failovers": None if expected is None else round(expected, 3),
            "false_failover_at_s": [_round(t - t0) for t in rises],
            "seconds": round(t1 - t0, 3),
            "loss_percent": percent,
            "loss": "random, both directions, nftables in the backup's network namespace",
            "master": master.name,
            "backup": backup.name,
            "backup_held_vip_s": _round(total(backup_spans)),
            "backup_episodes_s": [_round(b - a) for a, b in backup_spans],
            "split_brain_s": _round(overlap(wm.intervals(t0, t1), backup_spans)),
            "master_without_vip_s": _round((t1 - t0) - total(wm.intervals(t0, t1))),
            "heartbeats_to_backup": seen,
            "dropped_to_backup": dropped,
            "heartbeats_from_backup": seen_out,
            "dropped_from_backup": dropped_out,
            "measured_loss_percent": _round(100.0 * dropped / seen if seen else None),
            "log_master_transitions": transitions,
        }
        log(f"  {result.name} {system.name}: {len(rises)} false failover(s); "
            f"{dropped}/{seen} heartbeats to the backup dropped, {dropped_out}/{seen_out} "
            "from it")
        try:
            system.wait_stable()
        except SYSTEM_ERRORS as exc:
            result.failures.append(f"no stable pair after the loss window: {_first(exc)}")
    finally:
        system.teardown()
    return result


# ---------------------------------------------------------------- running
def _check_pages(pair: Pair) -> None:
    """Each VM's page says which VM it is, through its own address (from the client)."""
    for vm in pair.vms:
        resp = pair.client.http_get(vm.ip, timeout=2.0)
        if resp.status != 200 or served_by(resp) != vm.name:
            raise LabError(f"{vm.name}'s page does not identify it: HTTP {resp.status} "
                           f"{resp.body[:100]!r}")


@contextmanager
def lab_pair(lab: Lab) -> Iterator[Pair]:
    """client + vm01 + vm02 (apache2 only, no autorestart) in ``lab``, VIP watchers,
    the outage clock; stopped (not the lab) on exit."""
    with ExitStack() as stack:
        client = lab.host("client", CLIENT_IP)
        vm01 = lab.vm("vm01", VM01_IP, services=("apache2",), autorestart=False, startsecs=0,
                      boot=False)
        vm02 = lab.vm("vm02", VM02_IP, services=("apache2",), autorestart=False, startsecs=0,
                      boot=False)
        lab.boot(timeout=30)
        watchers: dict[str, VipWatcher] = {}
        for vm in (vm01, vm02):
            w = VipWatcher(vm)
            stack.callback(w.close)
            watchers[vm.name] = w.start()
        clock = OutageClock(client, workers=POLL_WORKERS, gap=POLL_GAP,
                            request_timeout=POLL_TIMEOUT, stagger=POLL_STAGGER)
        stack.callback(clock.close)
        pair = Pair(lab, client, vm01, vm02, watchers, clock)
        _check_pages(pair)
        yield pair


def _plan(systems: Sequence[str], scenarios: Sequence[str],
          profiles: Sequence[str]) -> list[tuple[str, str, str | None]]:
    """(system, scenario, profile) in running order."""
    out: list[tuple[str, str, str | None]] = []
    for name in systems:
        for sc in scenarios:
            if sc in GUARDIAN_ONLY:
                if name == GUARDIAN:
                    out.append((name, sc, None))
                continue
            out += [(name, sc, p) for p in profiles]
    return out


def run_benchmark(
    runs: int = 10,
    *,
    systems: Sequence[str] = SYSTEMS,
    scenarios: Sequence[str] = SCENARIOS,
    profiles: Sequence[str] = PROFILES,
    loss_seconds: float = 60.0,
    loss_percent: int = 10,
    run_timeout: float = 30.0,
    seed: int | None = None,
    log: Log = _stderr,
) -> list[dict[str, Any]]:
    """Run the benchmark in a fresh lab; returns the JSON records (see the module doc)."""
    if runs < 1:
        raise ValueError("runs must be >= 1")
    if loss_seconds <= 0 or not 1 <= loss_percent <= 99:
        raise ValueError("loss_seconds must be > 0 and loss_percent in 1..99")
    for items, known, what in ((systems, SYSTEMS, "system"), (scenarios, SCENARIOS, "scenario"),
                               (profiles, PROFILES, "profile")):
        for x in items:
            if x not in known:
                raise ValueError(f"unknown {what} {x!r}; known: {', '.join(known)}")
    rng = random.Random(seed)
    results: dict[tuple[str, str | None, str], Result] = {}
    with Lab() as lab, lab_pair(lab) as pair:
        log(f"lab {lab.id}: {runs} run(s) per system, scenario and profile")
        for name, sc, prof in _plan(systems, scenarios, profiles):
            key = (sc, prof, name)
            reason = guardian_unavailable_reason() if name == GUARDIAN else None
            if reason is not None:
                results[key] = Result(sc, prof, name, note=reason)
                continue
            label = scenario_name(sc, prof)
            log(f"{name}: {label}")
            system = make_system(name)
            try:
                if sc == FALSE_FAILOVERS:
                    assert prof is not None
                    results[key] = run_false_failovers(system, pair, prof, seconds=loss_seconds,
                                                       percent=loss_percent, log=log)
                else:
                    results[key] = run_takeovers(system, pair, sc, prof, runs,
                                                 timeout=run_timeout, rng=rng, log=log)
            except SystemUnavailable as exc:
                results[key] = Result(sc, prof, name, note=str(exc))
            except SYSTEM_ERRORS as exc:
                log(f"{name}: {label}: {exc}")
                results[key] = Result(sc, prof, name,
                                      failures=[f"not run: could not be set up: {_first(exc)}"])
        for w in pair.watchers.values():
            why = w.check()
            if why:
                log(f"VIP watcher inconsistent: {why}")
    records: list[dict[str, Any]] = []
    for sc in SCENARIOS:
        for prof in [None] if sc in GUARDIAN_ONLY else list(PROFILES):
            base = results.get((sc, prof, GUARDIAN))
            for name in SYSTEMS:
                r = results.get((sc, prof, name))
                if r is not None:
                    records.append(r.record(base if name != GUARDIAN else None))
    return records


# ---------------------------------------------------------------- reporting
SCENARIO_TITLES = {
    VM_DIES: "the active VM's link goes down -> the client's first HTTP 200 from the standby",
    FALSE_FAILOVERS: "random loss of the heartbeats, no failure: how often the VIP moves",
    SERVICE_COLD: "apache2 fails for good on the active VM -> first HTTP 200 from the "
                  "standby, which starts its cold apache2",
    SWITCHOVER: "guardian switchover -> first HTTP 200 from the standby",
}


def _title(rec: dict[str, Any]) -> str:
    base = next(s for s in SCENARIOS if rec["scenario"].startswith(s))
    prof = rec.get("profile")
    head = f"{rec['scenario']}: {SCENARIO_TITLES[base]}"
    return head + (f" ({PROFILE_TITLES[prof]})" if prof else "")


def _base(rec: dict[str, Any]) -> str:
    return next(s for s in SCENARIOS if rec["scenario"].startswith(s))


def format_report(records: Sequence[dict[str, Any]]) -> str:
    """The table printed at the end: per scenario (and profile) per system the
    median/max/min and the ratio keepalived/guardian, the false failovers, the
    settings and configurations, the goals."""
    lines: list[str] = []
    order: list[str] = []
    for r in records:
        if r["scenario"] not in order:
            order.append(r["scenario"])
    for sc in order:
        rows = [r for r in records if r["scenario"] == sc]
        lines.append(_title(rows[0]))
        if _base(rows[0]) == FALSE_FAILOVERS:
            lines += _loss_rows(rows)
        else:
            lines += _takeover_rows(rows)
        lines.append("")
    lines.append("settings:")
    groups: dict[tuple[str, str], list[str]] = {}
    for r in records:
        if r.get("settings"):
            groups.setdefault((r["system"], r["settings"]), []).append(r["scenario"])
    for (name, text), scs in groups.items():
        lines += _wrap(f"{name} ({', '.join(scs)}): {text}")
    for r in records:
        for why in r.get("failure_reasons", []):
            lines += _wrap(f"FAILED run: {r['scenario']} {r['system']}: {why}")
    lines += _configs(records)
    lines.append("")
    lines += _goals(records)
    return "\n".join(lines)


def _configs(records: Sequence[dict[str, Any]]) -> list[str]:
    """vm01's configuration of each system: the first in full, the others as the
    lines that differ from it (vm02's differ in priority and addresses only)."""
    lines: list[str] = []
    first: dict[str, str] = {}
    users: dict[tuple[str, str], list[str]] = {}
    for r in records:
        text = r.get("configs", {}).get("vm01")
        if text:
            users.setdefault((r["system"], text), []).append(r["scenario"])
    for (name, text), scs in users.items():
        body = [line for line in text.rstrip().splitlines() if not line.startswith("# gen")]
        if name not in first:
            first[name] = text
            lines.append(f"configuration of {name} in vm01 ({', '.join(scs)}; vm02: "
                         "priority 100, its own address and the peer's swapped):")
            lines += ["    " + line for line in body]
        else:
            base = [line for line in first[name].rstrip().splitlines()
                    if not line.startswith("# gen")]
            diff = [d for d in difflib.ndiff(base, body) if d[:2] in ("- ", "+ ")]
            lines.append(f"configuration of {name} in vm01 ({', '.join(scs)}): as above, but")
            lines += ["    " + d for d in diff]
    return lines


def _takeover_rows(rows: Sequence[dict[str, Any]]) -> list[str]:
    out = [f"  {'system':<11} {'runs':>5} {'median':>9} {'max':>9} {'min':>9} "
           f"{'VIP moved':>10} {'both held':>10}  ratio"]
    for r in rows:
        if r.get("note"):
            out.append(f"  {r['system']:<11} {'n/a':>5}  {r['note']}")
            continue
        ratio = r.get("ratio_vs_guardian")
        rtxt = "" if r["system"] == GUARDIAN else (
            f"keepalived/guardian = {ratio:.2f}x" if isinstance(ratio, float)
            else "keepalived/guardian = n/a")
        both = r.get("split_brain_after_rejoin_max_s")
        out.append(f"  {r['system']:<11} {r['runs']:>2}/{r['attempts']:<2} "
                   f"{_fmt_s(r['median_s']):>9} {_fmt_s(r['max_s']):>9} "
                   f"{_fmt_s(r['min_s']):>9} {_fmt_s(r.get('vip_on_standby_median_s')):>10} "
                   f"{_fmt_s(both):>10}  {rtxt}")
    out.append("  (VIP moved: median fault -> the standby holds the VIP, from its netlink "
               "events; both held: longest split brain after the link came back)"
               if any(_base(r) == VM_DIES for r in rows) else
               "  (VIP moved: median fault -> the standby holds the VIP)")
    return out


def _loss_rows(rows: Sequence[dict[str, Any]]) -> list[str]:
    out = [f"  {'system':<11} {'false failovers':>15} {'window':>8} {'backup held':>12} "
           f"{'both held':>10}  heartbeats dropped (to / from the backup)"]
    for r in rows:
        if r.get("note"):
            out.append(f"  {r['system']:<11} {'n/a':>15}  {r['note']}")
            continue
        if "false_failovers" not in r:
            out.append(f"  {r['system']:<11} {'n/a':>15}  {'; '.join(r['failure_reasons'])}")
            continue
        out.append(
            f"  {r['system']:<11} {r['false_failovers']:>15} {r['seconds']:>7.0f}s "
            f"{_fmt_s(r['backup_held_vip_s']):>12} {_fmt_s(r['split_brain_s']):>10}  "
            f"{r['dropped_to_backup']}/{r['heartbeats_to_backup']} "
            f"({_pct(r['measured_loss_percent'])}) / "
            f"{r['dropped_from_backup']}/{r['heartbeats_from_backup']}")
    return out


def _pct(x: Any) -> str:
    return f"{x:.1f}%" if isinstance(x, float | int) else "n/a"


def _goals(records: Sequence[dict[str, Any]]) -> list[str]:
    by = {(r["scenario"], r["system"]): r for r in records}
    out = ["goals and earlier measurements:"]
    g = by.get((f"{VM_DIES}-{FAST}", GUARDIAN))
    if g is None:
        out.append(f"  guardian {VM_DIES}-{FAST} median <= {GOAL_MEDIAN_S:g} s: not run")
    elif g.get("median_s") is None:
        out.append(f"  guardian {VM_DIES}-{FAST} median <= {GOAL_MEDIAN_S:g} s: not measured "
                   f"({g.get('note') or 'no successful run'})")
    else:
        ok = g["median_s"] <= GOAL_MEDIAN_S
        out.append(f"  guardian {VM_DIES}-{FAST} median <= {GOAL_MEDIAN_S:g} s: "
                   f"{_fmt_s(g['median_s'])} {'met' if ok else 'MISSED'}")
    for prof in PROFILES:
        k = by.get((f"{VM_DIES}-{prof}", KEEPALIVED))
        if k is None:
            continue
        ratio = k.get("ratio_vs_guardian")
        rtxt = f"; keepalived/guardian = {ratio:.2f}x" if isinstance(ratio, float) else ""
        out.append(f"  keepalived {VM_DIES}-{prof}: median {_fmt_s(k['median_s'])} "
                   f"(earlier: {ANCHORS[prof]}){rtxt}")
    for prof in PROFILES:
        for name in SYSTEMS:
            r = by.get((f"{FALSE_FAILOVERS}-{prof}", name))
            if r is None or r.get("false_failovers") is None:
                continue
            exp = r.get("expected_false_failovers")
            want = " (goal: 0)" if name == GUARDIAN else (
                f" (VRRP's rule predicts {exp:.2f} at the measured advert count)"
                if isinstance(exp, float | int) else "")
            out.append(f"  {name} {FALSE_FAILOVERS}-{prof}: {r['false_failovers']} in "
                       f"{r['seconds']:.0f} s at {r['loss_percent']}% loss{want}")
    out.append(f"  earlier: {ANCHOR_FALSE}")
    return out


# ---------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guardian.lab.bench_failover",
        description="VIP failover: guardian vs keepalived (VM dies, random heartbeat loss; "
        "guardian only: failed service with cold standby, switchover). Root; builds a "
        "network-namespace lab.")
    parser.add_argument("--runs", type=int, default=10,
                        help="clocked runs per system, scenario and profile (default %(default)s)")
    parser.add_argument("--json", type=Path, help="write the records to this file")
    parser.add_argument("--systems", type=_csv(SYSTEMS), default=",".join(SYSTEMS),
                        help="comma-separated (default %(default)s)")
    parser.add_argument("--scenarios", type=_csv(SCENARIOS), default=",".join(SCENARIOS),
                        help="comma-separated (default %(default)s)")
    parser.add_argument("--profiles", type=_csv(PROFILES), default=",".join(PROFILES),
                        help="comma-separated (default %(default)s)")
    parser.add_argument("--loss-seconds", type=float, default=60.0,
                        help="length of the random-loss window (default %(default)g s)")
    parser.add_argument("--loss-percent", type=int, default=10,
                        help="heartbeats dropped, each way (default %(default)s%%)")
    parser.add_argument("--run-timeout", type=float, default=30.0,
                        help="a run longer than this is a failure (default %(default)g s)")
    parser.add_argument("--seed", type=int, help="seed of the random pre-fault waits")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if args.loss_seconds <= 0:
        parser.error("--loss-seconds must be > 0")
    if not 1 <= args.loss_percent <= 99:
        parser.error("--loss-percent must be in 1..99")
    return run_main("bench_failover", lambda: run_benchmark(
            args.runs, systems=args.systems, scenarios=args.scenarios, profiles=args.profiles,
            loss_seconds=args.loss_seconds, loss_percent=args.loss_percent,
            run_timeout=args.run_timeout, seed=args.seed), format_report, args.json)


if __name__ == "__main__":
    sys.exit(main())
