"""``guardian-hostd run|validate|status|maintenance [--config /etc/guardian/hostd.toml]``.

``guardian-hostd maintenance VM on|off [--reason TEXT]`` puts a VM in or out of
maintenance mode (a marker file under the state directory that the running daemon
reads on every request): while on, every escalation about the VM is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from checks import ConfigErrors
from guardian._supervisor import notify

from . import _config
from ._app import build
from ._engine import history, next_allowed
from ._state import StateStore, read_journal, read_maintenance, set_maintenance


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="guardian-hostd",
                                description="dom0 side of guardian escalation")
    p.add_argument("--config", default=str(_config.DEFAULT_CONFIG),
                   help="hostd.toml (default %(default)s)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="serve escalation requests")
    sub.add_parser("validate", help="check the configuration and key files")
    st = sub.add_parser("status", help="incarnations and recent decisions")
    st.add_argument("--json", action="store_true")
    st.add_argument("--tail", type=int, default=10)
    mt = sub.add_parser("maintenance", help="put a VM in or out of maintenance mode")
    mt.add_argument("vm", help="a VM of the configuration ([vms.NAME])")
    mt.add_argument("mode", choices=("on", "off"))
    mt.add_argument("--reason", default="", help="shown by status and in refusals")
    for sp in sub.choices.values():
        sp.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p



async def _serve(config: str) -> int:
    spec = _config.load(config)
    hostd = build(spec)
    host, port = await hostd.start(spec.host, spec.port)
    log = logging.getLogger("guardian.hostd")
    log.info("guardian-hostd listening on %s:%d", host, port)
    if not spec.vms:
        log.warning("no VM configured: every request is refused until you add one")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # systemd (Type=notify): ready once the port is bound; the watchdog is petted from
    # this event loop, so a wedged loop gets hostd restarted
    metrics_server = None
    if spec.metrics_listen:
        from guardian._metrics import MetricsError

        try:
            metrics_server = await hostd.metrics.serve(spec.metrics_listen)
        except MetricsError as exc:
            log.error("metrics listener not started: %s", exc)
    if spec.xenstore:
        log.info("guardian-hostd reading requests from xenstore at %s", spec.xenstore)
    notify(f"READY=1\nSTATUS=listening on {host}:{port}, {len(spec.vms)} VM(s)")
    pet = asyncio.create_task(_watchdog())
    await stop.wait()
    notify("STOPPING=1")
    pet.cancel()
    if metrics_server is not None:
        await metrics_server.close()
    await hostd.close()
    if hostd.engine.alerter is not None:  # let queued alerts go out (bounded)
        await asyncio.to_thread(hostd.engine.alerter.close, 5.0)
    hostd.journal.close()
    return 0


async def _watchdog() -> None:
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return
    period = max(0.5, int(usec) / 1e6 / 2)
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(period)


def _when(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))


def _status(config: str, as_json: bool, tail: int) -> int:
    spec = _config.load(config, load_keys=False)
    store = StateStore(spec.state_dir)
    recent = read_journal(spec.journal_dir / "journal.jsonl", tail)
    maintenance = read_maintenance(spec.state_dir)
    now = time.time()
    vms: dict[str, dict[str, object]] = {}
    next_at: dict[str, tuple[float, str]] = {}
    for name, vm in spec.vms.items():
        hist = history(store.actions(name), store.last_request(name), spec.policy, now)
        wait, why = next_allowed(hist, spec.policy, now)
        next_at[name] = (now + wait, why)
        vms[name] = {"incarnation": store.incarnation(name),
                     "actions_in_window": len(hist), "max_actions": spec.policy.max_actions,
                     "window_s": spec.policy.window,
                     "last_action": hist[-1] if hist else None,
                     "next_allowed": now + wait, "next_allowed_why": why,
                     "maintenance": maintenance.get(name),
                     "driver": vm.driver, "domain": vm.domain}
    running = {rid: r for rid, r in store.requests.items()
               if r.get("state") in ("accepted", "in-progress")}
    if as_json:
        print(json.dumps({"vms": vms, "running": running, "journal": recent}, indent=1))
        return 0
    for name, v in vms.items():
        nxt, why = next_at[name]
        allowed = ("next action allowed now" if nxt <= now
                   else f"next action allowed at {_when(nxt)} ({why})")
        print(f"{name}: incarnation {v['incarnation']}, {v['actions_in_window']}/"
              f"{v['max_actions']} action(s) in the window, {allowed}, "
              f"driver {v['driver']} ({v['domain']})")
        m = maintenance.get(name)
        if m is not None:
            since = f" since {_when(float(m['since']))}" if m.get("since") else ""
            reason = f": {m['reason']}" if m.get("reason") else ""
            print(f"{name}: MAINTENANCE{since}{reason} (requests refused)")
    for rid, r in running.items():
        print(f"running: {rid} {r.get('action')} {r.get('target')}: {r.get('detail')}")
    for rec in recent:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(rec.get("wall", 0))))
        print(f"{when} {rec.get('decision')} {rec.get('vm')} -> {rec.get('target')} "
              f"{rec.get('action')} [{rec.get('outcome')}] {rec.get('detail') or ''}".rstrip())
    return 0


def _maintenance(config: str, vm: str, on: bool, reason: str) -> int:
    spec = _config.load(config, load_keys=False)
    if vm not in spec.vms:
        known = ", ".join(sorted(spec.vms)) or "none"
        print(f"guardian-hostd: {vm!r} is not a VM of {config} (configured: {known})",
              file=sys.stderr)
        return 2
    changed = set_maintenance(spec.state_dir, vm, on, reason=reason, now=time.time())
    mode = "on" if on else "off"
    print(f"{vm}: maintenance {mode}" + ("" if changed else " (already)")
          + (f": {reason}" if on and reason else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "validate":
            spec = _config.load(args.config)
            print(f"{args.config}: OK ({len(spec.vms)} VM(s), listen "
                  f"{spec.host}:{spec.port})")
            if not spec.vms:
                print(f"{args.config}: no VM configured: guardian-hostd refuses every "
                      "request until you add one ([vms.NAME])")
            return 0
        if args.command == "status":
            return _status(args.config, args.json, args.tail)
        if args.command == "maintenance":
            return _maintenance(args.config, args.vm, args.mode == "on", args.reason)
        return asyncio.run(_serve(args.config))
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"guardian-hostd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
