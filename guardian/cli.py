"""The ``guardian`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from checks import ConfigError, ConfigErrors, available_checks, build_check, parse_duration
from checks import run_check as _run_check

from . import __version__
from . import config as config_mod


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="guardian",
        description="High-availability supervisor for services inside a Xen guest.")
    parser.add_argument("--version", action="version", version=f"guardian {__version__}")
    parser.add_argument("-c", "--config", type=Path, default=None,
                        help=f"configuration file (default {config_mod.DEFAULT_CONFIG} "
                             "plus conf.d/*.toml beside it)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("run", help="run the daemon in the foreground")

    p_status = sub.add_parser("status", help="show what the running daemon sees")
    p_status.add_argument("service", nargs="?", help="show one service in detail")
    p_status.add_argument("--json", action="store_true", help="machine-readable output")
    p_status.add_argument("--socket", type=Path, help="control socket (default: from config)")

    p_sw = sub.add_parser(
        "switchover", help="move a failover group's VIPs to the other node (exit 0 when done)")
    p_sw.add_argument("group", nargs="?", help="the group (default: the only one)")
    p_sw.add_argument("--socket", type=Path, help="control socket (default: from config)")

    p_check = sub.add_parser(
        "check", help="run one probe and print it like a Nagios plugin (exit 0/1/2/3)",
        description="Run one probe. Options are the check's config keys: --url X, "
                    "--expect-status 200 (values are read as TOML when they parse, so "
                    "--expect '[\"a\",\"b\"]' gives a list); repeat an option for a list.")
    p_check.add_argument("kind", help="check type: " + ", ".join(sorted(available_checks())))
    p_check.add_argument("--timeout", default="10s", help="hard deadline (default 10s)")
    p_check.add_argument("-v", "--verbose", action="store_true", help="print the transcript")

    p_val = sub.add_parser("validate", help="check a configuration; exit 2 on any error")
    p_val.add_argument("path", nargs="?", type=Path)
    p_val.add_argument("-q", "--quiet", action="store_true", help="errors only")

    sub.add_parser("sample-config", help="print a commented configuration for Apache, "
                   "BIND and Exim")

    p_ev = sub.add_parser("events", help="the incident timeline from the journal")
    p_ev.add_argument("--since", help='only records since then: "10m", "2h", "1d" ago, '
                      'or a date/time like "2026-11-26 02:00"')
    p_ev.add_argument("--service", help="one service or failover group")
    p_ev.add_argument("--json", action="store_true", help="one JSON record per line")
    p_ev.add_argument("--journal", type=Path, help="journal directory (default: "
                      "state_dir/journal from the configuration)")

    sub.add_parser("import-heartbeat", add_help=False,
                   help="convert Heartbeat's ha.cf/haresources/authkeys into guardian TOML "
                        "(import-heartbeat --help for its options)")

    args, rest = parser.parse_known_args(argv)
    if args.command == "import-heartbeat":
        from ipfailover._heartbeat import main as import_heartbeat

        return import_heartbeat(rest)
    if args.command not in ("check", "import-heartbeat") and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "run":
        from .daemon import run

        return run(args.config)
    if args.command == "status":
        return _status(args)
    if args.command == "events":
        return _events(args)
    if args.command == "switchover":
        return _switchover(args)
    if args.command == "check":
        return _check(args, rest)
    if args.command == "validate":
        return _validate(args.path or args.config, args.quiet)
    if args.command == "sample-config":
        from ._sample import SAMPLE_CONFIG

        sys.stdout.write(SAMPLE_CONFIG)
        return 0
    return 2


# ---------------------------------------------------------------- validate
def _validate(path: Path | None, quiet: bool) -> int:
    try:
        spec = config_mod.load(path)
    except (ConfigErrors, ConfigError) as exc:
        print(config_mod.format_errors(exc), file=sys.stderr)
        return 2
    for w in spec.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not quiet:
        print(f"OK: {', '.join(spec.sources)}: {len(spec.services)} service(s) enabled"
              + (f" ({', '.join(spec.start_order())})" if spec.services else ""))
    return 0


# ---------------------------------------------------------------- check
def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _check_options(rest: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--"):
            raise ConfigError("command line", arg, "expected --option value")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                value_obj: Any = True
            else:
                i += 1
                value_obj = _parse_value(rest[i])
        else:
            value_obj = _parse_value(value)
        if key in opts:
            prev = opts[key]
            opts[key] = (prev if isinstance(prev, list) else [prev]) + [value_obj]
        else:
            opts[key] = value_obj
        i += 1
    return opts


def _check(args: argparse.Namespace, rest: list[str]) -> int:
    try:
        timeout = parse_duration(args.timeout)
        opts = _check_options(rest)
        check = build_check(args.kind, opts, "", "command line")
    except (ConfigError, ValueError) as exc:
        msg = str(exc).replace("command line: type:", "command line:")
        print(f"{args.kind.upper()} UNKNOWN - {msg}")
        return 3
    result = asyncio.run(_run_check(check, timeout))
    print(result.nagios_line(args.kind))
    if args.verbose:
        for line in result.transcript:
            print(line)
    return result.status.exit_code


# ---------------------------------------------------------------- status
def _socket_path(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    try:
        spec = config_mod.load(args.config)
        return spec.control_socket
    except (ConfigErrors, ConfigError):
        return Path("/run/guardian/control.sock")


def _events(args: argparse.Namespace) -> int:
    from ._timeline import events_command

    directory = args.journal
    if directory is None:
        try:
            directory = config_mod.load(args.config).state_dir / "journal"
        except (ConfigErrors, ConfigError):
            directory = Path("/var/lib/guardian/journal")
    try:
        print(events_command(directory, args.since, args.service, args.json))
    except ValueError as exc:
        print(f"guardian events: {exc}", file=sys.stderr)
        return 2
    return 0


def _status(args: argparse.Namespace) -> int:
    from ._control import ControlError, request

    path = _socket_path(args)
    try:
        reply = request(path, "status")
    except ControlError as exc:
        print(f"guardian: {exc}", file=sys.stderr)
        return 3
    if not reply.get("ok"):
        print(f"guardian: {reply.get('error')}", file=sys.stderr)
        return 3
    status = reply["status"]
    services = status["services"]
    if args.service:
        services = [s for s in services if s["name"] == args.service]
        if not services:
            print(f"guardian: no service named {args.service!r}", file=sys.stderr)
            return 3
    if args.json:
        out = dict(status, services=services)
        print(json.dumps(out, indent=2))
    elif args.service:
        print(format_service_detail(services[0]))
    else:
        print(format_status_table(status))
    worst = 0
    for s in services:
        worst = max(worst, {"OK": 0, "WARNING": 1, "CRITICAL": 2}.get(s["verdict"], 0))
    if not args.service:
        for g in status.get("failover", []):
            worst = max(worst, {"refused": 2, "fault": 1}.get(g.get("state", ""), 0))
    return worst


def _switchover(args: argparse.Namespace) -> int:
    from ._control import ControlError, request

    path = _socket_path(args)
    payload: dict[str, Any] = {} if args.group is None else {"group": args.group}
    try:
        reply = request(path, "switchover", timeout=30.0, **payload)
    except ControlError as exc:
        print(f"guardian: {exc}", file=sys.stderr)
        return 3
    if not reply.get("ok"):
        print(f"guardian: switchover: {reply.get('error')}", file=sys.stderr)
        return 1
    outcome = reply.get("outcome") or {}
    ok = bool(outcome.get("ok"))
    print(f"switchover {reply.get('group')}: {'done' if ok else 'FAILED'}: "
          f"{outcome.get('detail', '')}")
    return 0 if ok else 1


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def format_status_table(status: dict[str, Any]) -> str:
    rows = [("SERVICE", "STATE", "VERDICT", "AGE", "SINCE", "RESTARTS", "NEXT ACTION")]
    for s in status["services"]:
        ages = [c["age"] for c in s["checks"] if c["age"] is not None]
        rows.append((
            s["name"], s["state"].upper(), s["verdict"], _age(min(ages) if ages else None),
            _age(s["since"]), f"{s['restarts_used']}/{s['restart_budget']}", s["next_action"],
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    head = (f"guardiand {status['version']} pid {status['pid']}, up {_age(status['uptime'])}, "
            f"{len(status['services'])} service(s)")
    out = [head, *lines]
    for s in status["services"]:
        if s["state"] not in ("up",):
            out.append(f"  {s['name']}: {s['reason']}")
    if not status["services"]:
        out.append("  (no service enabled: see /etc/guardian/conf.d/)")
    for g in status.get("failover", []):
        out.extend(format_failover(g))
    for e in status.get("escalations", []):
        retry = (f", next attempt in {_age(e['next_retry'])}"
                 if isinstance(e.get("next_retry"), (int, float)) else "")
        out.append(f"escalation {e.get('request_id', '?')}: {e.get('action')} for "
                   f"{e.get('service')} (incarnation {e.get('incarnation')}): "
                   f"{str(e.get('state')).upper()} after {e.get('attempts', 0)} attempt(s)"
                   f"{retry}" + (f": {e['detail']}" if e.get("detail") else ""))
    wd = status.get("watchdog")
    if wd:
        last = wd.get("last_pet_age")
        out.append(f"watchdog {wd.get('device')}: "
                   + ("PETTING" if wd.get("petting") else
                      "ARMED, NOT PETTING" if wd.get("armed") else "OFF")
                   + (f", last pet {_age(last)} ago" if isinstance(last, (int, float)) else "")
                   + f" ({wd.get('reason')})")
    reload_error = status.get("last_reload_error")
    if reload_error:
        out.append("last reload refused; the running configuration stays:")
        out.extend(f"  {line}" for line in str(reload_error).splitlines()[1:] or [reload_error])
    return "\n".join(out)


def format_failover(g: dict[str, Any]) -> list[str]:
    """The pair section of ``guardian status``: one failover group."""
    head = (f"failover {g['group']}: {str(g.get('state', '?')).upper()} "
            f"(node {g['node']}, priority {g['priority']})")
    if g.get("since_age") is not None:
        head += f" for {_age(g['since_age'])}"
    lines = [head]
    if g.get("error"):
        lines.append(f"  NOT RUNNING: {g['error']}")
        return lines
    if g.get("reason"):
        lines.append(f"  why:        {g['reason']}")
    held = ", ".join(g.get("vips_held") or []) or "none"
    lines.append(f"  VIPs:       {', '.join(g['vips'])} on {g['interface']}; held here: {held}")
    p = g.get("peer")
    if p:
        alive = "alive" if p.get("alive") else ("declared dead" if p.get("declared_dead")
                                                  else "silent")
        lines.append(f"  peer:       {p['name']} {str(p['state']).upper()}, priority "
                     f"{p['priority']}, {alive}, heard {_age(p.get('last_heard_age'))} ago"
                     + (f", holds {', '.join(p['vips'])}" if p.get("vips") else ""))
    else:
        lines.append(f"  peer:       {g['peer_name']} never heard")
    for path in g.get("paths", []):
        dev = f" dev {path['interface']}" if path.get("interface") else ""
        err = f", {path['send_errors']} send errors" if path.get("send_errors") else ""
        lines.append(f"  path {path['index']}:     {path['local']} -> {path['peer']}{dev}: "
                     f"heard {_age(path.get('heard_age'))} ago, the peer heard us "
                     f"{_age(path.get('peer_heard_us_age'))} ago{err}")
    health = g.get("local_health") or {}
    if health and not health.get("ok", True):
        lines.append(f"  health:     {health.get('reason')}")
    lt = g.get("last_transition")
    if lt:
        lines.append(f"  last:       {lt['from']} -> {lt['to']} {_age(lt['age'])} ago: "
                     f"{lt['reason']}")
    tk = g.get("last_takeover")
    if tk:
        cold = f" (cold services {tk['services_s']:.3f} s)" if tk.get("services_s") else ""
        lines.append(f"  takeover:   {_age(tk.get('age'))} ago, VIPs up and announced in "
                     f"{tk.get('vips_s', 0) * 1000:.1f} ms{cold}: {tk.get('reason', '')}")
    lc = g.get("last_convergence")
    if lc:
        rounds = (f"{lc.get('rounds', 0)} round(s), {lc.get('reannounced', 0)} "
                  "re-announcement(s)")
        if lc.get("ok"):
            lines.append(f"  converged:  {lc['seconds'] * 1000:.1f} ms after the first "
                         f"announcement ({', '.join(lc.get('confirmed', []))}; {rounds}), "
                         f"{_age(lc.get('age'))} ago")
        else:
            lines.append(f"  converged:  NOT SHOWN ({', '.join(lc.get('missing', []))}; "
                         f"{rounds}), {_age(lc.get('age'))} ago")
    known = g.get("clients_known")
    if isinstance(known, dict) and known.get("count"):
        lines.append(f"  clients:    {known['count']} recent client(s) of the VIPs known from "
                     f"the master, {_age(known.get('age'))} old (told directly at takeover)")
    drops = g.get("drops") or {}
    if drops:
        lines.append("  dropped:    " + ", ".join(f"{k} {v}" for k, v in drops.items()))
    for w in g.get("warnings", []):
        lines.append(f"  warning:    {w}")
    return lines


def format_service_detail(s: dict[str, Any]) -> str:
    lines = [
        f"{s['name']}: {s['state'].upper()} ({s['verdict']}) for {_age(s['since'])}",
        f"  reason:      {s['reason']}",
        f"  next action: {s['next_action']}",
        f"  unit:        {s['unit']} (backend {s['backend']}, pid {s['pid'] or '-'})",
        f"  restarts:    {s['restarts_used']}/{s['restart_budget']} in window, "
        f"{s['restarts_total']} since start",
        f"  mode:        {s['mode']}"
        + (f" (would have acted {s['would_do']} time(s))" if s["mode"] == "observe" else ""),
    ]
    if s["requires"]:
        lines.append(f"  requires:    {', '.join(s['requires'])}"
                     + (f" (blocked by {', '.join(s['blocked_by'])})" if s["blocked_by"] else ""))
    lines.append("  checks:")
    for c in s["checks"]:
        stale = " STALE" if c["stale"] else ""
        shadow = (f"  [observe only: would have failed the service {c['would_fail']} "
                  "time(s)]" if c.get("mode") == "observe" and s["mode"] == "act" else "")
        lines.append(f"    {c['name']:<10} {c['status'] or 'PENDING':<8} {_age(c['age']):>7} ago"
                     f"{stale}  {c['detail'] or c['target']}{shadow}")
    transcripts = [(c["name"], r) for c in s["checks"] for r in c.get("recent", [])
                   if r.get("transcript")]
    if transcripts:
        lines.append("  recent probes (newest last):")
        for name, r in transcripts:
            lines.append(f"    {name} {_age(r['ago'])} ago: {r['status']} in "
                         f"{_age(r['duration'])}: {r['detail']}")
            lines.extend(f"      {t}" for t in r["transcript"][:12])
    if s["history"]:
        lines.append("  recent transitions:")
        for h in s["history"]:
            lines.append(f"    {_age(h['ago']):>7} ago  {h['from']} -> {h['to']}: {h['reason']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
