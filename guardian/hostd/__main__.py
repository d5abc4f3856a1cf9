"""``guardian-hostd run|validate|status [--config /etc/guardian/hostd.toml]``."""

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
from ._state import StateStore, read_journal


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
    for sp in sub.choices.values():
        sp.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p



async def _serve(config: str) -> int:
    spec = _config.load(config)
    hostd = build(spec)
    host, port = await hostd.server.start(spec.host, spec.port)
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
    notify(f"READY=1\nSTATUS=listening on {host}:{port}, {len(spec.vms)} VM(s)")
    pet = asyncio.create_task(_watchdog())
    await stop.wait()
    notify("STOPPING=1")
    pet.cancel()
    if metrics_server is not None:
        await metrics_server.close()
    await hostd.server.close()
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


def _status(config: str, as_json: bool, tail: int) -> int:
    spec = _config.load(config, load_keys=False)
    store = StateStore(spec.state_dir)
    recent = read_journal(spec.journal_dir / "journal.jsonl", tail)
    vms = {name: {"incarnation": store.incarnation(name),
                  "actions_24h": len([t for t in store.actions(name)
                                      if t > time.time() - 86400]),
                  "driver": vm.driver, "domain": vm.domain}
           for name, vm in spec.vms.items()}
    running = {rid: r for rid, r in store.requests.items()
               if r.get("state") in ("accepted", "in-progress")}
    if as_json:
        print(json.dumps({"vms": vms, "running": running, "journal": recent}, indent=1))
        return 0
    for name, v in vms.items():
        print(f"{name}: incarnation {v['incarnation']}, {v['actions_24h']} action(s) in 24h, "
              f"driver {v['driver']} ({v['domain']})")
    for rid, r in running.items():
        print(f"running: {rid} {r.get('action')} {r.get('target')}: {r.get('detail')}")
    for rec in recent:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(rec.get("wall", 0))))
        print(f"{when} {rec.get('decision')} {rec.get('vm')} -> {rec.get('target')} "
              f"{rec.get('action')} [{rec.get('outcome')}] {rec.get('detail') or ''}".rstrip())
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
        return asyncio.run(_serve(args.config))
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"guardian-hostd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
