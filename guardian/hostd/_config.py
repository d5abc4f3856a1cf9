"""``hostd.toml``: guardian-hostd's configuration, read into frozen objects.

Every value goes through a named converter (``checks.Options``); an error names the
file and the key path; unknown keys are errors::

    [hostd]
    listen = "192.0.2.1:7080"
    state_dir = "/var/lib/guardian-hostd"
    journal = "/var/lib/guardian-hostd"        # directory of journal.jsonl

    [policy]
    min_interval = "10m"      # per VM, between two destructive actions
    max_per_day = 3           # per VM, in any 24 h window
    confirm_timeout = "30s"   # how long to wait for a destroyed domain to be gone

    [vms.web1]
    uuid = "..."
    key_file = "/etc/guardian/hostd-keys/web1.keys"
    driver = "xl"             # xl | libvirt | command | lab
    domain = "web1"           # name known to the toolstack (default: the table name)
    config = "/etc/xen/web1.cfg"   # xl only: what ``xl create`` is given
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
DRIVERS = ("xl", "libvirt", "command", "lab")


@dataclass(frozen=True)
class PolicySpec:
    min_interval: float = 600.0
    max_per_day: int = 3
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
    policy = PolicySpec()
    vms: dict[str, VMSpec] = {}
    try:
        h = top.sub("hostd", {})
        host, port = h.convert("listen", parse_listen)
        state_dir = Path(h.str("state_dir", str(DEFAULT_STATE_DIR)))
        j = h.str("journal", None)
        journal_dir = Path(j) if j is not None else None
        metrics_listen = h.str("metrics_listen", "")
        if metrics_listen:
            from guardian._metrics import MetricsError
            from guardian._metrics import parse_listen as metrics_addr

            try:
                metrics_addr(metrics_listen)
            except MetricsError as exc:
                raise h.error("metrics_listen", str(exc)) from None
        h.finish()
    except ConfigError as exc:
        errors.append(exc)
    try:
        po = top.sub("policy", {})
        policy = PolicySpec(
            min_interval=po.duration("min_interval", 600.0),
            max_per_day=po.int("max_per_day", 3, minimum=1),
            confirm_timeout=po.duration("confirm_timeout", 30.0),
        )
        if policy.confirm_timeout <= 0:
            raise po.error("confirm_timeout", "must be more than 0")
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
    if errors:
        raise ConfigErrors(errors)
    return HostdSpec(source=source, host=host, port=port, state_dir=state_dir,
                     journal_dir=journal_dir if journal_dir is not None else state_dir,
                     policy=policy, vms=vms, metrics_listen=metrics_listen)


def _vm(o: Options, name: str, load_keys: bool) -> VMSpec:
    uuid = o.str("uuid")
    key_file = Path(o.str("key_file"))
    driver = o.choice("driver", DRIVERS)
    domain = o.str("domain", name)
    config = o.str("config", None)
    uri = o.str("uri", None)
    destroy = o.convert("destroy_command", _argv, ())
    create = o.convert("create_command", _argv, ())
    state = o.convert("state_command", _argv, ())
    timeout = o.duration("command_timeout", 60.0)
    if driver == "xl" and config is None:
        raise o.error("config", "is required with driver = \"xl\" (the file for xl create)")
    if driver != "xl" and config is not None:
        raise o.error("config", f"only used with driver = \"xl\", not {driver!r}")
    if driver != "libvirt" and uri is not None:
        raise o.error("uri", f"only used with driver = \"libvirt\", not {driver!r}")
    for key, argv in (("destroy_command", destroy), ("create_command", create),
                      ("state_command", state)):
        if driver in ("command", "lab") and not argv:
            raise o.error(key, f"is required with driver = {driver!r}")
        if driver not in ("command", "lab") and argv:
            raise o.error(key, f"only used with driver = \"command\" or \"lab\", not {driver!r}")
    keys: KeyRing | None = None
    if load_keys:
        try:
            keys = KeyRing.load(key_file)
        except KeyFileError as exc:
            raise o.error("key_file", str(exc)) from None
    o.finish()
    return VMSpec(name=name, uuid=uuid, key_file=key_file, driver=driver, domain=domain,
                  config=config, uri=uri, destroy_command=destroy, create_command=create,
                  state_command=state, command_timeout=timeout, keys=keys)
