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

Everything the demo created (namespaces, processes) is removed at the end, also on
error or Ctrl-C. ``--keep`` waits for Ctrl-C before that, so you can look around:
the commands to do so are printed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable

from guardian._sample import SAMPLE_CONFIG
from guardian.cli import format_status_table

from . import (
    CLIENT_IP,
    VM,
    VM01_IP,
    Guardiand,
    Host,
    Lab,
    listener_program,
    unavailable_reason,
)

SUPERVISORD_CONF = "/etc/supervisor/supervisord.conf"


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
    say("   done: nothing of the lab is left")
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
