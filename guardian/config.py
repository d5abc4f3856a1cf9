"""Reading guardian's TOML configuration into frozen, validated objects.

``/etc/guardian/guardian.toml`` plus ``/etc/guardian/conf.d/*.toml`` in sorted
order.  Every error names the file and the key path; unknown keys are errors;
``load()`` either returns a complete ``GuardianSpec`` or raises
``ConfigErrors`` with every problem found.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import socket
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from checks import ConfigError, ConfigErrors, Options, build_check, format_duration
from ipfailover._settings import DEFAULT_KEY_FILE, DEFAULT_PORT, GroupSettings, PathSettings

from ._model import (
    CheckSpec,
    EscalationSpec,
    FailoverSpec,
    GuardianSpec,
    LadderStep,
    RestartPolicy,
    ServiceSpec,
    WatchdogSpec,
)
from ._states import LadderAction, Mode

DEFAULT_CONFIG = Path("/etc/guardian/guardian.toml")

_SERVICE_KEYS = {
    "backend", "enabled", "mode", "rise", "fall", "start_grace", "requires", "healthy_reset",
    "watch_pid", "ladder", "restart", "checks",
}
_CHECK_COMMON = {"type", "name", "interval", "timeout", "mode"}


def config_files(path: Path) -> list[Path]:
    """The main file and, beside it, ``conf.d/*.toml`` in sorted order."""
    files = [path]
    confd = path.parent / "conf.d"
    if confd.is_dir():
        # a dangling link (ln -s made from the wrong directory) stays in the list:
        # reading it fails with "file not found", naming the link
        files.extend(sorted(p for p in confd.glob("*.toml") if p.is_file() or p.is_symlink()))
    return files


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except PermissionError:
        raise ConfigError(str(path), "", "permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"TOML syntax error: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "", f"not UTF-8: {exc}") from None


def load(path: Path | str | None = None, *, include_confd: bool = True) -> GuardianSpec:
    """Read, merge and validate the configuration rooted at ``path``."""
    root = Path(path) if path is not None else DEFAULT_CONFIG
    files = config_files(root) if include_confd else [root]
    docs: list[tuple[str, dict[str, Any]]] = []
    errors: list[ConfigError] = []
    for f in files:
        try:
            docs.append((_display(f, root), _read_toml(f)))
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise ConfigErrors(errors)
    return parse_documents(docs)


def loads(text: str, source: str = "<string>") -> GuardianSpec:
    """Parse one TOML document (for tests and library use)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([ConfigError(source, "", f"TOML syntax error: {exc}")]) from None
    return parse_documents([(source, doc)])


def _display(path: Path, root: Path) -> str:
    """``guardian.toml`` or ``conf.d/web.toml``: short, but unambiguous."""
    try:
        return str(path.relative_to(root.parent))
    except ValueError:
        return str(path)


def _named_tables(source: str, key: str, value: Any, seen: dict[str, tuple[str, Any]],
                  errors: list[ConfigError]) -> list[tuple[str, tuple[str, Any]]]:
    """The new ``name -> (source, table)`` entries of a ``[key.NAME]`` section; a name
    already defined in an earlier file is an error (conf.d snippets may not redefine)."""
    if not isinstance(value, Mapping):
        errors.append(ConfigError(source, key, "must be a table"))
        return []
    out = []
    for name, tbl in value.items():
        if name in seen:
            errors.append(ConfigError(source, f"{key}.{name}",
                                      f"already defined in {seen[name][0]}"))
            continue
        seen[name] = (source, tbl)
        out.append((name, (source, tbl)))
    return out


def parse_documents(docs: Sequence[tuple[str, Mapping[str, Any]]]) -> GuardianSpec:
    errors: list[ConfigError] = []
    warnings: list[str] = []
    guardian_tbl: dict[str, tuple[str, Any]] = {}
    backends: dict[str, dict[str, Any]] = {}
    backend_src: dict[str, str] = {}
    services: dict[str, tuple[str, Mapping[str, Any]]] = {}
    backend_tables: dict[str, tuple[str, Any]] = {}
    failover_tbl: dict[str, tuple[str, Any]] = {}
    failover_groups: dict[str, tuple[str, Any]] = {}
    escalation_tbl: dict[str, tuple[str, Any]] = {}
    watchdog_tbl: dict[str, tuple[str, Any]] = {}

    for source, doc in docs:
        for key, value in doc.items():
            if key == "guardian":
                if not isinstance(value, Mapping):
                    errors.append(ConfigError(source, key, "must be a table"))
                    continue
                for k, v in value.items():
                    if k in guardian_tbl:
                        errors.append(ConfigError(
                            source, f"guardian.{k}",
                            f"already set in {guardian_tbl[k][0]}"))
                    guardian_tbl[k] = (source, v)
            elif key == "backends":
                for name, (src, tbl) in _named_tables(source, key, value, backend_tables,
                                                      errors):
                    if not isinstance(tbl, Mapping):
                        errors.append(ConfigError(src, f"backends.{name}", "must be a table"))
                        continue
                    backends[name] = dict(tbl)
                    backend_src[name] = src
            elif key == "services":
                services.update(_named_tables(source, key, value, services, errors))
            elif key == "failover":
                if not isinstance(value, Mapping):
                    errors.append(ConfigError(source, key, "must be a table"))
                    continue
                for k, v in value.items():
                    if k == "groups":
                        _named_tables(source, "failover.groups", v, failover_groups, errors)
                        continue
                    if k in failover_tbl:
                        errors.append(ConfigError(source, f"failover.{k}",
                                                  f"already set in {failover_tbl[k][0]}"))
                    failover_tbl[k] = (source, v)
            elif key in ("escalation", "watchdog"):
                if not isinstance(value, Mapping):
                    errors.append(ConfigError(source, key, "must be a table"))
                    continue
                merged = escalation_tbl if key == "escalation" else watchdog_tbl
                for k, v in value.items():
                    if k in merged:
                        errors.append(ConfigError(source, f"{key}.{k}",
                                                  f"already set in {merged[k][0]}"))
                    merged[k] = (source, v)
            else:
                errors.append(ConfigError(source, key, "unknown key"))

    # [guardian]
    g_values: dict[str, Any] = {}
    g_source = docs[0][0] if docs else "<config>"
    gopts = Options({k: v for k, (_, v) in guardian_tbl.items()}, "guardian", g_source)
    try:
        g_values["control_socket"] = Path(gopts.str("control_socket",
                                                    "/run/guardian/control.sock"))
        g_values["state_dir"] = Path(gopts.str("state_dir", "/var/lib/guardian"))
        g_values["log_level"] = gopts.choice("log_level",
                                             ("debug", "info", "warning", "error"), "info")
        g_values["log_target"] = gopts.choice("log_target", ("stderr", "journal"), "stderr")
        g_values["alert_command"] = tuple(gopts.convert("alert_command", _command, []))
        g_values["hook_timeout"] = gopts.duration("hook_timeout", 30.0)
        g_values["metrics_listen"] = gopts.str("metrics_listen", "")
        g_values["metrics_allow_remote"] = gopts.bool("metrics_allow_remote", False)
        if g_values["metrics_listen"]:
            from ._metrics import MetricsError, parse_listen

            try:
                parse_listen(g_values["metrics_listen"],
                             allow_remote=g_values["metrics_allow_remote"])
            except MetricsError as exc:
                raise gopts.error("metrics_listen", str(exc)) from None
        gopts.finish()
    except ConfigError as exc:
        src = guardian_tbl.get(exc.path.split(".")[1] if "." in exc.path else "", (g_source,))[0]
        errors.append(ConfigError(src, exc.path, exc.message))

    # [backends.*] -- validated by building each one used
    from .backends import load_backend_class

    backend_objs: dict[str, Any] = {}

    def backend_for(name: str, source: str, path: str) -> Any:
        if name in backend_objs:
            return backend_objs[name]
        try:
            cls = load_backend_class(name)
        except LookupError as exc:
            raise ConfigError(source, path, str(exc)) from None
        bsrc = backend_src.get(name, source)
        bopts = Options(backends.get(name, {}), f"backends.{name}", bsrc)
        obj = cls.from_options(bopts)
        bopts.finish()
        backend_objs[name] = obj
        return obj

    for name in backends:
        try:
            backend_for(name, backend_src[name], f"backends.{name}")
        except ConfigError as exc:
            errors.append(exc)

    specs: dict[str, ServiceSpec] = {}
    for name, (source, tbl) in services.items():
        try:
            spec, warns = _parse_service(name, source, tbl, backend_for)
        except ConfigError as exc:
            errors.append(exc)
            continue
        warnings.extend(warns)
        if spec is not None:
            specs[name] = spec

    # dependencies: known, and no cycles
    for name, spec in specs.items():
        for i, dep in enumerate(spec.requires):
            if dep not in services:
                errors.append(ConfigError(spec.source, f"services.{name}.requires[{i}]",
                                          f"no service named {dep!r}"))
            elif dep not in specs and _enabled(services[dep][1]):
                pass  # its own error is reported already
    cycle = _find_cycle(specs)
    if cycle:
        first = specs[cycle[0]]
        errors.append(ConfigError(first.source, f"services.{cycle[0]}.requires",
                                  "dependency cycle: " + " -> ".join(cycle)))

    failover: FailoverSpec | None = None
    if failover_tbl or failover_groups:
        failover = _parse_failover(failover_tbl, failover_groups, specs, services,
                                   str(g_values.get("state_dir", "/var/lib/guardian")),
                                   g_source, errors, warnings)
    for name, spec in specs.items():
        for i, step in enumerate(spec.ladder):
            if step.action is LadderAction.FAILOVER and (
                    failover is None or not failover.tracking(name)):
                warnings.append(
                    f"{spec.source}: services.{name}.ladder[{i}]: failover, but no failover "
                    f"group tracks {name} ([failover.groups.NAME] services = [\"{name}\"]): "
                    "the step will be logged only")
    escalation = _parse_escalation(escalation_tbl, specs, errors, warnings)
    watchdog = _parse_watchdog(watchdog_tbl, specs, services, errors, warnings)
    if failover is not None:
        for name, g in failover.groups.items():
            if g.fence == "dom0" and escalation is None:
                errors.append(ConfigError(
                    failover_groups[name][0], f"failover.groups.{name}.fence",
                    "\"dom0\" asks dom0 (guardian-hostd) to fence the peer through the "
                    "escalation channel: configure [escalation] too"))
    if errors:
        raise ConfigErrors(errors)
    if not specs:
        warnings.append("no service is enabled: guardian supervises nothing until you enable one")
    return GuardianSpec(
        services=specs,
        failover=failover,
        escalation=escalation,
        watchdog=watchdog,
        backends={k: dict(v) for k, v in backends.items()},
        sources=tuple(s for s, _ in docs),
        warnings=tuple(warnings),
        **g_values,
    )


def _parse_escalation(tbl: Mapping[str, tuple[str, Any]], specs: Mapping[str, ServiceSpec],
                      errors: list[ConfigError], warnings: list[str]
                      ) -> EscalationSpec | None:
    """``[escalation]`` (see ``guardian.escalation``); None when absent."""
    spec = None
    if tbl:
        from .escalation._settings import parse_escalation

        source = next(iter(tbl.values()))[0]
        try:
            spec = parse_escalation({k: v for k, (_, v) in tbl.items()}, source)
        except ConfigError as exc:
            src = tbl.get(exc.path.split(".")[1] if "." in exc.path else "", (source,))[0]
            errors.append(ConfigError(src, exc.path, exc.message))
    for name, sspec in specs.items():
        for i, step in enumerate(sspec.ladder):
            if step.action is LadderAction.ESCALATE and not tbl:
                warnings.append(
                    f"{sspec.source}: services.{name}.ladder[{i}]: escalate, but there is no "
                    "[escalation] section: the step will be logged only")
    return spec


def _parse_watchdog(tbl: Mapping[str, tuple[str, Any]], specs: Mapping[str, ServiceSpec],
                    all_services: Mapping[str, Any], errors: list[ConfigError],
                    warnings: list[str]) -> WatchdogSpec | None:
    """``[watchdog]``: the dead-man switch (``guardian._deadman``); None when absent."""
    if not tbl:
        return None
    source = next(iter(tbl.values()))[0]
    opts = Options({k: v for k, (_, v) in tbl.items()}, "watchdog", source)

    def src(key: str) -> str:
        return tbl[key][0] if key in tbl else source

    try:
        device = opts.str("device", "/dev/watchdog")
        timeout = opts.duration("timeout", 30.0)
        interval = opts.duration("interval", 0.0)
        critical = tuple(opts.str_list("critical", []))
        grace = opts.duration("critical_grace", 300.0)
        disarm = opts.bool("disarm_on_stop", True)
        opts.finish()
    except ConfigError as exc:
        key = exc.path.split(".")[1] if "." in exc.path else ""
        errors.append(ConfigError(src(key), exc.path, exc.message))
        return None
    if not device.startswith("/"):
        errors.append(ConfigError(src("device"), "watchdog.device", "must be an absolute path"))
        return None
    if timeout and not 1 <= timeout <= 3600:
        errors.append(ConfigError(src("timeout"), "watchdog.timeout",
                                  "must be 0 (the device's own) or 1s..1h"))
        return None
    spec = WatchdogSpec(device=device, timeout=timeout, interval=interval, critical=critical,
                        critical_grace=grace, disarm_on_stop=disarm, source=source)
    if timeout and spec.period >= timeout:
        errors.append(ConfigError(src("interval"), "watchdog.interval",
                                  f"must be shorter than timeout ({format_duration(timeout)})"))
        return None
    for i, name in enumerate(critical):
        if name not in specs:
            why = ("is disabled" if name in all_services
                   else "is not a configured service ([services.NAME])")
            errors.append(ConfigError(src("critical"), f"watchdog.critical[{i}]",
                                      f"{name!r} {why}"))
            return None
    if not critical:
        warnings.append(f"{source}: watchdog: no critical services: the pets stop only "
                        "when guardiand itself hangs or dies")
    return spec


def _enabled(tbl: Mapping[str, Any]) -> bool:
    return not (isinstance(tbl, Mapping) and tbl.get("enabled") is False)


def _command(value: object) -> list[str]:
    import shlex

    if isinstance(value, str):
        parts = shlex.split(value)
        if not parts:
            raise ValueError("empty command")
        return parts
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(f"{value!r} is not a command (a string or a list of strings)")


def _parse_service(name: str, source: str, tbl: Mapping[str, Any],
                   backend_for: Any) -> tuple[ServiceSpec | None, list[str]]:
    path = f"services.{name}"
    opts = Options(tbl, path, source)
    warnings: list[str] = []
    enabled = opts.bool("enabled", True)
    backend_name = opts.str("backend")
    mode = Mode(opts.choice("mode", ("act", "observe"), "act"))
    rise = opts.int("rise", 2, minimum=1, maximum=100)
    fall = opts.int("fall", 2, minimum=1, maximum=100)
    start_grace = opts.duration("start_grace", 10.0)
    requires = tuple(opts.str_list("requires", []))
    healthy_reset = opts.duration("healthy_reset", 600.0)
    watch_pid = opts.bool("watch_pid", True)

    rtbl = opts.sub("restart", {})
    policy = RestartPolicy(
        budget=rtbl.int("budget", 3, minimum=0, maximum=1000),
        window=rtbl.duration("window", 300.0),
        backoff=rtbl.duration("backoff", 1.0),
        factor=rtbl.convert("factor", _factor, 2.0),
        backoff_max=rtbl.duration("backoff_max", 30.0),
        jitter=rtbl.convert("jitter", _fraction, 0.1),
        timeout=rtbl.duration("timeout", 15.0),
        exhausted_retry=rtbl.duration("exhausted_retry", 60.0),
    )
    rtbl.finish()
    if policy.window <= 0:
        raise rtbl.error("window", "must be longer than 0")

    ladder = tuple(_parse_ladder(opts, path, source))

    checks_raw = opts.raw("checks", [])
    if not isinstance(checks_raw, list):
        raise opts.error("checks", "must be an array of tables ([[services.NAME.checks]])")
    checks: list[CheckSpec] = []
    names: set[str] = set()
    for i, ctbl in enumerate(checks_raw):
        cpath = f"{path}.checks[{i}]"
        copts = Options(ctbl, cpath, source)
        kind = copts.str("type")
        cname = copts.str("name", kind if kind not in names else f"{kind}{i}")
        if cname in names:
            raise copts.error("name", f"duplicate check name {cname!r} (set name = ...)")
        names.add(cname)
        interval = copts.duration("interval", 1.0)
        timeout = copts.duration("timeout", min(interval, 1.0) if interval > 0 else 1.0)
        cmode = Mode(copts.choice("mode", ("act", "observe"), mode.value))
        if interval <= 0:
            raise copts.error("interval", "must be longer than 0")
        if timeout <= 0:
            raise copts.error("timeout", "must be longer than 0")
        own = {k: v for k, v in ctbl.items() if k not in _CHECK_COMMON}
        check = build_check(kind, own, cpath, source)
        if timeout > interval:
            warnings.append(f"{source}: {cpath}: timeout {format_duration(timeout)} is longer "
                            f"than interval {format_duration(interval)}: a slow probe delays "
                            "the next run (at most one run of a check is in flight)")
        if interval < 0.05:
            warnings.append(f"{source}: {cpath}: interval {format_duration(interval)} is very "
                            "short; every run costs CPU inside the guest")
        checks.append(CheckSpec(cname, check, interval, timeout, cmode,
                                CheckSpec.fingerprint_of(ctbl)))

    # The backend consumes its own per-service keys (unit, start_command, ...).
    controller_options = {k: v for k, v in tbl.items() if k not in _SERVICE_KEYS}
    backend = backend_for(backend_name, source, f"{path}.backend")
    bopts = Options(controller_options, path, source)
    backend.controller(name, bopts)
    bopts.finish()
    # every key of the service table is now either ours or the backend's
    for key in controller_options:
        opts.raw(key)
    opts.finish()

    if not enabled:
        return None, warnings

    if not checks:
        warnings.append(f"{source}: {path}: no checks: only process exits are noticed")
    slowest = max((c.interval for c in checks), default=0.0)
    if checks and start_grace < rise * slowest:
        warnings.append(
            f"{source}: {path}: start_grace {format_duration(start_grace)} is shorter than "
            f"rise x interval ({rise} x {format_duration(slowest)}): a restarted service "
            "cannot be seen healthy before its grace ends")
    if policy.budget > 1:
        spent = sum(policy.delay(k) for k in range(policy.budget))
        if spent * (1 - policy.jitter) >= policy.window:
            warnings.append(
                f"{source}: {path}.restart: a budget of {policy.budget} in "
                f"{format_duration(policy.window)} can never be spent: the backoff alone takes "
                f"{format_duration(spent)}")
    if policy.backoff_max < policy.backoff:
        warnings.append(f"{source}: {path}.restart: backoff_max is shorter than backoff")
    if not ladder:
        warnings.append(f"{source}: {path}: empty ladder: when the budget is spent nothing but "
                        "slow retries happen and nobody is told")
    spec = ServiceSpec(
        name=name, backend=backend_name, controller_options=controller_options,
        checks=tuple(checks), rise=rise, fall=fall, start_grace=start_grace,
        requires=requires, restart=policy, ladder=ladder, healthy_reset=healthy_reset,
        mode=mode, watch_pid=watch_pid, source=source,
        fingerprint=CheckSpec.fingerprint_of(dict(tbl)),
    )
    return spec, warnings


def _factor(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{value!r} is not a number")
    if value < 1:
        raise ValueError(f"{value} must be at least 1")
    return float(value)


def _fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{value!r} is not a number")
    if not 0 <= value < 1:
        raise ValueError(f"{value} must be in [0, 1)")
    return float(value)


def _parse_ladder(opts: Options, path: str, source: str) -> list[LadderStep]:
    raw = opts.raw("ladder", ["alert"])
    if not isinstance(raw, list):
        raise opts.error("ladder", "must be an array of actions or tables")
    steps: list[LadderStep] = []
    choices = tuple(a.value for a in LadderAction)
    for i, item in enumerate(raw):
        spath = f"{path}.ladder[{i}]"
        if isinstance(item, str):
            item = {"action": item}
        sopts = Options(item, spath, source)
        action = LadderAction(sopts.choice("action", choices))
        command = tuple(sopts.convert("command", _command, []))
        timeout = sopts.duration("timeout", 30.0)
        sopts.finish()
        if action is LadderAction.EXEC and not command:
            raise ConfigError(source, f"{spath}.command", "is required for action exec")
        steps.append(LadderStep(action, command, timeout))
    return steps


def _find_cycle(specs: Mapping[str, ServiceSpec]) -> list[str]:
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str]:
        color[n] = 1
        stack.append(n)
        for d in specs[n].requires:
            if d not in specs:
                continue
            if color.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if color.get(d) is None:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        color[n] = 2
        return []

    for n in sorted(specs):
        if color.get(n) is None:
            found = visit(n)
            if found:
                return found
    return []


# ---------------------------------------------------------------- [failover]
_GROUP_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
# PairConfig's setting names -> our keys (None: the [failover] table's key)
_PAIR_KEYS: dict[str, str | None] = {
    "node": None, "renew_interval": "lease", "switchover_timeout": "interval"}


def _node_name(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    if not 1 <= len(value.encode("utf-8")) <= 64 or any(c.isspace() for c in value):
        raise ValueError(f"{value!r}: a node name is 1-64 bytes, no spaces")
    return value


def _ifname(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    if not 0 < len(value) < 16 or "/" in value or any(c.isspace() for c in value):
        raise ValueError(f"{value!r}: an interface name is 1-15 characters, no '/' or spaces")
    return value


def _ip(value: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not an address (a string)")
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _ip_list(value: object) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise TypeError(f"{value!r} is not a list of addresses")
    return [_ip(v) for v in value]


def _vip_list(value: object) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise TypeError(f"{value!r} is not a list of addresses (\"192.0.2.100/24\")")
    out: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
    for v in value:
        if not isinstance(v, str):
            raise TypeError(f"{v!r} is not an address (\"192.0.2.100/24\")")
        try:
            vip = ipaddress.ip_interface(v.strip())
        except ValueError:
            raise ValueError(f"{v!r} is not an address with a prefix length "
                             "(\"192.0.2.100/24\", \"2001:db8::100/64\")") from None
        ip = vip.ip
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
            raise ValueError(f"{v!r} is not a unicast address")
        if ip.version == 6 and ip.is_link_local:
            raise ValueError(f"{v!r}: a link-local VIP is not supported")
        if any(o.ip == ip for o in out):
            raise ValueError(f"{ip} is listed twice")
        out.append(vip)
    if len(out) > 8:
        raise ValueError(f"at most 8 VIPs per group, got {len(out)}")
    return out


def _hook(value: object) -> list[str]:
    if value == []:
        return []
    return _command(value)


def _parse_failover(top: Mapping[str, tuple[str, Any]], groups: Mapping[str, tuple[str, Any]],
                    specs: Mapping[str, ServiceSpec],
                    all_services: Mapping[str, tuple[str, Any]], state_dir: str,
                    default_source: str, errors: list[ConfigError],
                    warnings: list[str]) -> FailoverSpec | None:
    first = next(iter(top.values()), None) or next(iter(groups.values()), None)
    fsource = first[0] if first else default_source
    fopts = Options({k: v for k, (_, v) in top.items()}, "failover", fsource)
    try:
        node = fopts.convert("node", _node_name, None)
        if node is None:
            node = _node_name(socket.gethostname())
        key_file = fopts.str("key_file", DEFAULT_KEY_FILE)
        port = fopts.int("port", DEFAULT_PORT, minimum=1, maximum=65535)
        fopts.finish()
        if not key_file.startswith("/"):
            raise fopts.error("key_file", "must be an absolute path")
    except ConfigError as exc:
        key = exc.path.split(".", 1)[1] if "." in exc.path else ""
        errors.append(ConfigError(top.get(key, (fsource,))[0], exc.path, exc.message))
        return None
    except ValueError as exc:  # the hostname as node name
        errors.append(ConfigError(fsource, "failover.node", f"the hostname: {exc}; set node"))
        return None
    missing = [deb for mod, deb in (("pyroute2", "python3-pyroute2"), ("scapy", "python3-scapy"))
               if importlib.util.find_spec(mod) is None]
    if groups and missing:
        errors.append(ConfigError(fsource, "failover", "IP failover needs "
                                  f"{' and '.join(missing)}, which is not installed"))
        return None
    out: dict[str, GroupSettings] = {}
    binds: dict[tuple[str, int], str] = {}
    cold_owner: dict[str, str] = {}
    for name, (source, tbl) in groups.items():
        try:
            g, warns = _parse_group(name, source, tbl, node=node, key_file=key_file, port=port,
                                    state_dir=state_dir, specs=specs, all_services=all_services)
        except ConfigError as exc:
            errors.append(exc)
            continue
        path = f"failover.groups.{name}"
        bad = False
        for i, p in enumerate(g.paths):
            where = (str(p.local), g.port)
            if where in binds and binds[where] != name:
                errors.append(ConfigError(source, f"{path}.paths[{i}].local",
                                          f"{p.local} port {g.port} is used by group "
                                          f"{binds[where]!r} too: give one of them its own "
                                          "port (port = ...)"))
                bad = True
            binds[where] = name
        for c in g.cold:
            if c in cold_owner:
                errors.append(ConfigError(source, f"{path}.cold",
                                          f"{c!r} is a cold service of group "
                                          f"{cold_owner[c]!r} already"))
                bad = True
            cold_owner[c] = name
        warnings.extend(warns)
        if not bad:
            out[name] = g
    if not groups:
        warnings.append(f"{fsource}: failover: no groups ([failover.groups.NAME]): no address "
                        "fails over")
    return FailoverSpec(node=node, key_file=key_file, port=port, groups=out)


def _parse_group(name: str, source: str, tbl: Any, *, node: str, key_file: str, port: int,
                 state_dir: str, specs: Mapping[str, ServiceSpec],
                 all_services: Mapping[str, tuple[str, Any]]) -> tuple[GroupSettings, list[str]]:
    path = f"failover.groups.{name}"
    if not _GROUP_RE.match(name):
        raise ConfigError(source, path, "a group name is 1-32 letters, digits, '_', '.' or '-'")
    opts = Options(tbl, path, source)
    warnings: list[str] = []
    peer = opts.convert("peer", _node_name)
    priority = opts.int("priority", 100, minimum=0, maximum=255)
    interface = opts.convert("interface", _ifname, "eth0")
    vips = tuple(opts.convert("vips", _vip_list))
    raw_paths = opts.raw("paths")
    gport = opts.int("port", port, minimum=1, maximum=65535)
    interval = opts.duration("interval", 0.1)
    lease = opts.duration("lease", 3.0)
    preempt = opts.bool("preempt", False)
    preempt_delay = opts.duration("preempt_delay", 30.0)
    min_healthy = opts.duration("min_healthy", 10.0)
    init_dead = opts.duration("init_dead", 2.0)
    fence = opts.choice("fence", ("none", "dom0"), "none")
    fence_vm = opts.convert("fence_vm", _node_name, "")
    fence_timeout = opts.duration("fence_timeout", 15.0)
    tracked = tuple(opts.str_list("services", []))
    cold = tuple(opts.str_list("cold", []))
    cold_timeout = opts.duration("cold_timeout", 30.0)
    ping = tuple(opts.convert("ping", _ip_list, []))
    ping_interval = opts.duration("ping_interval", 1.0)
    ping_timeout = opts.duration("ping_timeout", 0.5)
    notify = tuple(opts.convert("notify", _hook, []))
    notify_timeout = opts.duration("notify_timeout", 30.0)
    announce_count = opts.int("announce_count", 3, minimum=1, maximum=20)
    announce_interval = opts.duration("announce_interval", 0.1)
    announce_refresh = opts.duration("announce_refresh", 10.0)
    track_interface = opts.bool("track_interface", True)
    unicast_clients = opts.bool("unicast_clients", True)
    verify_explicit = "verify" in opts
    verify = tuple(opts.convert("verify", _ip_list, list(ping)))
    verify_timeout = opts.duration("verify_timeout", 1.0)
    opts.finish()

    if peer == node:
        raise opts.error("peer", f"is this node's own name ({node!r}, failover.node)")
    if lease != int(lease) or not 2 <= lease <= 3600:
        raise opts.error("lease", f"{format_duration(lease)}: want whole seconds, 2s..1h (the "
                         "kernel counts address lifetimes in seconds; renewed every second)")
    if not isinstance(raw_paths, list) or not raw_paths:
        raise opts.error("paths", "must be a list of tables: [{ local = \"ADDR\", "
                         "peer = \"ADDR\" }]")
    if len(raw_paths) > 8:
        raise opts.error("paths", f"at most 8 paths, got {len(raw_paths)}")
    paths: list[PathSettings] = []
    for i, ptbl in enumerate(raw_paths):
        popts = Options(ptbl, f"{path}.paths[{i}]", source)
        local = popts.convert("local", _ip)
        remote = popts.convert("peer", _ip)
        pif = popts.convert("interface", _ifname, None)
        popts.finish()
        if local.version != remote.version:
            raise popts.error("peer", f"{remote} and local {local} are not the same family")
        if local == remote:
            raise popts.error("peer", "is the local address")
        if any(p.local == local and p.peer == remote for p in paths):
            raise popts.error("peer", "the same path is listed twice")
        paths.append(PathSettings(local, remote, pif))
    for key, value in (("ping_interval", ping_interval), ("ping_timeout", ping_timeout),
                       ("notify_timeout", notify_timeout), ("cold_timeout", cold_timeout),
                       ("verify_timeout", verify_timeout)):
        if value <= 0:
            raise opts.error(key, "must be longer than 0")
    if announce_interval > 10:
        raise opts.error("announce_interval", "must be at most 10s")
    for key, names in (("services", tracked), ("cold", cold)):
        for i, svc in enumerate(names):
            if svc not in specs:
                why = ("is disabled" if svc in all_services
                       else "is not a configured service ([services.NAME])")
                raise ConfigError(source, f"{path}.{key}[{i}]", f"{svc!r} {why}")
        if len(set(names)) != len(names):
            raise opts.error(key, "lists a service twice")
    g = GroupSettings(
        group=name, node=node, peer=peer, vips=vips, paths=tuple(paths), interface=interface,
        priority=priority, port=gport, key_file=key_file, state_dir=state_dir,
        interval=interval, lease=int(lease), preempt=preempt, preempt_delay=preempt_delay,
        min_healthy=min_healthy, init_dead=init_dead, fence=fence, fence_vm=fence_vm,
        fence_timeout=fence_timeout, services=tracked,
        cold=cold, cold_timeout=cold_timeout, ping=ping, ping_interval=ping_interval,
        ping_timeout=ping_timeout, notify=notify, notify_timeout=notify_timeout,
        announce_count=announce_count, announce_interval=announce_interval,
        announce_refresh=announce_refresh, track_interface=track_interface,
        unicast_clients=unicast_clients, verify=verify, verify_timeout=verify_timeout,
    )
    try:
        g.pair_config()
    except ValueError as exc:
        text = str(exc)
        setting, _, why = text.removeprefix("failover setting ").partition(": ")
        ours = _PAIR_KEYS.get(setting, setting)
        raise ConfigError(source, f"{path}.{ours}" if ours else "failover.node",
                          why or text) from None

    if fence != "dom0":
        for key, given in (("fence_vm", fence_vm), ("fence_timeout", "fence_timeout" in tbl)):
            if given:
                raise opts.error(key, "only used with fence = \"dom0\"")
    if fence_timeout <= 0 or fence_timeout > 300:
        raise opts.error("fence_timeout", "must be more than 0 and at most 5m")
    if init_dead < 3 * interval:
        warnings.append(f"{source}: {path}.init_dead: {format_duration(init_dead)} is shorter "
                        f"than 3 intervals: a starting node may take the VIPs before it "
                        "hears a live master")
    if verify_timeout > 60:
        raise opts.error("verify_timeout", "must be at most 1m")
    vip_ips = {v.ip for v in vips}
    for i, ip in enumerate(verify):
        if ip in vip_ips:
            raise ConfigError(source, f"{path}.verify[{i}]", f"{ip} is one of the VIPs")
        if verify_explicit and not any(v.ip.version == ip.version for v in vips):
            warnings.append(f"{source}: {path}.verify: {ip} has no VIP of its family "
                            "to check")
    if ping_timeout > ping_interval:
        warnings.append(f"{source}: {path}.ping_timeout is longer than ping_interval")
    for svc in tracked:
        if not any(s.action is LadderAction.FAILOVER for s in specs[svc].ladder):
            warnings.append(
                f"{source}: {path}.services: {svc!r} has no \"failover\" rung in its ladder "
                f"(services.{svc}.ladder): its failure never moves the VIPs")
    return g, warnings


def format_errors(exc: ConfigErrors | ConfigError) -> str:
    errs = exc.errors if isinstance(exc, ConfigErrors) else [exc]
    return "\n".join(f"error: {e}" for e in errs)
