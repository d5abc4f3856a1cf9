"""Convert a Heartbeat R1 configuration (``ha.cf``, ``haresources``, ``authkeys``) into
guardian's TOML: one ``[failover.groups.NAME]`` per haresources line and a
``[services.NAME]`` stub (LSB init script) per resource script.

``convert(DIR, node=...)`` reads ``DIR/ha.cf``, ``DIR/haresources`` and
``DIR/authkeys`` (Heartbeat's ``/etc/ha.d``) and returns a ``Conversion``: the TOML
text, whose header comment lists every directive that was not carried over and why,
plus the same list as data and the warnings.  Nothing is guessed silently: whatever
had to be inferred (the VIP's interface, a path's addresses, the failback policy) is
in the warnings.

Heartbeat talks broadcast, multicast or unicast; guardian only unicast, between the two
nodes' addresses.  Those come from ``ucast`` lines, from a hosts file (``DIR/../hosts``,
i.e. ``/etc/hosts`` next to ``/etc/ha.d``, or ``hosts=``), or from ``addresses=``;
when they cannot be found the output says so in a TODO and in the report.

Heartbeat's key (sha1 / md5 / crc) is never reused: guardian signs with HMAC-SHA256
under its own key file; ``write_key(path)`` makes a new one (mode 0600), to be
installed, the same file, on both nodes.

Command line (wired as ``guardian import-heartbeat``)::

    python -m ipfailover._heartbeat /etc/ha.d [--node vm01] [--write-key PATH] [-o FILE]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import secrets
import shlex
import socket
import sys
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._machine import PairConfig
from ._settings import DEFAULT_KEY_FILE, DEFAULT_PORT
from ._wire import MAX_GROUP, MAX_NODE

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: where Heartbeat's files live on a node (for script paths written into the output)
HA_DIR = "/etc/ha.d"
#: the priorities given to a group's preferred node and to the other one
PREFERRED_PRIORITY = 150
OTHER_PRIORITY = 100
#: the LSB status check written for each service
CHECK_INTERVAL = "5s"
CHECK_TIMEOUT = "3s"

_DEFAULTS = PairConfig(node="x")
#: the longest heartbeat interval guardian's switchover handshake allows
_MAX_INTERVAL = min(60.0, _DEFAULTS.switchover_timeout / 2)


class ConversionError(ValueError):
    """A Heartbeat configuration that cannot be converted; the message names the file
    (and the line, where there is one)."""


@dataclass(frozen=True)
class Conversion:
    """The converted configuration and what did not make it."""

    toml_text: str
    #: (directive with its ``file:line``, why it was not carried over)
    unmapped: list[tuple[str, str]]
    warnings: list[str]
    node: str = ""
    peer: str = ""
    groups: tuple[str, ...] = ()
    #: the output needs a hand edit before guardian can run it (see the TODOs)
    todo: bool = False


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Line:
    source: str  # "ha.cf", for the report
    path: str  # the file as given, for errors
    lineno: int
    words: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.source}:{self.lineno}"

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def error(self, message: str) -> ConversionError:
        return ConversionError(f"{self.path}:{self.lineno}: {message}")


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConversionError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConversionError(f"{path}: is a directory, not a file") from None
    except PermissionError:
        raise ConversionError(f"{path}: permission denied") from None
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _lines(path: Path, source: str, *, inline_comments: bool = True,
           continuation: bool = False) -> list[_Line]:
    """The non-empty lines split into words; ``#`` starts a comment (anywhere a word
    starts, or only at the start of a line); a trailing ``\\`` joins the next line."""
    out: list[_Line] = []
    pending: list[str] = []
    first = 0
    for lineno, raw in enumerate(_read_text(path).splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            line = ""
        elif inline_comments:
            line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()
        joined = continuation and line.endswith("\\")
        if joined:
            line = line[:-1]
        if not pending:
            first = lineno
        pending.extend(line.split())
        if joined:
            continue
        if pending:
            out.append(_Line(source, str(path), first, tuple(pending)))
        pending = []
    if pending:
        out.append(_Line(source, str(path), first, tuple(pending)))
    return out


_FILE_ORDER = {"ha.cf": 0, "haresources": 1, "authkeys": 2}


class _Report:
    def __init__(self) -> None:
        self._unmapped: list[tuple[tuple[int, int], str, str]] = []
        self.warnings: list[str] = []

    @property
    def unmapped(self) -> list[tuple[str, str]]:
        """In file order (ha.cf, haresources, authkeys), then line order."""
        return [(d, r) for _, d, r in sorted(self._unmapped, key=lambda e: e[0])]

    def skip(self, line: _Line, reason: str, text: str | None = None) -> None:
        order = (_FILE_ORDER.get(line.source, 9), line.lineno)
        self._unmapped.append(
            (order, f"{line.where}: {text if text is not None else line.text}", reason))

    def skip_file(self, name: str, reason: str) -> None:
        self._unmapped.append(((_FILE_ORDER.get(name, 9), 0), name, reason))

    def warn(self, message: str) -> None:
        self.warnings.append(message)


# ----------------------------------------------------------------------------- values

_TIME_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(ms|us|s)?$")
_TIME_UNITS = {"ms": 0.001, "us": 0.000001, "s": 1.0, None: 1.0}
_TRUE = {"on", "yes", "true", "y", "1"}
_FALSE = {"off", "no", "false", "n", "0"}


def _seconds(line: _Line, word: str) -> float:
    """Heartbeat's time syntax: ``2`` (seconds), ``500ms``, ``1.5s``, ``250000us``."""
    match = _TIME_RE.match(word.lower())
    if not match:
        raise line.error(f"{line.words[0]}: {word!r} is not a time (e.g. 2, 1.5, 500ms)")
    return float(match.group(1)) * _TIME_UNITS[match.group(2)]


def _duration(seconds: float) -> str:
    """A duration guardian reads back exactly: "2s", "500ms", "120s"."""
    ms = round(seconds * 1000, 3)
    if ms >= 1000 and ms % 1000 == 0:
        return f"{int(ms // 1000)}s"
    return f"{ms:g}ms"


def _bool(line: _Line, word: str) -> bool:
    low = word.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise line.error(f"{line.words[0]}: {word!r} is not on or off")


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _usable(addr: IPAddress) -> bool:
    """An address a heartbeat can be sent between two hosts on."""
    return not (addr.is_loopback or addr.is_multicast or addr.is_unspecified
                or addr.is_link_local)


def _port(line: _Line, word: str) -> int:
    if not word.isdigit() or not 1 <= int(word) <= 65535:
        raise line.error(f"{line.words[0]}: {word!r} is not a UDP port (1..65535)")
    return int(word)


def _q(value: str) -> str:
    """A TOML basic string (JSON's escapes are all valid TOML)."""
    return json.dumps(value, ensure_ascii=False)


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _q(name)


def _str_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


# ----------------------------------------------------------------------------- ha.cf

_LOGGING = ("guardian logs to stderr or the journal ([guardian] log_target, log_level); "
            "Heartbeat's own log files and syslog facility have no equivalent")
_TUNING = "a Heartbeat daemon setting with no guardian equivalent"

#: directives carried over as nothing, and why
_NOT_MAPPED: dict[str, str] = {
    "logfacility": _LOGGING,
    "logfile": _LOGGING,
    "debugfile": _LOGGING,
    "use_logd": _LOGGING,
    "debug": "guardian's log detail is [guardian] log_level (\"debug\")",
    "serial": "guardian heartbeats over UDP only; a serial line has no equivalent "
              "(give the pair a second network path instead)",
    "baud": "guardian heartbeats over UDP only; serial settings have no equivalent",
    "watchdog": "guardian drives no watchdog device: its VIPs are held on a kernel address "
                "lease that lapses by itself when guardiand dies or hangs",
    "stonith": "guardian fences through dom0 (fence = \"dom0\" in the group, with "
               "guardian-hostd) instead of STONITH devices; not set automatically",
    "stonith_host": "guardian fences through dom0 (fence = \"dom0\" in the group, with "
                    "guardian-hostd) instead of STONITH devices; not set automatically",
    "apiauth": "Heartbeat's client API has no guardian equivalent",
    "autojoin": "a guardian pair is exactly the two nodes named in its config",
    "deadping": "guardian watches ping nodes with its own ping_interval / ping_timeout "
                "(1 s / 0.5 s by default)",
    "ping_group": "guardian's ping list has no groups: every address in ping = [...] is "
                  "watched on its own; add the addresses by hand if that is what you want",
    "compression": "guardian's heartbeats are small and never compressed",
    "compression_threshold": "guardian's heartbeats are small and never compressed",
    "traditional_compression": "guardian's heartbeats are small and never compressed",
    "hopfudge": _TUNING,
    "realtime": _TUNING,
    "rtprio": _TUNING,
    "coredumps": _TUNING,
    "coredir": _TUNING,
    "uuidfrom": _TUNING,
    "msgfmt": _TUNING,
    "conn_logd_time": _TUNING,
    "max_rexmit_delay": _TUNING,
    "hbgenmethod": _TUNING,
    "memreserve": _TUNING,
    "enable_config_writes": _TUNING,
    "record_config_changes": _TUNING,
    "record_pengine_inputs": _TUNING,
    "cluster": _TUNING,
    "quorum_server": _TUNING,
}


@dataclass
class _HaCf:
    nodes: list[tuple[str, _Line]] = field(default_factory=list)
    keepalive: tuple[float, _Line] | None = None
    deadtime: tuple[float, _Line] | None = None
    warntime: tuple[float, _Line] | None = None
    initdead: tuple[float, _Line] | None = None
    udpport: tuple[int, _Line] | None = None
    #: (kind, interface, address or None, port or None, line)
    media: list[tuple[str, str, IPAddress | None, int | None, _Line]] = field(
        default_factory=list)
    failback: tuple[str, _Line] | None = None  # "on", "off", "legacy"
    ping: list[tuple[IPAddress, _Line]] = field(default_factory=list)
    ipfail: _Line | None = None


def _parse_hacf(path: Path, report: _Report) -> _HaCf:
    cf = _HaCf()
    for line in _lines(path, "ha.cf"):
        directive, args = line.words[0].lower(), line.words[1:]

        def need(count: int, what: str, *, line: _Line = line, args: Sequence[str] = args,
                 directive: str = directive) -> None:
            if len(args) < count:
                raise line.error(f"{directive} needs {what}")

        if directive == "node":
            need(1, "a node name")
            for name in args:
                if not 1 <= len(name.encode("utf-8")) <= MAX_NODE:
                    raise line.error(f"node name {name!r} is longer than {MAX_NODE} bytes")
                if name.lower() not in {n.lower() for n, _ in cf.nodes}:
                    cf.nodes.append((name, line))
        elif directive in ("keepalive", "deadtime", "warntime", "initdead"):
            need(1, "a time (e.g. 2 or 500ms)")
            if len(args) > 1:
                raise line.error(f"{directive} takes one time, got {len(args)} words")
            setattr(cf, directive, (_seconds(line, args[0]), line))
        elif directive == "udpport":
            need(1, "a port")
            cf.udpport = (_port(line, args[0]), line)
        elif directive == "bcast":
            need(1, "an interface")
            for dev in args:
                cf.media.append(("bcast", dev, None, None, line))
        elif directive == "ucast":
            if len(args) != 2:
                raise line.error("ucast needs an interface and the peer's address: "
                                 "ucast eth0 192.0.2.12")
            addr = _ip(args[1])
            if addr is None:
                raise line.error(f"ucast: {args[1]!r} is not an IP address")
            cf.media.append(("ucast", args[0], addr, None, line))
        elif directive == "mcast":
            if len(args) != 5:
                raise line.error("mcast needs an interface, group, port, ttl and loop: "
                                 "mcast eth0 225.0.0.1 694 1 0")
            group = _ip(args[1])
            if group is None or not group.is_multicast:
                raise line.error(f"mcast: {args[1]!r} is not a multicast group address")
            port = _port(line, args[2])
            if not args[3].isdigit() or not 1 <= int(args[3]) <= 255:
                raise line.error(f"mcast: ttl {args[3]!r} is not in 1..255")
            if args[4] not in ("0", "1"):
                raise line.error(f"mcast: loop {args[4]!r} is not 0 or 1")
            cf.media.append(("mcast", args[0], group, port, line))
        elif directive == "auto_failback":
            need(1, "on, off or legacy")
            value = args[0].lower()
            cf.failback = ("legacy" if value == "legacy"
                           else "on" if _bool(line, value) else "off", line)
        elif directive == "nice_failback":
            need(1, "on or off")
            # nice_failback on == auto_failback off; off == the old (legacy) behaviour
            cf.failback = ("off" if _bool(line, args[0]) else "legacy", line)
        elif directive == "ping":
            need(1, "an address")
            for word in args:
                addr = _ip(word)
                if addr is None:
                    report.skip(line, "a ping node must be an IP address in guardian "
                                "(names are not resolved)", f"ping {word}")
                else:
                    cf.ping.append((addr, line))
        elif directive == "respawn":
            need(2, "a user and a program")
            if os.path.basename(args[1]) == "ipfail":
                cf.ipfail = line
                report.skip(line, "not needed: guardian does ipfail's job itself (a node "
                            "whose ping nodes are unreachable while the peer reaches its own "
                            "yields the VIPs)")
            else:
                report.skip(line, "guardian runs no helper programs beside itself; if it "
                            "must run, supervise it as a [services.NAME] (command backend)")
        elif directive in ("crm", "pacemaker"):
            need(1, "on or off")
            if args[0].lower() == "respawn" or _bool(line, args[0]):
                raise line.error(
                    f"{line.text}: this cluster is run by the CRM (Pacemaker) from its CIB, "
                    "not from haresources; only R1 clusters (crm off) can be converted")
            report.skip(line, "R1 mode (haresources) is what this converter reads: "
                        "nothing to carry over")
        elif directive in _NOT_MAPPED:
            report.skip(line, _NOT_MAPPED[directive])
        else:
            report.skip(line, "not a Heartbeat directive this converter knows")
    return cf


# ----------------------------------------------------------------------------- authkeys

_METHODS = ("sha1", "md5", "crc")


def _parse_authkeys(path: Path, report: _Report) -> None:
    """Check the file's shape and report it; the secret is never carried over or shown."""
    if not path.exists():
        report.skip_file("authkeys", "file not found: nothing to carry over (guardian signs "
                         "with its own key file in any case)")
        return
    lines = _lines(path, "authkeys", inline_comments=False)
    active: tuple[int, _Line] | None = None
    keys: dict[int, tuple[str, _Line]] = {}
    for line in lines:
        words = line.words
        if words[0].lower() == "auth":
            if len(words) != 2 or not words[1].isdigit():
                raise line.error("expected 'auth N' (the key that signs outgoing packets)")
            active = (int(words[1]), line)
            continue
        if not words[0].isdigit():
            raise line.error(f"expected 'auth N' or 'N METHOD [SECRET]', got {words[0]!r}")
        kid = int(words[0])
        if not 1 <= kid <= 15:
            raise line.error(f"key number {kid} is not in 1..15")
        if len(words) < 2:
            raise line.error(f"key {kid} has no method (sha1, md5 or crc)")
        method = words[1].lower()
        if method in ("sha1", "md5") and len(words) < 3:
            raise line.error(f"key {kid}: {method} needs a secret")
        if kid in keys:
            raise line.error(f"key {kid} is defined twice (first at line {keys[kid][1].lineno})")
        keys[kid] = (method, line)
    if active is None:
        raise ConversionError(f"{path}: no 'auth N' line (which key signs outgoing packets)")
    kid, aline = active
    if kid not in keys:
        raise aline.error(f"auth {kid}: there is no key {kid} in the file")
    method, kline = keys[kid]
    masked = f"{kid} {method}" + (" ********" if len(kline.words) > 2 else "")
    replaced = ("guardian signs every heartbeat with HMAC-SHA256 under its own key file "
                "(key_file); ")
    if method == "crc":
        report.skip(aline, "replaced by HMAC-SHA256 with a new key: " + replaced +
                    "make one with --write-key and install the same file on both nodes")
        report.skip(kline, "crc is a checksum, not authentication: not carried over",
                    masked)
        report.warn("authkeys: Heartbeat's crc method authenticated nothing (anyone on the "
                    "heartbeat network could forge packets); guardian always authenticates, "
                    "so both nodes now need the same key file")
    elif method in ("sha1", "md5"):
        report.skip(aline, f"authkeys method {method} replaced by HMAC-SHA256 (new key): "
                    + replaced + "Heartbeat's secret is not reused; make a new key with "
                    "--write-key and install the same file on both nodes")
        report.skip(kline, f"the {method} secret is not reused", masked)
    else:
        report.skip(aline, f"method {method!r} is unknown to this converter; " + replaced
                    + "make a new key with --write-key")
        report.skip(kline, "not carried over", masked)
    for other, (omethod, oline) in keys.items():
        if other != kid:
            shown = f"{other} {omethod}" + (" ********" if len(oline.words) > 2 else "")
            report.skip(oline, f"not the key in use (auth {kid}): dropped", shown)


# ----------------------------------------------------------------------------- hosts


def _parse_hosts(path: Path) -> dict[str, list[IPAddress]]:
    """name (lower case) -> usable addresses, in file order; loopback (Debian's
    ``127.0.1.1 vm01``) and link-local addresses are left out."""
    names: dict[str, list[IPAddress]] = {}
    for line in _lines(path, path.name):
        addr = _ip(line.words[0].split("%", 1)[0])
        if addr is None or not _usable(addr):
            continue
        for name in line.words[1:]:
            got = names.setdefault(name.lower(), [])
            if addr not in got:
                got.append(addr)
    return names


# ----------------------------------------------------------------------------- haresources

#: Heartbeat's own resource agents (``/etc/ha.d/resource.d``) and why each stays behind
_AGENTS: dict[str, str] = {
    "Filesystem": "guardian does not mount filesystems: mount it outside guardian, or "
                  "wrap the agent in a [services.NAME] with the command backend "
                  "(start_command = [\"/etc/ha.d/resource.d/Filesystem\", ARGS..., \"start\"])",
    "MailTo": "guardian does not mail on takeover itself: set the group's notify = "
              "[COMMAND] (run on every state change) or [guardian] alert_command",
    "SendArp": "not needed: guardian sends gratuitous ARP / unsolicited NA for its VIPs "
               "itself (announce_count)",
    "Delay": "not needed: guardian waits for the cold services to be up (cold_timeout) "
             "before adding the VIPs",
    "drbddisk": "guardian does not promote DRBD resources: do it outside guardian, or "
                "wrap the agent in a [services.NAME] with the command backend",
    "drbdupper": "guardian does not promote DRBD resources",
    "IPsrcaddr": "guardian does not change the source address of the default route",
    "LVM": "guardian does not activate volume groups",
    "Raid1": "guardian does not assemble RAID arrays",
    "LinuxSCSI": "guardian does not manage SCSI devices",
    "ServeRAID": "guardian does not manage RAID controllers",
    "portblock": "guardian does not block ports during takeover",
    "Xinetd": "guardian does not toggle xinetd services",
    "AudibleAlarm": "guardian does not sound alarms: use [guardian] alert_command",
    "WinPopup": "guardian does not send WinPopup messages: use [guardian] alert_command",
    "ICP": "guardian does not manage ICP Vortex clusters",
    "WAS": "guardian does not manage WebSphere directly: add a service for it by hand",
    "db2": "guardian does not manage DB2 directly: add a service for it by hand",
    "apache": "Heartbeat's apache agent runs Apache through its OCF script: add a "
              "[services.NAME] for the Apache init script (e.g. apache2) by hand",
    "OCF": "OCF resource agents have no guardian backend: add a service by hand",
    "hto-mapfuncs": "not a resource",
}
_IP_AGENTS = ("IPaddr", "IPaddr2", "IPv6addr")

#: group names for well-known services: the first one found names the group
_ROLES = {
    "apache2": "web", "apache": "web", "httpd": "web", "nginx": "web", "lighttpd": "web",
    "bind9": "dns", "named": "dns", "bind": "dns", "unbound": "dns",
    "exim4": "mail", "exim": "mail", "postfix": "mail", "sendmail": "mail",
    "mysql": "db", "mariadb": "db", "postgresql": "db",
    "nfs-kernel-server": "nfs", "samba": "smb", "squid": "proxy", "haproxy": "lb",
    "slapd": "ldap", "vsftpd": "ftp", "proftpd": "ftp",
}
_SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]*$")


@dataclass
class _Vip:
    cidr: str
    interface: str | None
    line: _Line
    word: str


@dataclass
class _Group:
    line: _Line
    preferred: str
    vips: list[_Vip] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    #: service -> script path (only for scripts found under DIR/resource.d)
    scripts: dict[str, str] = field(default_factory=dict)
    vip_before_service: bool = False


def _parse_vip(line: _Line, word: str, agent: str, arg: str, report: _Report) -> _Vip:
    fields = arg.split("/")
    addr = _ip(fields[0])
    v6 = agent == "IPv6addr"
    if addr is None or (addr.version == 6) != v6:
        kind = "IPv6" if v6 else "IPv4"
        raise line.error(f"{word}: {fields[0]!r} is not an {kind} address")
    if not _usable(addr):
        raise line.error(f"{word}: {addr} cannot be a service address")
    bits = 128 if v6 else 32
    prefix: int | None = None
    interface: str | None = None
    broadcast: str | None = None
    if len(fields) > 1 and fields[1]:
        mask = fields[1]
        if mask.isdigit() and 0 <= int(mask) <= bits:
            prefix = int(mask)
        elif not v6 and _ip(mask) is not None:
            try:
                prefix = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
            except ValueError:
                raise line.error(f"{word}: {mask!r} is not a netmask") from None
        else:
            raise line.error(f"{word}: {mask!r} is not a netmask (0..{bits} or dotted)")
    for extra in fields[2:4]:
        if not extra:
            continue
        if _ip(extra) is not None:
            broadcast = extra
        elif interface is None:
            interface = extra
        else:
            raise line.error(f"{word}: {extra!r} is neither an interface nor a broadcast "
                             "address")
    if len(fields) > 4:
        raise line.error(f"{word}: too many fields (ip/netmask/interface/broadcast)")
    if interface is not None and ":" in interface:
        base = interface.split(":", 1)[0]
        report.warn(f"{line.where}: {word}: alias label {interface!r} dropped, the VIP goes "
                    f"on {base} (guardian labels nothing)")
        interface = base
    if broadcast is not None:
        report.warn(f"{line.where}: {word}: broadcast {broadcast} dropped: the kernel derives "
                    "it from the prefix")
    if prefix is None:
        prefix = bits
        report.warn(f"{line.where}: {word} has no netmask: Heartbeat took it from the routing "
                    f"table; guardian adds {addr}/{bits} (a host address). Write the subnet's "
                    f"prefix (e.g. {addr}/24) if the VIP should carry it")
    return _Vip(f"{addr}/{prefix}", interface, line, word)


def _parse_haresources(path: Path, ha_dir: Path, nodes: Mapping[str, str],
                       report: _Report) -> list[_Group]:
    groups: list[_Group] = []
    owner: dict[str, _Line] = {}
    vip_owner: dict[str, _Line] = {}
    for line in _lines(path, "haresources", continuation=True):
        node = nodes.get(line.words[0].lower())
        if node is None:
            raise line.error(f"{line.words[0]!r} is not a node of ha.cf "
                             f"({', '.join(nodes.values())})")
        group = _Group(line, node)
        if len(line.words) == 1:
            raise line.error(f"{line.words[0]}: no resources on the line")
        for word in line.words[1:]:
            name, sep, rest = word.partition("::")
            if not sep and _ip(word.split("/", 1)[0]) is not None:
                name, rest = ("IPv6addr" if ":" in word.split("/", 1)[0] else "IPaddr"), word
                sep = "::"
            if name in _IP_AGENTS:
                if not rest:
                    raise line.error(f"{word}: {name} needs an address ({name}::ADDRESS)")
                if name != "IPv6addr":
                    rest = rest.split("::", 1)[0]
                vip = _parse_vip(line, word, name, rest, report)
                key = vip.cidr.split("/", 1)[0]
                if key in vip_owner:
                    raise line.error(f"{word}: address {key} is already a resource at "
                                     f"{vip_owner[key].where}")
                vip_owner[key] = line
                group.vips.append(vip)
            elif name in _AGENTS:
                report.skip(line, _AGENTS[name], word)
            elif sep:
                report.skip(line, "a resource script with arguments: guardian's lsb backend "
                            "runs SCRIPT start|stop|status without any; wrap it in a "
                            "[services.NAME] with the command backend by hand", word)
            else:
                if not _SERVICE_RE.match(name):
                    raise line.error(f"{word!r} is not a resource name")
                if name in owner:
                    raise line.error(f"resource {name} is already in the group at "
                                     f"{owner[name].where}")
                owner[name] = line
                group.services.append(name)
                if group.vips:
                    group.vip_before_service = True
                if (ha_dir / "resource.d" / name).is_file():
                    group.scripts[name] = f"{HA_DIR}/resource.d/{name}"
        groups.append(group)
    if not groups:
        raise ConversionError(f"{path}: no resource groups: nothing to fail over")
    return groups


def _group_names(groups: Sequence[_Group]) -> list[str]:
    names: list[str] = []
    for i, group in enumerate(groups, 1):
        base = next((_ROLES[s] for s in group.services if s in _ROLES), None)
        if base is None and group.services:
            base = re.sub(r"[^A-Za-z0-9_-]", "-", group.services[0])
        if base is None:
            base = f"group{i}"
        base = base[:MAX_GROUP - 3]
        name, n = base, 2
        while name in names:
            name, n = f"{base}{n}", n + 1
        names.append(name)
    return names


# ----------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class _Path:
    local: IPAddress
    peer: IPAddress
    #: ucast's interface: the socket is bound to it, as Heartbeat's was
    interface: str | None = None


def _pair_by_family(local: Sequence[IPAddress],
                    peer: Sequence[IPAddress]) -> list[_Path]:
    paths = []
    for version in (4, 6):
        mine = [a for a in local if a.version == version]
        theirs = [a for a in peer if a.version == version]
        if len(mine) == 1 and len(theirs) == 1 and mine[0] != theirs[0]:
            paths.append(_Path(mine[0], theirs[0]))
    return paths


def _paths(cf: _HaCf, node: str, peer: str, addrs: Mapping[str, list[IPAddress]],
           source: str, report: _Report) -> tuple[list[_Path], list[str]]:
    """The unicast paths, and the TODO lines for what could not be resolved."""
    mine = addrs.get(node.lower(), [])
    theirs = addrs.get(peer.lower(), [])
    paths: list[_Path] = []
    todo: list[str] = []

    def add(path: _Path) -> None:
        if not any(p.local == path.local and p.peer == path.peer for p in paths):
            paths.append(path)

    # ucast: per interface, the addresses named there
    by_dev: dict[str, list[tuple[IPAddress, _Line]]] = {}
    for kind, dev, addr, _, line in cf.media:
        if kind == "ucast" and addr is not None:
            by_dev.setdefault(dev, []).append((addr, line))
    for dev, entries in by_dev.items():
        ips = list(dict.fromkeys(a for a, _ in entries))
        lines = list(dict.fromkeys(ln for _, ln in entries))
        shown = "; ".join(f"{ln.where}: {ln.text}" for ln in lines)
        found: _Path | None = None
        why = ""
        if len(ips) == 1:
            ip = ips[0]
            if ip in mine:
                why = (f"it names {node}'s own address, so this ha.cf looks like {peer}'s; "
                       "convert it there (or pass --node)")
            else:
                local = [a for a in mine if a.version == ip.version]
                if len(local) == 1:
                    found = _Path(local[0], ip, dev)
                else:
                    why = (f"{node}'s own address is " +
                           ("unknown" if not local else "ambiguous (" +
                            ", ".join(map(str, local)) + ")") +
                           f": pass --address {node}=IP or a hosts file")
        elif len(ips) == 2:
            a, b = ips
            if (a in mine) != (b in mine):
                found = _Path(a, b, dev) if a in mine else _Path(b, a, dev)
            elif (a in theirs) != (b in theirs):
                found = _Path(b, a, dev) if a in theirs else _Path(a, b, dev)
            else:
                why = (f"cannot tell which of {a} and {b} is {node}'s: neither is listed "
                       f"for a node (pass --address {node}=IP or a hosts file)")
        else:
            why = (f"{len(ips)} addresses on {dev}: a guardian path joins exactly two; "
                   "write the paths by hand")
        if found is not None and found.local.version == found.peer.version:
            add(found)
        else:
            for ln in lines:
                report.skip(ln, f"not converted: {why or 'mixed address families'}")
            todo.append(f"ucast on {dev} ({shown}): {why or 'mixed address families'}")

    # bcast / mcast: guardian talks unicast between the nodes' own addresses
    for kind, dev, addr, port, line in cf.media:
        if kind == "ucast":
            continue
        what = f"{kind} {dev}" + (f" {addr} {port}" if addr is not None else "")
        found_paths = _pair_by_family(mine, theirs)
        if found_paths:
            for p in found_paths:
                add(p)
            extra = " (the group address, ttl and loop are dropped)" if kind == "mcast" else ""
            report.warn(f"{line.where}: {what}: guardian sends unicast heartbeats; converted "
                        f"to the path(s) " + ", ".join(f"{p.local} -> {p.peer}"
                                                         for p in found_paths) +
                        f" from {source}{extra}")
        else:
            missing = [n for n, a in ((node, mine), (peer, theirs)) if not a]
            if missing:
                why = (" and ".join(missing) + (" has" if len(missing) == 1 else " have") +
                       f" no address in {source}")
            else:
                why = (f"several addresses per node in {source} ("
                       f"{node}: {', '.join(map(str, mine))}; "
                       f"{peer}: {', '.join(map(str, theirs))})")
            report.skip(line, f"guardian sends unicast heartbeats and needs both nodes' "
                        f"addresses: {why}; pass --address NODE=IP (or --hosts FILE), or "
                        "write paths by hand (left as a TODO)", line.text)
            todo.append(f"{what} ({line.where}): {why}")
    if not cf.media:
        todo.append("ha.cf has no bcast, mcast or ucast line")
        report.skip_file("ha.cf", "no bcast, mcast or ucast line: no heartbeat path to "
                         "convert (paths left as a TODO)")
    if paths:
        todo = []  # one working path is enough to run; the rest is in the report
    return paths, todo


# ----------------------------------------------------------------------------- convert


def _path_toml(path: _Path) -> str:
    dev = f", interface = {_q(path.interface)}" if path.interface else ""
    return f"{{ local = {_q(str(path.local))}, peer = {_q(str(path.peer))}{dev} }}"


def _hostname() -> str:
    return socket.gethostname()


def _pick_node(nodes: Sequence[str], node: str | None, report: _Report) -> str:
    lower = {n.lower(): n for n in nodes}
    if node is not None:
        if node.lower() not in lower:
            raise ConversionError(f"--node {node}: not a node of ha.cf ({', '.join(nodes)})")
        return lower[node.lower()]
    host = _hostname()
    for candidate in (host, host.split(".", 1)[0]):
        if candidate.lower() in lower:
            return lower[candidate.lower()]
    report.warn(f"this host ({host}) is not a node of ha.cf: converted for {nodes[0]}, the "
                f"first node; on {nodes[1]} run the conversion with --node {nodes[1]}")
    return nodes[0]


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, width=92, initial_indent=indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False) or [indent.rstrip()]


def _lsb_check(name: str, script: str) -> str:
    quoted = shlex.quote(script)
    return (f"if {quoted} status >/dev/null 2>&1; then echo {shlex.quote(name + ' is running')}; "
            f"else echo \"{name} is not running (LSB status $?)\"; exit 2; fi")


@dataclass(frozen=True)
class _Common:
    """What every group of the pair shares (ha.cf is global)."""

    interval: float | None
    init_dead: float | None
    preempt: bool
    port: int
    ping: tuple[str, ...]


def _addresses(ha_dir: Path, nodes: Sequence[str], hosts: str | os.PathLike[str] | None,
               addresses: Mapping[str, Sequence[str]]
               ) -> tuple[dict[str, list[IPAddress]], str]:
    """Node name (lower case) -> addresses, and where they came from."""
    addrs: dict[str, list[IPAddress]] = {}
    sources: list[str] = []
    hosts_path = Path(hosts) if hosts is not None else ha_dir.resolve().parent / "hosts"
    if hosts is not None or hosts_path.is_file():
        if not hosts_path.is_file():
            raise ConversionError(f"{hosts_path}: file not found")
        addrs = _parse_hosts(hosts_path)
        sources.append(str(hosts_path))
    lower_nodes = {n.lower() for n in nodes}
    for name, values in addresses.items():
        if name.lower() not in lower_nodes:
            raise ConversionError(f"--address {name}=...: not a node of ha.cf "
                                  f"({', '.join(nodes)})")
        parsed = []
        for value in values:
            addr = _ip(value)
            if addr is None or not _usable(addr):
                raise ConversionError(f"--address {name}={value}: not a usable IP address")
            parsed.append(addr)
        addrs[name.lower()] = parsed
        if "--address" not in sources:
            sources.append("--address")
    return addrs, " and ".join(sources) or "the hosts file (none found)"


def _common(cf: _HaCf, report: _Report) -> _Common:
    """keepalive, deadtime, warntime, initdead, auto_failback, udpport and ping."""
    d = _DEFAULTS
    interval: float | None = None
    if cf.keepalive is not None:
        seconds, line = cf.keepalive
        interval = min(max(seconds, 0.02), _MAX_INTERVAL)
        if interval != seconds:
            report.warn(f"{line.where}: keepalive {_duration(seconds)} is outside guardian's "
                        f"{_duration(0.02)}..{_duration(_MAX_INTERVAL)} (a switchover must fit "
                        f"in {_duration(_DEFAULTS.switchover_timeout)}, two intervals): "
                        f"interval = {_duration(interval)}")
    detect = d.suspect_after * (interval or d.interval) + d.probe_timeout
    if interval is not None and interval > d.interval:
        fastest = d.suspect_after * d.interval + d.probe_timeout
        report.warn(f"interval {_duration(interval)} (from keepalive): a dead peer is "
                    f"noticed in about {detect:.2f} s; without interval (default "
                    f"{_duration(d.interval)}) in about {fastest:.2f} s")
    elif interval is None:
        report.warn(f"ha.cf has no keepalive: guardian's default interval "
                    f"{_duration(d.interval)} applies")
    if cf.deadtime is not None:
        seconds, line = cf.deadtime
        report.skip(line, f"not needed: guardian suspects a silent peer after "
                    f"{d.suspect_after:g} intervals and confirms it with probes within "
                    f"{_duration(d.probe_timeout)} (about {detect:.2f} s in all here); "
                    f"Heartbeat's deadtime {_duration(seconds)} has no equivalent")
    if cf.warntime is not None:
        report.skip(cf.warntime[1], "guardian has no late-heartbeat warning: a silent peer "
                    "is suspected and then confirmed or cleared by probes at once, and the "
                    "takeover is logged")
    init_dead: float | None = None
    if cf.initdead is not None:
        seconds, line = cf.initdead
        init_dead = min(seconds, 3600.0)
        if init_dead != seconds:
            report.warn(f"{line.where}: initdead {_duration(seconds)} is longer than "
                        "guardian's 3600 s: init_dead = 3600s")

    if cf.failback is None:
        preempt = True
        report.warn("ha.cf has no auto_failback: Heartbeat's default is legacy (fail back "
                    "to the preferred node): preempt = true")
    else:
        value, line = cf.failback
        preempt = value != "off"
        if value == "legacy":
            report.warn(f"{line.where}: {line.text}: legacy meant 'fail back' for nodes "
                        "without auto_failback support: preempt = true")
    if preempt:
        report.warn(f"preempt = true: the preferred node takes its VIPs back once it has been "
                    f"healthy for min_healthy {_duration(d.min_healthy)} and has seen the other "
                    f"node master for preempt_delay {_duration(d.preempt_delay)} (Heartbeat "
                    "failed back as soon as the node rejoined)")

    port = DEFAULT_PORT
    if cf.udpport is not None:
        port = cf.udpport[0]
    else:
        mports = {p for kind, _, _, p, _ in cf.media if kind == "mcast" and p is not None}
        if len(mports) == 1 and all(m[0] == "mcast" for m in cf.media):
            port = mports.pop()
    report.warn(f"guardian uses UDP port {port}, as Heartbeat did: stop and disable "
                "Heartbeat on both nodes before starting guardian")

    ping = tuple(dict.fromkeys(str(a) for a, _ in cf.ping))
    if ping and cf.ipfail is None:
        report.warn("ping nodes without ipfail: Heartbeat only showed their status, guardian "
                    "acts on them (a node that cannot reach its ping nodes while the peer can "
                    "yields the VIPs)")
    return _Common(interval, init_dead, preempt, port, ping)


def _header(ha_dir: Path, me: str, peer: str, report: _Report) -> list[str]:
    out = [f"# guardian configuration converted from Heartbeat ({ha_dir}: ha.cf, "
           "haresources, authkeys)",
           f"# for node {me} (peer {peer}) by guardian import-heartbeat.",
           "#"]
    if report.unmapped:
        out.append("# Not mapped (and why):")
        for directive, reason in report.unmapped:
            out.extend(_wrap(directive, "#   "))
            out.extend(_wrap(reason, "#       "))
    else:
        out.append("# Every directive was mapped.")
    if report.warnings:
        out.append("#")
        out.append("# Check these:")
        for warning in report.warnings:
            wrapped = textwrap.wrap(warning, width=88, break_long_words=False,
                                    break_on_hyphens=False)
            out.append(f"#   - {wrapped[0]}")
            out.extend(f"#     {w}" for w in wrapped[1:])
    out.append("")
    return out


def _service_toml(service: str, group: _Group) -> list[str]:
    script = group.scripts.get(service, f"/etc/init.d/{service}")
    out = ["", f"[services.{_key(service)}]",
           f"# Heartbeat resource {service} ({group.line.where}): an LSB init script, "
           "started on takeover and stopped on release",
           'backend = "lsb"']
    if service in group.scripts:
        out.append(f"script = {_q(script)}")
    out += ['ladder = ["failover", "alert"]  # restarts spent: hand the VIPs to the peer, '
            "then alert",
            "",
            f"[[services.{_key(service)}.checks]]",
            "# the init script's status (0: running) as a check; Heartbeat R1 watched nothing",
            'type = "exec"',
            'name = "lsb-status"',
            f"command = {_str_list(['sh', '-c', _lsb_check(service, script)])}",
            f"interval = {_q(CHECK_INTERVAL)}",
            f"timeout = {_q(CHECK_TIMEOUT)}"]
    return out


def convert(dir_path: str | os.PathLike[str], node: str | None = None, *,
            hosts: str | os.PathLike[str] | None = None,
            addresses: Mapping[str, Sequence[str]] | None = None,
            key_file: str = DEFAULT_KEY_FILE) -> Conversion:
    """Convert the Heartbeat configuration in ``dir_path`` (``/etc/ha.d``) for ``node``.

    ``node``: this node's name as in ha.cf (default: this host's name if it is listed,
    else the first node).  ``hosts``: a hosts file to find the nodes' addresses in
    (default ``dir_path/../hosts`` if there is one).  ``addresses``: node name ->
    addresses, taking precedence over the hosts file.  ``key_file``: the key file path
    written into the output.  Raises ``ConversionError`` naming the file and line.
    """
    ha_dir = Path(dir_path)
    if not ha_dir.is_dir():
        raise ConversionError(f"{ha_dir}: not a directory (Heartbeat's /etc/ha.d)")
    report = _Report()
    cf = _parse_hacf(ha_dir / "ha.cf", report)
    if len(cf.nodes) < 2:
        named = ", ".join(n for n, _ in cf.nodes) or "none"
        raise ConversionError(f"{ha_dir / 'ha.cf'}: a pair needs two node names, found "
                              f"{named}")
    if len(cf.nodes) > 2:
        name, line = cf.nodes[2]
        raise line.error(f"node {name}: a third node; guardian fails over between exactly "
                         f"two ({cf.nodes[0][0]}, {cf.nodes[1][0]})")
    nodes = [n for n, _ in cf.nodes]
    groups = _parse_haresources(ha_dir / "haresources", ha_dir,
                                {n.lower(): n for n in nodes}, report)
    _parse_authkeys(ha_dir / "authkeys", report)
    me = _pick_node(nodes, node, report)
    peer = nodes[1] if me == nodes[0] else nodes[0]
    addrs, source = _addresses(ha_dir, nodes, hosts, addresses or {})
    paths, todo = _paths(cf, me, peer, addrs, source, report)
    common = _common(cf, report)

    # the VIPs' interface, where haresources names none
    devs = list(dict.fromkeys(m[1] for m in cf.media))
    fallback_dev = devs[0] if len(devs) == 1 else "eth0"

    names = _group_names(groups)
    body = ["[failover]", f"node = {_q(me)}", f"key_file = {_q(key_file)}",
            f"port = {common.port}"]
    vip_first: list[str] = []
    extra_ports: list[str] = []
    todo_vips = False
    for index, (name, group) in enumerate(zip(names, groups, strict=True)):
        explicit = [v.interface for v in group.vips if v.interface is not None]
        iface = explicit[0] if explicit else fallback_dev
        vips: list[str] = []
        for vip in group.vips:
            if vip.interface is not None and vip.interface != iface:
                report.skip(vip.line, f"a group's VIPs share one interface ({iface}); this "
                            f"one is on {vip.interface}: put it in a group of its own by hand",
                            vip.word)
            else:
                vips.append(vip.cidr)
        if group.vips and not explicit:
            why = "the heartbeat interface" if len(devs) == 1 else "guardian's default"
            report.warn(f"{group.line.where}: no interface given for "
                        f"{', '.join(v.word for v in group.vips)}: Heartbeat found it from "
                        f"the routing table; guardian uses {iface} ({why}): check it")
        if group.vip_before_service and group.services and vips:
            vip_first.append(group.line.where)
        priority = PREFERRED_PRIORITY if group.preferred == me else OTHER_PRIORITY
        body += ["", f"[failover.groups.{_key(name)}]",
                 f"# {group.line.where}: {group.line.text}",
                 f"peer = {_q(peer)}",
                 f"priority = {priority}  # {group.preferred} is the preferred node of this "
                 "group",
                 f"interface = {_q(iface)}"]
        if index:
            # every group is a pair of its own, with its own socket: Heartbeat ran one
            # heartbeat for all its resource groups
            port = common.port + index
            if port > 65535:
                raise group.line.error(f"no UDP port left for this group ({port})")
            body.append(f"port = {port}  # each group heartbeats on its own port")
            extra_ports.append(f"{name}: {port}")
        if vips:
            body.append(f"vips = {_str_list(vips)}")
        else:
            todo_vips = True
            report.skip(group.line, "no IP address on the line: a guardian failover group "
                        "moves at least one VIP (vips left as a TODO)")
            body += ["# TODO vips: Heartbeat moved no address with this group; guardian "
                     "needs one:", '# vips = ["ADDRESS/PREFIX"]']
        if paths:
            body.append("paths = [" + ", ".join(_path_toml(p) for p in paths) + "]")
        else:
            body.append("# TODO paths: guardian sends unicast heartbeats and needs the "
                        "nodes' addresses:")
            for item in todo:
                body.extend(_wrap(item, "#   "))
            body.append(f"# paths = [{{ local = \"{me.upper()}-ADDRESS\", "
                        f"peer = \"{peer.upper()}-ADDRESS\" }}]")
        if common.interval is not None:
            body.append(f"interval = {_q(_duration(common.interval))}")
        if common.init_dead is not None:
            body.append(f"init_dead = {_q(_duration(common.init_dead))}")
        body += [f"preempt = {'true' if common.preempt else 'false'}",
                 f"services = {_str_list(group.services)}",
                 f"cold = {_str_list(group.services)}"]
        if common.ping:
            body.append(f"ping = {_str_list(common.ping)}")
    if vip_first:
        report.warn(f"{', '.join(vip_first)}: guardian starts the cold services before it "
                    "adds the VIPs (Heartbeat went left to right); a service that binds to a "
                    "VIP itself needs net.ipv4.ip_nonlocal_bind = 1 (IPv6: "
                    "net.ipv6.ip_nonlocal_bind)")
    if extra_ports:
        report.warn(f"haresources has {len(groups)} lines: each becomes a guardian group that "
                    "heartbeats on its own UDP port (Heartbeat had one heartbeat for all): "
                    f"{names[0]}: {common.port}, " + ", ".join(extra_ports) +
                    "; let them through any firewall between the nodes")
    for group in groups:
        for service in group.services:
            body += _service_toml(service, group)

    text = "\n".join(_header(ha_dir, me, peer, report) + body) + "\n"
    return Conversion(
        toml_text=text,
        unmapped=report.unmapped,
        warnings=list(report.warnings),
        node=me,
        peer=peer,
        groups=tuple(names),
        todo=not paths or todo_vips,
    )


# ----------------------------------------------------------------------------- the key


def new_key_text() -> str:
    """A fresh guardian key file: one 256-bit key, id 1, hex."""
    return ("# guardian failover key (HMAC-SHA256): the same file on both nodes, mode 0600\n"
            f"1 {secrets.token_hex(32)}\n")


def write_key(path: str | os.PathLike[str]) -> None:
    """Write a new key file at ``path`` (mode 0600); an existing file is never replaced."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except FileExistsError:
        raise ConversionError(f"{name}: already exists; a key is never overwritten (remove "
                              "it first, or copy the existing one to the other node)") from None
    except OSError as exc:
        raise ConversionError(f"{name}: cannot create: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, new_key_text().encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- command line


def _address_arg(value: str) -> tuple[str, str]:
    name, sep, addr = value.partition("=")
    if not sep or not name or not addr:
        raise argparse.ArgumentTypeError(f"{value!r}: expected NODE=IP")
    return name, addr


def main(argv: Sequence[str] | None = None) -> int:
    """``guardian import-heartbeat``: exit 0 converted, 2 on an error."""
    parser = argparse.ArgumentParser(
        prog="guardian import-heartbeat",
        description="Convert Heartbeat's ha.cf, haresources and authkeys (R1 mode) into "
                    "guardian's TOML; what cannot be mapped is listed, with the reason, in "
                    "the output's header and on stderr.")
    parser.add_argument("dir", help="Heartbeat's configuration directory (/etc/ha.d)")
    parser.add_argument("--node", help="this node's name in ha.cf (default: this host's "
                        "name if listed, else the first node)")
    parser.add_argument("--hosts", help="hosts file for the nodes' addresses (default: "
                        "DIR/../hosts, i.e. /etc/hosts)")
    parser.add_argument("--address", action="append", type=_address_arg, default=[],
                        metavar="NODE=IP", help="a node's address (repeatable)")
    parser.add_argument("--key-file", default=DEFAULT_KEY_FILE,
                        help=f"key_file written into the output (default {DEFAULT_KEY_FILE})")
    parser.add_argument("--write-key", metavar="PATH",
                        help="write a new random key file there (mode 0600); install the "
                        "same file as key_file on both nodes")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the TOML there (default: standard output)")
    args = parser.parse_args(argv)
    addresses: dict[str, list[str]] = {}
    for name, addr in args.address:
        addresses.setdefault(name, []).append(addr)
    try:
        conv = convert(args.dir, args.node, hosts=args.hosts, addresses=addresses,
                       key_file=args.key_file)
        if args.write_key:
            write_key(args.write_key)
        if args.output:
            tmp = f"{args.output}.tmp"
            try:
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(conv.toml_text)
                os.replace(tmp, args.output)
            except OSError as exc:
                raise ConversionError(f"{args.output}: cannot write: "
                                      f"{exc.strerror or exc}") from None
        else:
            sys.stdout.write(conv.toml_text)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    err = sys.stderr
    print(f"converted for node {conv.node} (peer {conv.peer}): "
          f"{len(conv.groups)} group(s): {', '.join(conv.groups)}", file=err)
    if conv.unmapped:
        print(f"not mapped ({len(conv.unmapped)}):", file=err)
        for directive, reason in conv.unmapped:
            print(f"  {directive}\n      {reason}", file=err)
    for warning in conv.warnings:
        print(f"warning: {warning}", file=err)
    if conv.todo:
        print("TODO: the output has no heartbeat paths yet; fill them in before "
              "guardian validate", file=err)
    if args.write_key:
        print(f"wrote a new key to {args.write_key} (mode 0600): install this same file as "
              f"{args.key_file} on {conv.node} and {conv.peer}; do not make another on the "
              "other node", file=err)
    else:
        print(f"no key written: make one with --write-key PATH and install it as "
              f"{args.key_file} on both nodes", file=err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
