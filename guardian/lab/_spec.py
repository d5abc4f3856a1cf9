"""What a lab host or VM is made of: plain data, validated on construction."""

from __future__ import annotations

import enum
import ipaddress
import re
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass, field

# Documentation prefixes only (RFC 5737, RFC 3849): nothing in the lab is ever routed
# anywhere else.
LAN_V4 = ipaddress.IPv4Network("192.0.2.0/24")
LAN_V6 = ipaddress.IPv6Network("2001:db8::/64")
#: The future service address (the VIP that failover moves between the VMs).
VIP = "192.0.2.100"
VIP6 = "2001:db8::100"
#: Conventional addresses of the standard lab hosts.
DOM0_IP = "192.0.2.2"
CLIENT_IP = "192.0.2.10"
VM01_IP = "192.0.2.11"
VM02_IP = "192.0.2.12"
#: Test zone served by every VM's named, and the address its ``www`` record holds.
TEST_ZONE = "example.test"
#: What ``VM.serve_wrong_zone()`` puts in the ``www`` record instead (RFC 5737 TEST-NET-2).
WRONG_ADDRESS = "198.51.100.66"

#: The stock services every VM runs under supervisord, in start order.
SERVICES = ("apache2", "named", "exim4")

_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_PROGRAM_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_OPTION_RE = re.compile(r"^[a-z_]+$")


def check_host_name(name: str) -> str:
    """Host names are short (they become ``<labid>-<name>`` interface names, <= 15 chars)."""
    if not _NAME_RE.match(name):
        raise ValueError(
            f"host name {name!r}: want 1-8 lowercase letters/digits, starting with a letter"
        )
    return name


def lan_ipv4(ip: str) -> str:
    addr = ipaddress.IPv4Address(ip)
    if addr not in LAN_V4 or addr in (LAN_V4.network_address, LAN_V4.broadcast_address):
        raise ValueError(f"{ip}: lab hosts live in {LAN_V4}")
    return str(addr)


def lan_ipv6(ip6: str | None, ip: str) -> str:
    """The IPv6 twin of a lab IPv4 address: 192.0.2.11 -> 2001:db8::11 (same digits)."""
    if ip6 is None:
        ip6 = f"2001:db8::{ip.rsplit('.', 1)[1]}"
    addr = ipaddress.IPv6Address(ip6)
    if addr not in LAN_V6:
        raise ValueError(f"{ip6}: lab hosts live in {LAN_V6}")
    return str(addr)


class ProgramKind(enum.Enum):
    """The supervisord section type of a program."""

    PROGRAM = "program"
    EVENTLISTENER = "eventlistener"


def _no_newline(what: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"{what}: newline in {value!r}")
    return value


@dataclass(frozen=True)
class Program:
    """One ``[program:NAME]`` (or ``[eventlistener:NAME]``) section of a VM's supervisord.

    ``command`` and ``environment`` values are written literally ('%' is escaped);
    ``options`` are extra supervisord settings written as given (supervisord's
    ``%(program_name)s`` expansions work there), and override the lab's defaults
    (log files, ``stopasgroup``/``killasgroup``...).
    """

    name: str
    command: str
    autorestart: bool = True
    startsecs: int = 1
    startretries: int = 3
    kind: ProgramKind = ProgramKind.PROGRAM
    environment: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _PROGRAM_RE.match(self.name):
            raise ValueError(f"program name {self.name!r}: want [A-Za-z0-9_.-]+")
        _no_newline(f"program {self.name} command", self.command)
        if self.startsecs < 0 or self.startretries < 0:
            raise ValueError(f"program {self.name}: startsecs/startretries must be >= 0")
        for key, value in self.environment.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ValueError(f"program {self.name}: bad environment name {key!r}")
            _no_newline(f"program {self.name} environment {key}", value)
        for key, value in self.options.items():
            if not _OPTION_RE.match(key):
                raise ValueError(f"program {self.name}: bad option name {key!r}")
            _no_newline(f"program {self.name} option {key}", value)

    @property
    def section(self) -> str:
        return f"{self.kind.value}:{self.name}"


#: Debian's /etc/apache2/envvars, as environment of the apache2 program.
APACHE_ENV: Mapping[str, str] = {
    "APACHE_RUN_USER": "www-data",
    "APACHE_RUN_GROUP": "www-data",
    "APACHE_PID_FILE": "/run/apache2/apache2.pid",
    "APACHE_RUN_DIR": "/run/apache2",
    "APACHE_LOCK_DIR": "/run/lock/apache2",
    "APACHE_LOG_DIR": "/var/log/apache2",
    "LANG": "C",
}

#: Inside the VM: see _render.apache_wrapper() for why apache2 is started through it.
APACHE_WRAPPER = "/etc/supervisor/lab/apache2-foreground"

_STOCK_COMMANDS: Mapping[str, str] = {
    "apache2": APACHE_WRAPPER,
    "named": "/usr/sbin/named -g -u bind",
    "exim4": "/usr/sbin/exim4 -bdf -q30m",
}


def stock_programs(
    *,
    autorestart: bool | Mapping[str, bool] = True,
    startsecs: int | Mapping[str, int] = 1,
    services: tuple[str, ...] = SERVICES,
) -> tuple[Program, ...]:
    """apache2, named and exim4 as supervisord programs, in the foreground.

    ``autorestart`` and ``startsecs`` apply to all of them, or per program name when
    given as a mapping (names missing from the mapping get True / 1).
    """
    out = []
    for name in services:
        if name not in _STOCK_COMMANDS:
            raise ValueError(f"unknown stock service {name!r}; known: {', '.join(SERVICES)}")
        ar = autorestart.get(name, True) if isinstance(autorestart, Mapping) else autorestart
        ss = startsecs.get(name, 1) if isinstance(startsecs, Mapping) else startsecs
        env = APACHE_ENV if name == "apache2" else {}
        out.append(
            Program(name, _STOCK_COMMANDS[name], autorestart=ar, startsecs=ss, environment=env)
        )
    return tuple(out)


#: Directories that get an empty tmpfs in every VM. /var/run and /var/lock are symlinks
#: into /run on Debian bookworm, so they are covered by /run.
DEFAULT_TMPFS = (
    "/run",
    "/var/log",
    "/var/spool/exim4",
    "/var/cache/bind",
    "/var/lib/guardian",
    "/tmp",
)


@dataclass(frozen=True)
class VMSpec:
    """Everything needed to (re)create a VM: ``VM.boot()`` builds it again from this."""

    name: str
    ip: str
    ip6: str | None = None
    programs: tuple[Program, ...] = field(default_factory=stock_programs)
    extra_programs: tuple[Program, ...] = ()
    zone: str = TEST_ZONE
    www_address: str = VIP
    tmpfs: tuple[str, ...] = DEFAULT_TMPFS
    supervisord: str = "/usr/bin/supervisord"
    #: Stock exim advertises STARTTLS and, with no certificate configured, generates a
    #: self-signed RSA key at every daemon start: 0.2-0.4 s before it greets. False
    #: sets ``tls_advertise_hosts =`` and the greeting comes in ~10 ms.
    exim_tls: bool = True
    #: The VM's UUID, as Xen's toolstack knows a domain (``/vm/<uuid>`` in XenStore);
    #: None: derived from the lab's id and the VM's name (``VM.uuid``).
    uuid: str | None = None

    def __post_init__(self) -> None:
        check_host_name(self.name)
        if self.uuid is not None:
            try:
                object.__setattr__(self, "uuid", str(uuidlib.UUID(self.uuid)))
            except ValueError:
                raise ValueError(f"VM {self.name}: uuid {self.uuid!r} is no UUID") from None
        object.__setattr__(self, "ip", lan_ipv4(self.ip))
        object.__setattr__(self, "ip6", lan_ipv6(self.ip6, self.ip))
        ipaddress.ip_address(self.www_address)
        names = [p.name for p in self.all_programs]
        dups = {n for n in names if names.count(n) > 1}
        if dups:
            raise ValueError(f"VM {self.name}: duplicate programs {sorted(dups)}")
        if "/run" not in self.tmpfs:
            raise ValueError(f"VM {self.name}: /run must be a tmpfs (supervisord lives there)")
        for path in self.tmpfs:
            if not path.startswith("/") or path == "/":
                raise ValueError(f"VM {self.name}: tmpfs path {path!r} must be absolute")

    @property
    def all_programs(self) -> tuple[Program, ...]:
        return self.programs + self.extra_programs

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.zone}"

    @property
    def services(self) -> tuple[str, ...]:
        """The stock services (apache2/named/exim4) this VM runs."""
        return tuple(p.name for p in self.programs if p.name in SERVICES)
