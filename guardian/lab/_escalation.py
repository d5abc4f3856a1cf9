"""Escalation in the lab: guardiand in ``vm01`` gives up on apache2 and asks
guardian-hostd, serving in ``dom0``, to recreate the VM; hostd's ``lab`` driver does.

``EscalationRig`` is what the lab tests, the benchmark (``bench_escalation``) and the
demo share: the hosts (client, dom0, vm01), hostd built from a ``HostdSpec`` with the
lab driver, and guardiand in the VM escalating over ``http`` with a per-VM key.  As
a guest's systemd would, the rig starts guardiand again in every new instance of the
VM (``RigDriver.boot``), after publishing hostd's new incarnation where the guest
reads it (``/run/guardian/incarnation``: the VM's /run is a fresh tmpfs at each boot).

Times come from three clocks that share the wall clock: guardiand's log ("restart
budget spent"), hostd's journal (``accepted``/``finished``), and the client's probes
("serving again").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardian.hostd import DomainState, Hostd, HostdSpec, PolicySpec, VMSpec, build
from guardian.xenstore import StandIn
from ipfailover._wire import KeyRing

from ._errors import LabError
from ._guardian import Guardiand, listener_program
from ._host import Host
from ._hostd_driver import LabDriver
from ._lab import Lab
from ._probes import http_get
from ._spec import CLIENT_IP, DOM0_IP, VM01_IP
from ._vm import VM

PORT = 7081
VM_UUID = "6f1c2a4e-0b7d-4c51-9a4e-e2e0e2e0e2e0"
KEY_FILE = "/etc/guardian/escalation.key"
INCARNATION_FILE = "/run/guardian/incarnation"
#: the client's probe of "serving again": one HTTP request every 10 ms
PROBE_GAP = 0.01
SPENT_RE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) .*restart budget spent", re.M)


def http_escalation(*, port: int = PORT, vm_uuid: str = VM_UUID) -> str:
    """The ``[escalation]`` table of vm01 over signed HTTP to hostd in dom0."""
    return f"""\
[escalation]
channel = "http"
url = "http://{DOM0_IP}:{port}"
key_file = "{KEY_FILE}"
vm = "vm01"
vm_uuid = "{vm_uuid}"
incarnation_file = "{INCARNATION_FILE}"
timeout = "5s"
retry_max = "2s"
"""


def guardiand_config(escalation: str | None = None) -> str:
    """vm01's guardiand: apache2 through supervisord, one restart, then escalate
    (``escalation``: the ``[escalation]`` table; default over http to hostd in dom0)."""
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

{escalation if escalation is not None else http_escalation()}"""


class HostdInDom0:
    """hostd serving (HTTP, and XenStore when its spec says so) on an event loop of its
    own, in a thread that lives in dom0's network namespace (a thread started from a
    dom0 thread stays there)."""

    def __init__(self, dom0: Host, hostd: Hostd, host: str, port: int, *,
                 xenstore_rescan: float = 1.0) -> None:
        self.dom0 = dom0
        self.hostd = hostd
        self.host = host
        self.port = port
        self.xenstore_rescan = xenstore_rescan
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._threads: list[threading.Thread] = []

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.hostd.start(
            self.host, self.port, xenstore_rescan=self.xenstore_rescan))
        self._ready.set()
        self.loop.run_forever()

    def start(self, timeout: float = 10.0) -> None:
        def in_dom0() -> None:
            t = threading.Thread(target=self._serve, name="hostd-dom0", daemon=True)
            t.start()
            self._threads.append(t)

        self.dom0.call(in_dom0)
        if not self._ready.wait(timeout):
            raise LabError("guardian-hostd did not start in dom0")

    def stop(self) -> None:
        if self._ready.is_set():
            asyncio.run_coroutine_threadsafe(self.hostd.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        for t in self._threads:
            t.join(10)
        if not self.loop.is_running():
            self.loop.close()
        self.hostd.journal.close()


class ServingProbe:
    """A thread in the client's namespace: from ``start()`` it asks vm01 for HTTP
    every 10 ms; ``serving_wall`` is the first 200 after a failed request (the
    client's view of "serving again", whatever the other clocks say)."""

    def __init__(self, client: Host) -> None:
        self.pool = client.executor(max_workers=1)
        self.stop_flag = threading.Event()
        self.serving_wall: float | None = None
        self.future: Any = None

    def start(self, timeout: float) -> None:
        self.stop_flag.clear()
        self.serving_wall = None

        def run() -> None:
            failed = False
            deadline = time.monotonic() + timeout
            while not self.stop_flag.is_set() and time.monotonic() < deadline:
                try:
                    ok = http_get(VM01_IP, timeout=0.2).status == 200
                except Exception:  # noqa: BLE001 - any failure is 'not serving'
                    ok = False
                if ok and failed:
                    self.serving_wall = time.time()
                    return
                failed = failed or not ok
                self.stop_flag.wait(PROBE_GAP)

        self.future = self.pool.submit(run)

    def wait(self, timeout: float) -> float | None:
        if self.future is not None:
            self.future.result(timeout)
        return self.serving_wall

    def close(self) -> None:
        self.stop_flag.set()
        self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Boot:
    """One instance of the VM created by hostd."""

    incarnation: int
    vm_boot_s: float          # VM.boot(): namespaces, supervisord, the services
    guardiand_s: float        # guardiand started in it (a guest's boot does that too)
    done_wall: float          # wall time when VM.boot() returned


class RigDriver(LabDriver):
    """The lab driver plus what a guest's boot does: hostd's new incarnation where the
    guest reads it, the VM's key, guardiand started; ``after_boot`` runs before
    guardiand (a fault that survives a recreate, for example)."""

    def __init__(self, rig: EscalationRig) -> None:
        super().__init__(rig.vm)
        self.rig = rig
        self.boots: list[Boot] = []
        self.states_after_destroy: list[DomainState] = []

    def state(self) -> DomainState:
        st = super().state()
        if self.calls and self.calls[-1] == "destroy":
            self.states_after_destroy.append(st)
        return st

    def boot(self) -> None:
        hostd = self.rig.hostd
        assert hostd is not None
        inc = hostd.engine.store.incarnation(self.vm.name)  # persisted before create
        t0 = time.monotonic()
        super().boot()
        vm_boot = time.monotonic() - t0
        done = time.time()
        t1 = time.monotonic()
        self.rig.prepare_guest(inc)
        if self.rig.after_boot is not None:
            self.rig.after_boot(self.vm)
        self.rig.start_guardiand()
        self.boots.append(Boot(inc, vm_boot, time.monotonic() - t1, done))


@dataclass
class EscalationRig:
    lab: Lab
    workdir: Path
    policy: PolicySpec = field(default_factory=lambda: PolicySpec(
        min_interval=600, max_actions=3, confirm_timeout=15))
    port: int = PORT
    alert_command: tuple[str, ...] = ()
    #: run in each new VM instance before guardiand starts
    after_boot: Callable[[VM], None] | None = None
    config: str = ""
    key: bytes = field(default_factory=lambda: os.urandom(32))
    #: the lab's XenStore on (a domain per VM boot) and hostd reading it
    xenstore: bool = False

    def __post_init__(self) -> None:
        self.xs: StandIn | None = self.lab.xenstore() if self.xenstore else None
        self.client: Host = self.lab.host("client", CLIENT_IP)
        self.dom0: Host = self.lab.host("dom0", DOM0_IP)
        self.vm: VM = self.lab.vm("vm01", VM01_IP, autorestart=False, startsecs=0,
                                  extra_programs=(listener_program(),), uuid=VM_UUID)
        self.config = self.config or guardiand_config(http_escalation(port=self.port))
        self.hostd: Hostd | None = None
        self.server: HostdInDom0 | None = None
        self.driver: RigDriver | None = None
        self.guardiands: list[Guardiand] = []
        self.probe: ServingProbe | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self, *, timeout: float = 30.0) -> None:
        self.vm.wait_ready(timeout=timeout)
        self.driver = RigDriver(self)
        spec = HostdSpec(
            source="lab", host=DOM0_IP, port=self.port, state_dir=self.workdir / "hostd",
            journal_dir=self.workdir / "hostd", policy=self.policy,
            alert_command=self.alert_command,
            xenstore=str(self.xs.dom0_socket) if self.xs is not None else "",
            vms={"vm01": VMSpec(name="vm01", uuid=self.vm.uuid,
                                key_file=self.workdir / "none", driver="lab",
                                domain=f"{self.lab.id}-vm01", keys=KeyRing({1: self.key}))})
        self.hostd = build(spec, drivers={"vm01": self.driver}, poll_interval=0.05)
        self.server = HostdInDom0(self.dom0, self.hostd, DOM0_IP, self.port)
        self.server.start()
        self.prepare_guest(self.hostd.engine.store.incarnation("vm01"))
        self.start_guardiand()

    def stop(self) -> list[str]:
        """Stop every guardiand and hostd; the errors met on the way."""
        errors: list[str] = []
        for g in self.guardiands:
            try:
                g.stop()
            except Exception as exc:  # noqa: BLE001 - stop the rest, then report
                errors.append(repr(exc))
        if self.probe is not None:
            self.probe.close()
        if self.server is not None:
            self.server.stop()
        if self.driver is not None:
            self.driver.close()
        if self.hostd is not None and self.hostd.engine.alerter is not None:
            self.hostd.engine.alerter.close(5.0)
        return errors

    def prepare_guest(self, incarnation: int) -> None:
        """What dom0 and the guest's image give a new instance: its key and its
        incarnation."""
        vm = self.vm
        vm.run(["mkdir", "-p", os.path.dirname(KEY_FILE), os.path.dirname(INCARNATION_FILE)])
        vm.write_file(KEY_FILE, f"1 {self.key.hex()} send\n", mode=0o600)
        vm.write_file(INCARNATION_FILE, f"{incarnation}\n")

    def start_guardiand(self) -> Guardiand:
        g = Guardiand(self.vm, self.config)
        # vm.boot() wipes the VM's directory: keep every instance's log
        g.log_path = self.workdir / f"guardiand-{len(self.guardiands) + 1}.log"
        self.guardiands.append(g)
        g.start(timeout=15)
        return g

    @property
    def guardiand(self) -> Guardiand:
        return self.guardiands[-1]

    # ------------------------------------------------------------------ the scenario
    def fault(self) -> float:
        """Break Apache's config and kill it: restarts cannot help.  Returns the wall
        time of the kill; the client's probe runs from just before it
        (``wait_serving``)."""
        if self.probe is None:
            self.probe = ServingProbe(self.client)
        self.probe.start(timeout=120)
        self.vm.break_apache_config()
        t = time.time()
        self.vm.signal("apache2", signal.SIGKILL, group=True)
        return t

    def journal(self) -> list[dict[str, Any]]:
        path = self.workdir / "hostd" / "journal.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def decisions(self, decision: str) -> list[dict[str, Any]]:
        return [r for r in self.journal() if r.get("decision") == decision]

    def wait_decision(self, decision: str, count: int = 1, timeout: float = 30.0
                      ) -> dict[str, Any]:
        """The ``count``-th journal record of ``decision``."""
        found = wait_for(lambda: len(self.decisions(decision)) >= count, timeout,
                         f"{count} x hostd decision {decision!r}", self.debug)
        assert found
        return self.decisions(decision)[count - 1]

    def serves(self) -> bool:
        try:
            return self.client.http_get(VM01_IP, timeout=0.5).status == 200
        except Exception:  # noqa: BLE001 - any failure to answer is 'not serving'
            return False

    def wait_serving(self, timeout: float = 30.0) -> float:
        """Wall time vm01 served HTTP again after the last ``fault()``, as the client's
        probe saw it (without a fault: when it serves)."""
        if self.probe is None:
            wait_for(self.serves, timeout, "vm01 serving HTTP", self.debug)
            return time.time()
        serving = self.probe.wait(timeout)
        if serving is None:
            raise LabError(f"vm01 not serving HTTP again within {timeout:g} s\n"
                           f"{self.debug()}")
        return serving

    def spent_wall(self, g: Guardiand | None = None) -> float | None:
        """Wall time of the first "restart budget spent" in ``g``'s log."""
        return spent_wall((g or self.guardiand).log())

    def debug(self) -> str:
        seen = [(r.get("decision"), r.get("outcome")) for r in self.journal()]
        counters = self.hostd.engine.counters if self.hostd is not None else {}
        parts = [f"hostd journal: {seen}", f"hostd counters: {counters}"]
        for g in self.guardiands[-2:]:
            parts.append(f"--- {g.log_path.name}\n{g.log()[-2500:]}")
        return "\n".join(parts)


def spent_wall(log: str) -> float | None:
    """Wall time of the first "restart budget spent" line (local HH:MM:SS.mmm)."""
    m = SPENT_RE.search(log)
    if m is None:
        return None
    h, mi, s, ms = (int(x) for x in m.groups())
    now = dt.datetime.now()
    t = now.replace(hour=h, minute=mi, second=s, microsecond=ms * 1000)
    if t > now + dt.timedelta(minutes=5):  # logged before midnight
        t -= dt.timedelta(days=1)
    return t.timestamp()


def wait_for(pred: Callable[[], Any], timeout: float, what: str,
             detail: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError(f"no {what} within {timeout:g} s\n{detail()}")
        time.sleep(0.02)
