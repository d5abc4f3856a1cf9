"""Escalation benchmark: restarts do not help -> dom0 recreates the VM -> serving again.

``python -m guardian.lab.bench_escalation [--runs 5] [--json FILE]`` (root; builds a
network-namespace lab).  The scenario of ``tests/lab/test_escalation_e2e.py``: Apache's
config broken in vm01 and Apache killed; guardiand (restart budget 1, ladder
``["escalate"]``) asks guardian-hostd in dom0 over signed HTTP; hostd's ``lab`` driver
destroys the VM, confirms it is gone and boots it again (a fresh instance: a good
config); the client sees HTTP 200 again.  Per run, from three clocks sharing the wall
clock (guardiand's log, hostd's journal, the client's probes every 10 ms):

* fault -> restart budget spent (guardiand: detection and one failed restart);
* budget spent -> request accepted by hostd;
* budget spent -> VM boot begins (ours: the request, destroy, death confirmed);
* VM boot begins -> serving (the VM's: namespaces, supervisord, Apache);
* budget spent -> serving again, and fault -> serving again.

Side by side, in the same run: **monit** (the tool in this field with an escalation
rule), in its own VM, on the same fault: ``if 1 restarts within 2 cycles then exec``
a script, its way to ask for more than a restart.  Compared: fault -> the request has
left the guest (monit: its exec ran; guardiand: hostd has accepted it, a stricter
end point).  The anchor for the whole path is the Xen + Heartbeat study behind
design.md: 6-8 s for its cold failover with a real Xen VM.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from guardian.hostd import PolicySpec

from ._errors import LabError
from ._escalation import EscalationRig, spent_wall, wait_for
from ._lab import Lab
from ._spec import VM02_IP
from .bench import MONIT_DIR, MonitSystem, _wrap, run_main

GUARDIAN = "guardian"
MONIT = "monit"
SYSTEMS = (GUARDIAN, MONIT)
ANCHOR = ("the Xen + Heartbeat study behind design.md needed 6-8 s for its whole "
          "cold-failover path with a real Xen VM")
ESCALATED = f"{MONIT_DIR}/escalated"
ESCALATE_SCRIPT = f"{MONIT_DIR}/escalate"
MONIT_RULE = f'    if 1 restarts within 2 cycles then exec "{ESCALATE_SCRIPT}"\n'
MONIT_SETTINGS = (
    "set daemon 1 (its minimum cycle); check process apache2 with pidfile; start "
    "program = supervisorctl start apache2 with timeout 2 seconds; if failed port 80 "
    "protocol http with timeout 1 seconds then restart; if 1 restarts within 2 cycles "
    "then exec a script that writes the time (monit's way to escalate); a fresh monit "
    "per run, settled (two cycles testing apache2 OK)")
GUARDIAN_SETTINGS = (
    "guardiand: apache2 http check every 500 ms (timeout 500 ms), restart budget 1, "
    "backoff 200 ms, ladder [escalate], channel http (HMAC-SHA256) to guardian-hostd in "
    "dom0; hostd: lab driver (VM.destroy, death confirmed by polling every 50 ms, "
    "VM.boot), min_interval 0, incarnation published to the new instance")

#: per-run fields: (key, title)
PHASES: tuple[tuple[str, str], ...] = (
    ("fault_to_spent", "fault -> restart budget spent (detect + 1 failed restart)"),
    ("spent_to_accepted", "budget spent -> request accepted by hostd"),
    ("spent_to_boot", "budget spent -> VM boot begins (ours: ask, destroy, confirm)"),
    ("boot_to_serving", "VM boot begins -> serving (the VM's boot)"),
    ("spent_to_serving", "budget spent -> serving again"),
    ("fault_to_serving", "fault -> serving again"),
)


def guardian_runs(lab: Lab, workdir: Path, runs: int, log: Callable[[str], None]
                  ) -> dict[str, Any]:
    rig = EscalationRig(lab, workdir, policy=PolicySpec(
        min_interval=0.0, max_actions=100_000, window=86400, healthy_reset=86400,
        confirm_timeout=15))
    samples: list[dict[str, float]] = []
    failures: list[str] = []
    try:
        rig.start()
        for i in range(1, runs + 1):
            g = rig.guardiand
            g.wait_state("apache2", "up", timeout=20)
            wait_for(rig.serves, 20, "vm01 serving before the run", rig.debug)
            time.sleep(0.3)
            try:
                t_fault = rig.fault()
                acc = rig.wait_decision("accepted", i, timeout=30)
                fin = rig.wait_decision("finished", i, timeout=60)
                if fin.get("outcome") != "done":
                    raise LabError(f"run {i}: {fin.get('outcome')}: {fin.get('detail')}")
                serving = rig.wait_serving(60)
                spent = spent_wall(g.log())
                if spent is None:
                    raise LabError(f"run {i}: no 'restart budget spent' in guardiand's log")
                assert rig.driver is not None
                boot = rig.driver.boots[i - 1]
                boot_start = boot.done_wall - boot.vm_boot_s
                sample = {
                    "fault_to_spent": spent - t_fault,
                    "spent_to_accepted": float(acc["wall"]) - spent,
                    "spent_to_boot": boot_start - spent,
                    "boot_to_serving": serving - boot_start,
                    "spent_to_serving": serving - spent,
                    "fault_to_serving": serving - t_fault,
                    "fault_to_request_out": float(acc["wall"]) - t_fault,
                    "vm_boot_call": boot.vm_boot_s,
                    "guardiand_start": boot.guardiand_s,
                    "hostd_confirm": float(fin.get("timings", {}).get("confirm_s", 0.0)),
                }
                samples.append(sample)
                log(f"guardian run {i}/{runs}: spent->accepted "
                    f"{sample['spent_to_accepted']:.3f} s, spent->serving "
                    f"{sample['spent_to_serving']:.3f} s (VM boot "
                    f"{sample['boot_to_serving']:.3f} s)")
            except LabError as exc:
                failures.append(str(exc).splitlines()[0])
                log(f"guardian run {i}/{runs}: FAILED: {failures[-1]}")
                break
    finally:
        rig.stop()
    return {"system": GUARDIAN, "runs": len(samples), "attempts": runs,
            "samples": samples, "failures": len(failures), "failure_reasons": failures,
            "settings": GUARDIAN_SETTINGS}


def monit_runs(lab: Lab, runs: int, log: Callable[[str], None]) -> dict[str, Any]:
    samples: list[dict[str, float]] = []
    failures: list[str] = []
    last_log = ""
    mon = MonitSystem(lab, VM02_IP, extra_rules=MONIT_RULE)
    try:
        vm = mon.vm
        vm.write_file(ESCALATE_SCRIPT, f"#!/bin/sh\ndate +%s.%N >> {ESCALATED}\n",
                      mode=0o755)
        for i in range(1, runs + 1):
            try:
                t_fault = _monit_fault(mon)
                wait_for(lambda: _escalations(mon), 30, "monit's exec", mon.log)
                t_exec = _escalations(mon)[0]
                samples.append({"fault_to_request_out": t_exec - t_fault})
                last_log = mon.log()[-3000:]
                log(f"monit run {i}/{runs}: fault -> exec {t_exec - t_fault:.3f} s")
            except LabError as exc:
                failures.append(str(exc).splitlines()[0])
                log(f"monit run {i}/{runs}: FAILED: {failures[-1]}")
            _monit_reset(mon)
    finally:
        mon.close()
    return {"system": MONIT, "runs": len(samples), "attempts": runs, "samples": samples,
            "failures": len(failures), "failure_reasons": failures,
            "settings": f"{mon.version}: {MONIT_SETTINGS}", "last_run_log": last_log}


def _escalations(mon: MonitSystem) -> list[float]:
    try:
        text = mon.vm.read_file(ESCALATED)
    except LabError:
        return []
    return [float(x) for x in text.split()]


def _monit_fault(mon: MonitSystem) -> float:
    vm = mon.vm
    vm.run(["rm", "-f", ESCALATED])
    mon.settle(None)
    time.sleep(0.3)
    import signal

    vm.break_apache_config()
    t = time.time()
    vm.signal("apache2", signal.SIGKILL, group=True)
    return t


def _monit_reset(mon: MonitSystem) -> None:
    """A clean slate for the next run: monit stopped, the config fixed, Apache
    started, a fresh monit (its restart counters forgotten)."""
    vm = mon.vm
    mon.stop()
    vm.fix_apache_config()
    vm.run(["rm", "-f", f"{MONIT_DIR}/state"])
    if vm.state("apache2") != "RUNNING":
        vm.supervisorctl("start", "apache2", check=False)
    vm.wait_running(timeout=20)
    mon.start()


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    for key in {k for s in record["samples"] for k in s}:
        values = [s[key] for s in record["samples"] if key in s]
        out[f"{key}_median_s"] = round(statistics.median(values), 4) if values else None
        out[f"{key}_max_s"] = round(max(values), 4) if values else None
        out[f"{key}_min_s"] = round(min(values), 4) if values else None
    return out


def run_benchmark(runs: int, systems: Sequence[str], workdir: Path,
                  log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
                  ) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    with Lab() as lab:
        if GUARDIAN in systems:
            records.append(summarize(guardian_runs(lab, workdir, runs, log)))
        if MONIT in systems:
            records.append(summarize(monit_runs(lab, runs, log)))
    g = next((r for r in records if r["system"] == GUARDIAN), None)
    for r in records:
        if r["system"] == MONIT and g is not None:
            a, b = r.get("fault_to_request_out_median_s"), g.get(
                "fault_to_request_out_median_s")
            r["ratio_vs_guardian"] = round(a / b, 2) if a and b else None
    return records


def _fmt(x: Any) -> str:
    return f"{x:.3f} s" if isinstance(x, int | float) else "n/a"


def format_report(records: Sequence[dict[str, Any]]) -> str:
    lines: list[str] = []
    g = next((r for r in records if r["system"] == GUARDIAN), None)
    m = next((r for r in records if r["system"] == MONIT), None)
    if g is not None:
        lines.append(f"guardian: broken Apache in vm01 -> dom0 recreates the VM "
                     f"({g['runs']}/{g['attempts']} runs)")
        lines.append(f"  {'phase':<64} {'median':>9} {'max':>9} {'min':>9}")
        for key, title in PHASES:
            lines.append(f"  {title:<64} {_fmt(g.get(key + '_median_s')):>9} "
                         f"{_fmt(g.get(key + '_max_s')):>9} {_fmt(g.get(key + '_min_s')):>9}")
        lines += _wrap(f"of the VM's boot: VM.boot() {_fmt(g.get('vm_boot_call_median_s'))} "
                       f"(median); guardiand started in the new VM in "
                       f"{_fmt(g.get('guardiand_start_median_s'))}; hostd destroy + death "
                       f"confirmed {_fmt(g.get('hostd_confirm_median_s'))}")
        lines += _wrap(f"anchor: {ANCHOR}; ours here is budget spent -> VM boot begins, "
                       "the rest is the (lab) VM's boot, which a real Xen domain makes "
                       "longer (seconds to tens of seconds)")
        lines.append("")
    if g is not None or m is not None:
        lines.append("fault -> the escalation request has left the guest "
                     "(guardian: accepted by hostd; monit: its exec ran)")
        for r in (x for x in (g, m) if x is not None):
            ratio = r.get("ratio_vs_guardian")
            rtxt = f"  monit/guardian = {ratio:.1f}x" if isinstance(ratio, float) else ""
            lines.append(f"  {r['system']:<9} {r['runs']}/{r['attempts']} runs  median "
                         f"{_fmt(r.get('fault_to_request_out_median_s'))}  max "
                         f"{_fmt(r.get('fault_to_request_out_max_s'))}{rtxt}")
        lines.append("settings:")
        for r in (x for x in (g, m) if x is not None):
            lines += _wrap(f"{r['system']}: {r['settings']}")
            for why in r.get("failure_reasons", []):
                lines += _wrap(f"FAILED run: {r['system']}: {why}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guardian.lab.bench_escalation",
        description="Restarts do not help -> dom0 recreates the VM -> serving again: "
        "guardian (guardiand + guardian-hostd) in the lab, monit's escalation rule "
        "side by side (root; builds a network-namespace lab).")
    parser.add_argument("--runs", type=int, default=5, help="runs per system (default 5)")
    parser.add_argument("--json", type=Path, help="write the records to this file")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="comma-separated (default %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/guardian-bench-esc"),
                        help="hostd's state and the logs (default %(default)s)")
    args = parser.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or args.runs < 1:
        parser.error(f"unknown system(s) {unknown}" if unknown else "--runs must be >= 1")
    import shutil

    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    return run_main("bench_escalation",
                    lambda: run_benchmark(args.runs, systems, args.workdir),
                    format_report, args.json)


if __name__ == "__main__":
    sys.exit(main())
