"""``hostd.toml``: guardian-hostd's configuration, read into frozen objects.

Every value goes through a named converter (``checks.Options``); an error names the
file and the key path; unknown keys are errors::

    [hostd]
    listen = "192.0.2.1:7080"
    state_dir = "/var/lib/guardian-hostd"
    journal = "/var/lib/guardian-hostd"        # directory of journal.jsonl
    xenstore = "/run/xenstored/socket"        # also take requests over XenStore ("" off)

    alert_command = ["/usr/local/bin/notify"]  # run on every refusal (default: none)
    alert_timeout = "10s"     # the alert command is killed after this long

    [policy]
    max_actions = 3           # per VM, destructive actions in any ``window``
    window = "24h"
    min_interval = "10m"      # between two actions on a VM; doubled after each
                              # further action in the window (10m, 20m, 40m, ...)
    healthy_reset = "1h"      # a VM quiet that long after its last action starts
                              # afresh (history forgotten); "0" never
    confirm_timeout = "30s"   # how long to wait for a destroyed domain to be gone

    [vms.web1]
    uuid = "..."
    key_file = "/etc/guardian/hostd-keys/web1.keys"
    driver = "xl"             # xl | libvirt | pacemaker | command | lab | module:Class
    domain = "web1"           # name known to the toolstack (default: the table name)
    config = "/etc/xen/web1.cfg"   # xl only: what ``xl create`` is given

Driver keys: xl ``config`` (required), ``xl`` (the binary); libvirt ``uri``; pacemaker
``resource`` (default: domain), ``crm_resource``, ``crm_mon``, ``ban_node``,
``cib_file``; command ``destroy_command``, ``create_command``, ``state_command``;
lab: ``domain`` is the lab VM's name. ``command_timeout`` bounds every toolstack
command. Drivers from the ``guardian.hypervisors`` entry-point group declare their
keys (``KEYS``); keys no built-in uses end up in ``VMSpec.options``.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checks import ConfigError, ConfigErrors, Options
from ipfailover._wire import KeyFileError, KeyRing

DEFAULT_CONFIG = Path("/etc/guardian/hostd.toml")
DEFAULT_STATE_DIR = Path("/var/lib/guardian-hostd")
DEFAULT_PORT = 7080
#: The built-in drivers (any ``guardian.hypervisors`` entry point is accepted too).
DRIVERS = ("xl", "libvirt", "pacemaker", "command", "lab")


@dataclass(frozen=True)
class PolicySpec:
    """Per target VM: at most ``max_actions`` destructive actions in any ``window``;
    ``min_interval`` between the first two, doubled for each further one (capped at
    ``window``); a VM with no escalation about it for ``healthy_reset`` after its last
    action has its history forgotten (0: never)."""

    min_interval: float = 600.0
    max_actions: int = 3
    window: float = 86400.0
    healthy_reset: float = 3600.0
    confirm_timeout: float = 30.0


@dataclass(frozen=True)
class VMSpec:
    name: str
    uuid: str
    key_file: Path
    driver: str
    domain: str
    config: str | None = None  # xl: the domain config file
    uri: str | None = None  # libvirt connection URI
    destroy_command: tuple[str, ...] = ()
    create_command: tuple[str, ...] = ()
    state_command: tuple[str, ...] = ()
    command_timeout: float = 60.0
    keys: KeyRing | None = field(default=None, compare=False, repr=False)
    xl: str | None = None  # xl: the binary (default "xl" on PATH)
    resource: str | None = None  # pacemaker: the VM's resource id (default: domain)
    crm_resource: str | None = None  # pacemaker: the binary (default on PATH)
    crm_mon: str | None = None  # pacemaker: the binary (default on PATH)
    ban_node: str | None = None  # pacemaker: the node fence-peer bans it from
    cib_file: str | None = None  # pacemaker: CIB_file= for the tools (an offline CIB)
    #: keys only a plug-in driver uses (declared in its ``KEYS``), as read from TOML
    options: Mapping[str, Any] = field(default_factory=dict, compare=False)
    #: the VM this one is paired with (IP failover): the only one it may fence
    peer: str | None = None


@dataclass(frozen=True)
class HostdSpec:
    source: str
    host: str
    port: int
    state_dir: Path
    journal_dir: Path
    policy: PolicySpec
    vms: Mapping[str, VMSpec]
    #: Prometheus metrics listener ("" off): "127.0.0.1:9818" or "unix:/run/.../metrics.sock"
    metrics_listen: str = ""
    #: argv run on every refusal, the event as JSON on stdin (() = no alerts)
    alert_command: tuple[str, ...] = ()
    alert_timeout: float = 10.0
    #: xenstored's socket for the XenStore input ("" off), e.g. "/run/xenstored/socket"
    xenstore: str = ""


def parse_listen(value: object) -> tuple[str, int]:
    """``"192.0.2.1:7080"``, ``"[2001:db8::1]:7080"``, ``"192.0.2.1"`` -> (host, port)."""
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    text = value.strip()
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{value!r}: missing ']'")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{value!r} is not ADDRESS:PORT")
            port = _port(rest[1:], value)
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p, value)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r}: {host!r} is not an IP address") from None
    return host, port


def _port(text: str, whole: object) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise ValueError(f"{whole!r}: port {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{whole!r}: port {port} is not in 1..65535")
    return port


def _argv(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{value!r} is not a non-empty list of strings (an argv)")
    return tuple(value)


def load(path: Path | str | None = None, *, load_keys: bool = True) -> HostdSpec:
    """Read and validate ``path``; raises ``ConfigErrors`` listing every problem."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigErrors([ConfigError(str(p), "", "file not found")]) from None
    except PermissionError:
        raise ConfigErrors([ConfigError(str(p), "", "permission denied")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([ConfigError(str(p), "", f"TOML syntax error: {exc}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigErrors([ConfigError(str(p), "", f"not UTF-8: {exc}")]) from None
    return parse(data, str(p), load_keys=load_keys)


def parse(data: Mapping[str, Any], source: str = "<config>", *,
          load_keys: bool = True) -> HostdSpec:
    errors: list[ConfigError] = []
    top = Options(data, "", source)
    host, port = "127.0.0.1", DEFAULT_PORT
    state_dir = DEFAULT_STATE_DIR
    journal_dir: Path | None = None
    metrics_listen = ""
    xenstore = ""
    alert_command: tuple[str, ...] = ()
    alert_timeout = 10.0
    policy = PolicySpec()
    vms: dict[str, VMSpec] = {}
    try:
        h = top.sub("hostd", {})
        host, port = h.convert("listen", parse_listen)
        state_dir = Path(h.str("state_dir", str(DEFAULT_STATE_DIR)))
        j = h.str("journal", None)
        journal_dir = Path(j) if j is not None else None
        metrics_listen = h.str("metrics_listen", "")
        xenstore = h.str("xenstore", "")
        if metrics_listen:
            from guardian._metrics import MetricsError
            from guardian._metrics import parse_listen as metrics_addr

            try:
                metrics_addr(metrics_listen)
            except MetricsError as exc:
                raise h.error("metrics_listen", str(exc)) from None
        alert_command = h.convert("alert_command", _argv, ())
        alert_timeout = h.duration("alert_timeout", 10.0)
        if alert_timeout <= 0:
            raise h.error("alert_timeout", "must be more than 0")
        h.finish()
    except ConfigError as exc:
        errors.append(exc)
    try:
        po = top.sub("policy", {})
        if "max_per_day" in po:
            raise po.error("max_per_day", "renamed: use max_actions (with window = \"24h\")")
        policy = PolicySpec(
            min_interval=po.duration("min_interval", 600.0),
            max_actions=po.int("max_actions", 3, minimum=1),
            window=po.duration("window", 86400.0),
            healthy_reset=po.duration("healthy_reset", 3600.0),
            confirm_timeout=po.duration("confirm_timeout", 30.0),
        )
        if policy.confirm_timeout <= 0:
            raise po.error("confirm_timeout", "must be more than 0")
        if policy.window <= 0:
            raise po.error("window", "must be more than 0")
        po.finish()
    except ConfigError as exc:
        errors.append(exc)
    try:
        vtop = top.sub("vms", {})
        for name in vtop.keys():
            try:
                vms[name] = _vm(vtop.sub(name), name, load_keys)
            except ConfigError as exc:
                errors.append(exc)
        vtop.finish()
    except ConfigError as exc:
        errors.append(exc)
    try:
        top.finish()
    except ConfigError as exc:
        errors.append(exc)
    # no VM configured is valid (the shipped config): every request is then refused
    uuids: dict[str, str] = {}
    for name, vm in vms.items():
        if vm.uuid in uuids:
            errors.append(ConfigError(source, f"vms.{name}.uuid",
                                      f"same uuid as vms.{uuids[vm.uuid]}"))
        uuids[vm.uuid] = name
        if vm.peer is not None and vm.peer not in vms:
            errors.append(ConfigError(source, f"vms.{name}.peer",
                                      f"{vm.peer!r} is not a configured VM ([vms.NAME])"))
    if errors:
        raise ConfigErrors(errors)
    return HostdSpec(source=source, host=host, port=port, state_dir=state_dir,
                     journal_dir=journal_dir if journal_dir is not None else state_dir,
                     policy=policy, vms=vms, metrics_listen=metrics_listen,
                     alert_command=alert_command, alert_timeout=alert_timeout,
                     xenstore=xenstore)


def _vm(o: Options, name: str, load_keys: bool) -> VMSpec:
    from ._drivers import UnknownDriverError, driver_keys, load_driver_class

    uuid = o.str("uuid")
    key_file = Path(o.str("key_file"))
    driver = o.str("driver")
    try:
        cls = load_driver_class(driver)
    except UnknownDriverError as exc:
        raise o.error("driver", str(exc)) from None
    uses, required = driver_keys(cls)
    domain = o.str("domain", name)
    peer = o.str("peer", None)
    if peer == name:
        raise o.error("peer", "a VM cannot be its own peer")
    timeout = o.duration("command_timeout", 60.0)
    if timeout <= 0:
        raise o.error("command_timeout", "must be more than 0")
    values: dict[str, Any] = {}
    for key, conv in _DRIVER_KEYS.items():
        if key not in o:
            if key in required:
                raise o.error(key, f"is required with driver = {driver!r}")
            continue
        if key not in uses:
            users = sorted(d for d, ks in _BUILTIN_KEYS.items() if key in ks)
            raise o.error(key, f"not used by driver = {driver!r} (only by "
                               f"{' or '.join(users)})")
        values[key] = o.convert(key, conv)
    for key in sorted(required - set(_DRIVER_KEYS)):
        if key not in o:
            raise o.error(key, f"is required with driver = {driver!r}")
    options = {key: o.raw(key) for key in o.keys() if key in uses - set(_DRIVER_KEYS)}
    keys: KeyRing | None = None
    if load_keys:
        try:
            keys = KeyRing.load(key_file)
        except KeyFileError as exc:
            raise o.error("key_file", str(exc)) from None
    o.finish()
    return VMSpec(name=name, uuid=uuid, key_file=key_file, driver=driver, domain=domain,
                  command_timeout=timeout, keys=keys, options=options, peer=peer, **values)


def _str(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{value!r} is not a non-empty string")
    return value


#: The driver-specific keys of the built-in drivers and their converters.
_DRIVER_KEYS: dict[str, Any] = {
    "config": _str, "xl": _str, "uri": _str,
    "destroy_command": _argv, "create_command": _argv, "state_command": _argv,
    "resource": _str, "crm_resource": _str, "crm_mon": _str, "ban_node": _str,
    "cib_file": _str,
}
#: Which built-in driver uses which of them (for error messages).
_BUILTIN_KEYS = {
    "xl": ("config", "xl"), "libvirt": ("uri",),
    "command": ("destroy_command", "create_command", "state_command"),
    "pacemaker": ("resource", "crm_resource", "crm_mon", "ban_node", "cib_file"),
}
