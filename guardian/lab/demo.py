"""The demo: guardiand on the shipped default config, supervising real services.

``python -m guardian.lab.demo`` (root) builds the lab of design.md §3 (a client and a
VM, each in its own network namespace; the VM with a private mount namespace,
supervisord and Debian's stock apache2, named and exim4), starts guardiand inside
the VM on the configuration ``guardian sample-config`` prints (the one the package
installs), then breaks things the way production does and shows what guardiand
does about it, as the client sees it:

1. SIGKILL apache2             -> restarted at once (the process exit is watched)
2. SIGSTOP named (hung)        -> DNS probes time out -> CRITICAL -> restarted
3. SIGKILL exim4               -> restarted
4. apache2 config broken + crash -> restarts fail, the budget is spent, the ladder
   runs (alert), guardiand keeps probing; the config is fixed -> it recovers alone
5. restarts do not help -> dom0 recreates the VM: in a second lab (client, dom0,
   vm01), guardiand runs on the same shipped config plus an ``[escalation]`` table
   and apache2's ``ladder = ["escalate"]`` (restart budget 1); the broken config
   outlives the restart, so guardiand asks guardian-hostd in dom0 (``lab`` driver)
   to recreate the VM; hostd destroys it, confirms it is gone and boots a fresh
   instance (incarnation 1), whose Apache serves again

Everything the demo created (namespaces, processes, hostd's state under /var/tmp) is
removed at the end, also on error or Ctrl-C. ``--keep`` waits for Ctrl-C before the
first lab (scenes 1-4) is removed, so you can look around: the commands to do so are
printed; scene 5 follows in a lab of its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guardian._sample import SAMPLE_CONFIG
from guardian.cli import format_status_table

from . import (
    CLIENT_IP,
    DOM0_IP,
    VM,
    VM01_IP,
    EscalationRig,
    Guardiand,
    Host,
    Lab,
    LabError,
    listener_program,
    unavailable_reason,
)
from ._escalation import KEY_FILE, PORT, VM_UUID
from .bench import toml_set

SUPERVISORD_CONF = "/etc/supervisor/supervisord.conf"

#: scene 5: what the shipped sample config needs changed for escalation ...
ESCALATION_OVERRIDES: tuple[tuple[str, str, str], ...] = (
    ("services.apache2", "ladder", '["escalate"]'),
    ("services.apache2.restart", "budget", "1"),
)
#: ... and added (the VM's key is put where key_file says, as an image would)
ESCALATION_TABLE = f"""\
[escalation]
channel = "http"
url = "http://{DOM0_IP}:{PORT}"
key_file = "{KEY_FILE}"
vm = "vm01"
vm_uuid = "{VM_UUID}"
"""
#: scene 5: guardian-hostd's configuration in dom0 (the shipped policy)
HOSTD_TOML = f"""\
[hostd]
listen = "{DOM0_IP}:{PORT}"
state_dir = "{{workdir}}/hostd"

[policy]
max_actions = 3
window = "24h"
min_interval = "10m"
healthy_reset = "1h"
confirm_timeout = "30s"

[vms.vm01]
uuid = "{VM_UUID}"
key_file = "{{workdir}}/vm01.keys"
driver = "lab"
domain = "vm01"
"""


def say(text: str = "") -> None:
    print(text, flush=True)


def banner(text: str) -> None:
    say()
    say(f"== {text} " + "=" * max(0, 74 - len(text)))


class Demo:
    def __init__(self, lab: Lab, client: Host, vm: VM, g: Guardiand) -> None:
        self.lab = lab
        self.client = client
        self.vm = vm
        self.g = g
        self.log_mark = 0

    # what the client sees
    def serves(self, service: str) -> bool:
        ip = self.vm.spec.ip
        try:
            if service == "apache2":
                return self.client.http_get(ip, timeout=0.3).status == 200
            if service == "named":
                # the sample config asks named about "localhost"; from the client we
                # ask for the lab zone it also serves
                return bool(self.client.dns_query(ip, f"www.{self.vm.spec.zone}", timeout=0.3))
            return self.client.smtp_banner(ip, timeout=0.5).startswith("220")
        except Exception:  # noqa: BLE001 - any failure is "not serving"
            return False

    def wait(self, pred: Callable[[], bool], timeout: float) -> float | None:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if pred():
                return time.monotonic() - start
            time.sleep(0.005)
        return None

    def outage(self, service: str, old_pid: int | None, timeout: float = 30.0) -> None:
        def back() -> bool:
            pid = self.vm.pid(service)
            return pid is not None and pid != old_pid and self.serves(service)

        took = self.wait(back, timeout)
        if took is None:
            say(f"   !! {service} is not serving again after {timeout:.0f} s")
        else:
            say(f"   -> the client sees {service} serving again after {took:.3f} s "
                f"(new pid {self.vm.pid(service)})")

    def show_log(self) -> None:
        text = self.g.log_since(self.log_mark)
        self.log_mark = self.g.log_size()
        lines = [ln for ln in text.splitlines() if " DEBUG " not in ln]
        if lines:
            say("   guardiand's log:")
            for ln in lines[-14:]:
                say("     " + ln)

    def status(self) -> None:
        say("   $ guardian status")
        for ln in format_status_table(self.g.status()).splitlines():
            say("     " + ln)

    def fault(self, title: str, service: str, sig: signal.Signals) -> None:
        """Signal the service's process group; show the outage and guardiand's log."""
        banner(title)
        wall0 = time.time()
        old = self.vm.pid(service)
        self.vm.signal(service, sig, group=True)
        self.outage(service, old)
        if sig is signal.SIGSTOP and old is not None:
            try:
                os.killpg(old, signal.SIGCONT)   # nothing left to continue if it worked
            except ProcessLookupError:
                pass
        self.settle(service)
        self.show_log()
        self.show_timeline(wall0)

    def show_timeline(self, since_wall: float) -> None:
        """The incident(s) since then, from guardiand's journal (`guardian events`)."""
        import json

        from guardian._timeline import format_timeline

        out = self.g.cli("events", "--json")
        if out.returncode != 0:
            say(f"   (guardian events failed: {out.stderr.strip()})")
            return
        for inc in json.loads(out.stdout)["incidents"]:
            if inc["start"] >= since_wall - 0.1:
                say("   $ guardian events   (the incident's timeline from the journal)")
                for ln in format_timeline(inc["records"]).splitlines():
                    say("     " + ln)

    def settle(self, *services: str) -> None:
        for s in services or ("apache2", "named", "exim4"):
            self.g.wait_state(s, "up", timeout=30)


def escalation_config(sample: str = SAMPLE_CONFIG) -> tuple[str, list[str]]:
    """The shipped sample config with ``ESCALATION_OVERRIDES`` and ``ESCALATION_TABLE``
    (checked), and those changes as diff-like lines."""
    from guardian._states import LadderAction
    from guardian.config import loads

    text = sample
    diff: list[str] = []
    for table, key, value in ESCALATION_OVERRIDES:
        before = text.splitlines()
        text = toml_set(text, table, key, value, by="demo")
        (changed,) = (i for i, (a, b) in enumerate(zip(before, text.splitlines(), strict=True))
                      if a != b)
        diff += [f"  [{table}]", f"- {before[changed].strip()}",
                 f"+ {text.splitlines()[changed].strip()}"]
    text = text.rstrip("\n") + "\n\n" + ESCALATION_TABLE
    diff += [f"+ {ln}" for ln in ESCALATION_TABLE.splitlines()]
    spec = loads(text, "demo-escalation.toml")
    apache = spec.services["apache2"]
    if ([s.action for s in apache.ladder] != [LadderAction.ESCALATE]
            or apache.restart.budget != 1 or spec.escalation is None):
        raise ValueError("the demo's escalation changes did not take")
    return text, diff


def clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall * 1000) % 1000:03d}"


def journal_line(rec: dict[str, Any]) -> str:
    """One record of hostd's journal, as ``guardian-hostd status`` lists them."""
    reason = rec.get("reason") or {}
    why = f" (guardiand: {reason['service']})" if isinstance(reason, dict) and \
        reason.get("service") else ""
    return (f"{clock(float(rec.get('wall', 0)))} {rec.get('decision')} {rec.get('vm')} -> "
            f"{rec.get('target')} {rec.get('action')} [{rec.get('outcome')}]"
            f"{why} {rec.get('detail') or ''}").rstrip()


def escalation_scene(workdir: Path) -> None:
    """Scene 5, in a lab of its own: the hosts of ``EscalationRig`` (client, dom0,
    vm01), guardiand on the sample config plus escalation, hostd in dom0."""
    banner("5. restarts do not help -> dom0 recreates the VM")
    from guardian.hostd._config import load as load_hostd

    config, diff = escalation_config()
    say("   a second lab: client, dom0 (guardian-hostd, `lab` driver: destroy = kill the")
    say("   VM's namespaces and processes, create = boot it afresh) and vm01, whose")
    say("   guardiand runs the shipped sample config plus only this:")
    for ln in diff:
        say("     " + ln)
    key = os.urandom(32)
    (workdir / "vm01.keys").write_text(f"1 {key.hex()} send\n")
    (workdir / "vm01.keys").chmod(0o600)
    hostd_toml = workdir / "hostd.toml"
    hostd_toml.write_text(HOSTD_TOML.format(workdir=workdir))
    policy = load_hostd(hostd_toml).policy
    t0 = time.monotonic()
    with Lab() as lab:
        rig = EscalationRig(lab, workdir, policy=policy, config=config, key=key)
        try:
            rig.start()
            g1 = rig.guardiand
            g1.wait_state("apache2", "up", timeout=20)
            say(f"   lab {lab.id} up in {time.monotonic() - t0:.2f} s: guardian-hostd on "
                f"{DOM0_IP}:{rig.port} in dom0, guardiand in vm01 (incarnation 0)")
            say("   apache2's config broken (it outlives restarts), then SIGKILL apache2 ...")
            t_fault = rig.fault()
            acc = rig.wait_decision("accepted", timeout=20)
            fin = rig.wait_decision("finished", timeout=40)
            serving = rig.wait_serving(30)
            spent = rig.spent_wall(g1)
            lines = [ln for ln in g1.log().splitlines()
                     if " DEBUG " not in ln and ("apache2" in ln or "escalat" in ln)]
            say("   guardiand's log (the old instance):")
            for ln in lines[-8:]:
                say("     " + ln)
            say("   guardian-hostd's journal (dom0):")
            for rec in rig.journal():
                say("     " + journal_line(rec))
            if fin.get("outcome") != "done" or spent is None:
                raise LabError(f"escalation scene: {fin.get('outcome')}: "
                               f"{fin.get('detail')}; serving {serving}; spent {spent}")
            driver = rig.driver
            assert driver is not None and driver.boots
            boot = driver.boots[0]
            boot_start = boot.done_wall - boot.vm_boot_s
            say(f"   -> the client sees apache2 serving again, from the new vm01 "
                f"(incarnation {boot.incarnation})")
            timings = fin.get("timings") or {}
            rows = [
                ("fault -> restart budget spent (guardiand: 1 restart, failed)",
                 spent - t_fault),
                ("budget spent -> request accepted by guardian-hostd",
                 float(acc["wall"]) - spent),
                ("budget spent -> client sees HTTP 200 again", serving - spent),
                ("  of which: hostd destroyed vm01 and confirmed it gone",
                 float(timings.get("confirm_s", 0.0))),
                ("  of which: the VM's boot (boot begins -> serving)", serving - boot_start),
                ("fault -> client sees HTTP 200 again", serving - t_fault),
            ]
            say("   timings (guardiand's log, hostd's journal, the client's probes every 10 ms):")
            for title, secs in rows:
                say(f"     {title:<62} {secs:7.3f} s")
            g2 = rig.guardiand
            g2.wait_state("apache2", "up", timeout=20)
            say("   guardiand in the new instance (started at its boot, as systemd would):")
            for ln in format_status_table(g2.status()).splitlines():
                say("     " + ln)
            say("   $ guardian-hostd status   (in dom0)")
            out = subprocess.run([sys.executable, "-m", "guardian.hostd", "--config",
                                  str(hostd_toml), "status", "--tail", "4"],
                                 capture_output=True, text=True, timeout=30, check=False)
            for ln in (out.stdout + out.stderr).splitlines():
                say("     " + ln)
        finally:
            errors = rig.stop()
        if errors:
            raise LabError(f"escalation scene: stopping: {errors}")
        say("   guardiand and guardian-hostd stopped; removing the second lab")


def run(keep: bool) -> int:
    reason = unavailable_reason()
    if reason is not None:
        say(f"demo: cannot build the lab here: {reason}")
        return 2
    banner("building the lab: client + vm01 (netns, private mounts, supervisord)")
    with Lab() as lab:
        client = lab.host("client", CLIENT_IP)
        # supervisord's own autorestart is off: what brings services back is guardiand
        vm = lab.vm("vm01", VM01_IP, autorestart=False, startsecs=0,
                    extra_programs=(listener_program(),), boot=False)
        t0 = time.monotonic()
        vm.boot()
        times = vm.wait_ready(timeout=30)
        each = ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
        say(f"   lab {lab.id}: vm01 at {vm.spec.ip} serving after "
            f"{time.monotonic() - t0:.2f} s ({each})")

        banner("guardiand on the shipped default config (guardian sample-config)")
        g = Guardiand(vm, SAMPLE_CONFIG)
        g.start()
        demo = Demo(lab, client, vm, g)
        demo.settle()
        demo.status()
        demo.show_log()

        demo.fault("1. SIGKILL apache2 (the whole process group)", "apache2", signal.SIGKILL)
        demo.fault("2. SIGSTOP named: hung, still holding its sockets", "named", signal.SIGSTOP)
        demo.fault("3. SIGKILL exim4", "exim4", signal.SIGKILL)

        banner("4. apache2's config broken, then it crashes: restarts cannot help")
        wall4 = time.time()
        vm.break_apache_config()
        vm.signal("apache2", signal.SIGKILL, group=True)
        entry = g.wait_state("apache2", "exhausted", timeout=60)
        say(f"   -> budget spent ({entry['restarts_used']}/{entry['restart_budget']}), "
            f"ladder ran; state {entry['state']}, next: {entry['next_action']}")
        demo.status()
        demo.show_log()
        say("   the operator fixes the config; guardiand keeps probing, retries once a minute ...")
        vm.fix_apache_config()
        took = demo.wait(lambda: demo.serves("apache2"), 90)
        say("   -> apache2 serving again " + (f"{took:.1f} s after the fix" if took is not None
                                               else "NOT within 90 s"))
        demo.settle("apache2")
        demo.show_log()
        demo.show_timeline(wall4)

        banner("final status")
        demo.status()
        if keep:
            banner("--keep: the lab stays up until Ctrl-C")
            say(f"   guardian status:  nsenter -t {vm.holder_pid} -m -n -u -- "
                f"{sys.executable} -m guardian --config /etc/guardian/guardian.toml status")
            say(f"   client shell:     ip netns exec {client.netns} bash")
            say(f"   guardiand log:    {g.log_path}")
            try:
                while g.running():
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        banner("cleaning up (guardiand, then every namespace and process of the lab)")
        rc = g.stop()
        say(f"   guardiand stopped on SIGTERM, exit {rc}")
    say("   nothing of the first lab is left")
    workdir = Path(tempfile.mkdtemp(prefix="guardian-demo-", dir="/var/tmp"))
    try:
        escalation_scene(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    say("   done: nothing of the labs is left")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guardian.lab.demo",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true",
                        help="keep the lab running until Ctrl-C before cleaning up")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("demo: needs root (network namespaces)")
        return 2
    return run(args.keep)


if __name__ == "__main__":
    sys.exit(main())
