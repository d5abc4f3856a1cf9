"""The service address (VIP) on an interface: add, renew, remove, inspect, via netlink.

Every function here works in the network namespace of the *calling thread*: pyroute2
opens its netlink socket in the thread that calls, and interface names are resolved
there too. The daemon calls these from worker threads (with deadlines); the lab calls
them through ``Host.call()``, a thread that entered the host's namespace.

The VIP is held on a *kernel lease*: it is added with a finite valid and preferred
lifetime (``VipSpec.lifetime`` seconds) and the holder renews it. If the daemon dies or
hangs, the kernel deletes the address by itself, between ``lifetime`` and
``lifetime + 1`` seconds after the last renewal (the kernel's expiry work is rounded up
to a whole second; measured in the lab: 2.01-2.47 s for a 2 s lifetime over 10 trials
at random phases, IPv4 and IPv6 alike). IPv6 VIPs are added with ``nodad`` (usable at
once, no duplicate address detection delay: :func:`ipfailover.preflight` runs our own
duplicate check).

Each call opens its own netlink socket and does one to three netlink round trips with
the local kernel; nothing here waits on the network. Measured per call: add 0.5 ms,
renew 1 ms, remove 0.25 ms with pyroute2 0.7.2; 1.4, 2.4 and 0.8 ms with 0.9.7.

Written to the API shared by pyroute2 0.7.2 (Debian bookworm) and 0.9.x.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# Imported here, not on first use: importing pyroute2 takes ~150 ms, which must not
# land on the first takeover.
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# ifaddrmsg flags (linux/if_addr.h)
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80

#: The kernel's "forever" lifetime.
INFINITY_LIFE_TIME = 0xFFFFFFFF
#: Longest lease accepted (a day): a VIP is renewed every few seconds, not daily.
MAX_LIFETIME = 86400
_IFNAMSIZ = 16


class VipError(Exception):
    """An address operation failed. ``errno`` is the kernel's error number when the
    kernel refused (e.g. ``errno.EACCES`` when IPv6 is disabled on the interface)."""

    def __init__(
        self,
        message: str,
        *,
        interface: str | None = None,
        address: IPAddress | None = None,
        errno: int | None = None,
    ) -> None:
        self.interface = interface
        self.address = address
        self.errno = errno
        super().__init__(message)


class InterfaceNotFound(VipError):
    """The interface does not exist in the calling thread's network namespace."""


def _check_ifname(name: str) -> str:
    if not name or len(name) >= _IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise ValueError(f"interface name {name!r}: want 1-15 characters, no '/' or spaces")
    return name


@dataclass(frozen=True)
class VipSpec:
    """One service address: ``address/prefixlen`` on ``interface``, held on a kernel
    lease of ``lifetime`` seconds (renew well within it, e.g. every ``lifetime / 3``).

    ``label`` (IPv4 only) names the address like ``eth0:vip``; it must start with the
    interface name (iproute2's convention; 15 characters at most).
    """

    address: IPAddress
    prefixlen: int
    interface: str
    label: str | None = None
    lifetime: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise TypeError(f"address: want an ipaddress object, got {self.address!r}")
        width = self.address.max_prefixlen
        if not 0 < self.prefixlen <= width:
            raise ValueError(f"{self.address}: prefixlen {self.prefixlen} not in 1..{width}")
        if self.address.is_unspecified or self.address.is_multicast:
            raise ValueError(f"{self.address}: not a unicast address")
        if isinstance(self.address, ipaddress.IPv6Address) and self.address.is_link_local:
            raise ValueError(f"{self.address}: a link-local VIP is not supported")
        _check_ifname(self.interface)
        if self.label is not None:
            if self.address.version != 4:
                raise ValueError(f"{self.address}: labels exist for IPv4 addresses only")
            _check_ifname(self.label)
            if not self.label.startswith(self.interface):
                raise ValueError(f"label {self.label!r} must start with {self.interface!r}")
        if isinstance(self.lifetime, bool) or not isinstance(self.lifetime, int):
            raise TypeError(f"lifetime: want whole seconds (int), got {self.lifetime!r}")
        if not 1 <= self.lifetime <= MAX_LIFETIME:
            raise ValueError(f"lifetime {self.lifetime}: want 1..{MAX_LIFETIME} seconds")

    @classmethod
    def parse(
        cls, cidr: str, interface: str, *, lifetime: int = 10, label: str | None = None
    ) -> VipSpec:
        """``VipSpec.parse("192.0.2.100/24", "eth0")``; without ``/len`` a host route
        (/32, /128)."""
        iface = ipaddress.ip_interface(cidr.strip())
        return cls(iface.ip, iface.network.prefixlen, interface, label, lifetime)

    @property
    def version(self) -> int:
        return self.address.version

    @property
    def family(self) -> int:
        return socket.AF_INET if self.address.version == 4 else socket.AF_INET6

    @property
    def network(self) -> IPNetwork:
        """The subnet the VIP lives in (``192.0.2.0/24`` for ``192.0.2.100/24``)."""
        return ipaddress.ip_interface(f"{self.address}/{self.prefixlen}").network

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen} dev {self.interface}"


@dataclass(frozen=True)
class VipState:
    """What the kernel holds for a VIP: the remaining lease and the address flags."""

    spec: VipSpec
    #: seconds left of the lease (the kernel counts whole seconds)
    valid_lft: int
    preferred_lft: int
    tentative: bool
    dadfailed: bool
    permanent: bool

    @property
    def usable(self) -> bool:
        """The kernel answers for and sends from this address (IPv6: DAD is over)."""
        return not (self.tentative or self.dadfailed)


# -- netlink plumbing -------------------------------------------------------------------


def interface_index(name: str) -> int:
    """The interface's index in the calling thread's network namespace."""
    try:
        return socket.if_nametoindex(_check_ifname(name))
    except OSError as exc:
        raise InterfaceNotFound(
            f"no interface {name!r} in this network namespace", interface=name
        ) from exc


@contextmanager
def _netlink(what: str, spec: VipSpec | None = None, iface: str | None = None) -> Iterator[Any]:
    """An IPRoute socket opened in the calling thread's namespace; NetlinkError mapped
    to VipError (the one place pyroute2's exceptions are translated)."""
    ifname = spec.interface if spec is not None else iface
    address = spec.address if spec is not None else None
    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        code = exc.code if isinstance(exc.code, int) else None
        detail = f"{os.strerror(code)} (errno {code})" if code is not None else str(exc)
        cls = InterfaceNotFound if code == errno.ENODEV else VipError
        raise cls(f"{what}: {detail}", interface=ifname, address=address, errno=code) from exc


def _flags(msg: Any) -> int:
    flags = msg.get_attr("IFA_FLAGS")
    return int(flags) if flags is not None else int(msg["flags"])


def _state_from_msg(spec: VipSpec, msg: Any) -> VipState:
    cache = msg.get_attr("IFA_CACHEINFO") or {}
    flags = _flags(msg)
    return VipState(
        spec=spec,
        valid_lft=int(cache.get("ifa_valid", INFINITY_LIFE_TIME)),
        preferred_lft=int(cache.get("ifa_preferred", INFINITY_LIFE_TIME)),
        tentative=bool(flags & IFA_F_TENTATIVE),
        dadfailed=bool(flags & IFA_F_DADFAILED),
        permanent=bool(flags & IFA_F_PERMANENT),
    )


def _find(ipr: Any, spec: VipSpec, index: int) -> VipState | None:
    for msg in ipr.get_addr(index=index, family=spec.family):
        addr = msg.get_attr("IFA_ADDRESS") if spec.version == 6 else msg.get_attr("IFA_LOCAL")
        if addr is None:
            addr = msg.get_attr("IFA_ADDRESS")
        if (
            addr is not None
            and ipaddress.ip_address(addr) == spec.address
            and int(msg["prefixlen"]) == spec.prefixlen
        ):
            return _state_from_msg(spec, msg)
    return None


def _replace(ipr: Any, spec: VipSpec, index: int) -> None:
    kwargs: dict[str, Any] = {
        "index": index,
        "address": str(spec.address),
        "prefixlen": spec.prefixlen,
        "family": spec.family,
    }
    if spec.version == 6:
        kwargs["flags"] = IFA_F_NODAD
    if spec.label is not None:
        kwargs["label"] = spec.label
    # The lease. pyroute2 0.7.2 reads the lifetimes from the ``cacheinfo`` dict and
    # resets that dict whenever it meets ``valid_lft``/``preferred_lft``; 0.9.x reads
    # them from ``valid_lft``/``preferred_lft``. Keyword order is the processing order,
    # so ``cacheinfo`` must come last. (IFA_CACHEINFO= or valid_lft= alone is silently
    # turned into "forever" by one of the two versions.) _apply() verifies the result.
    kwargs["valid_lft"] = spec.lifetime
    kwargs["preferred_lft"] = spec.lifetime
    kwargs["cacheinfo"] = {"valid": spec.lifetime, "preferred": spec.lifetime}
    ipr.addr("replace", **kwargs)


def _apply(ipr: Any, spec: VipSpec, index: int) -> VipState:
    """Replace the address with a fresh lease, then check that the kernel holds it
    with that lease (never leave a VIP without one: a dead daemon must lose it)."""
    _replace(ipr, spec, index)
    state = _find(ipr, spec, index)
    if state is None:
        raise VipError(
            f"add {spec}: the kernel does not list it",
            interface=spec.interface,
            address=spec.address,
        )
    if state.valid_lft > spec.lifetime or state.permanent:
        ipr.addr(
            "del",
            index=index,
            address=str(spec.address),
            prefixlen=spec.prefixlen,
            family=spec.family,
        )
        raise VipError(
            f"add {spec}: the kernel holds it with lifetime {state.valid_lft}, not "
            f"{spec.lifetime} (pyroute2 dropped the lease?); removed it again",
            interface=spec.interface,
            address=spec.address,
        )
    return state


# -- the public operations --------------------------------------------------------------


def add_vip(spec: VipSpec) -> VipState:
    """Put the VIP on its interface with a fresh lease of ``spec.lifetime`` seconds.

    Idempotent: adding a VIP already there renews it. IPv6 is added ``nodad``, so it
    is usable at once, even without carrier (``state.usable`` is checked anyway).
    Raises InterfaceNotFound or VipError (e.g. EACCES: IPv6 disabled on the
    interface). Announce it next (``announce``): the kernel sends nothing by itself.

    Setting the interface administratively down deletes IPv6 addresses, the VIP too
    (unless ``keep_addr_on_down``); IPv4 ones stay. Loss of carrier deletes nothing.
    """
    index = interface_index(spec.interface)
    with _netlink(f"add {spec}", spec) as ipr:
        return _apply(ipr, spec, index)


def renew_vip(spec: VipSpec) -> VipState | None:
    """Give a VIP we hold a fresh lease. Returns None, and adds nothing, when it is
    not there (the lease ran out, or someone removed it): a renewal never resurrects
    the VIP; putting it back is the state machine's decision (``add_vip``)."""
    index = interface_index(spec.interface)
    with _netlink(f"renew {spec}", spec) as ipr:
        if _find(ipr, spec, index) is None:
            return None
        # Should the lease run out between the check and the replace, the replace puts
        # the VIP back a moment after it expired, as a timely renewal would have kept it.
        return _apply(ipr, spec, index)


def remove_vip(spec: VipSpec) -> bool:
    """Take the VIP off its interface. True if it was removed, False if it was not
    there (or the interface is gone). Idempotent."""
    try:
        index = interface_index(spec.interface)
    except InterfaceNotFound:
        return False
    try:
        with _netlink(f"remove {spec}", spec) as ipr:
            ipr.addr(
                "del",
                index=index,
                address=str(spec.address),
                prefixlen=spec.prefixlen,
                family=spec.family,
            )
    except VipError as exc:
        if exc.errno in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True


def vip_state(spec: VipSpec) -> VipState | None:
    """The kernel's view of the VIP (remaining lease, flags), None if absent."""
    try:
        index = interface_index(spec.interface)
    except InterfaceNotFound:
        return None
    with _netlink(f"look up {spec}", spec) as ipr:
        return _find(ipr, spec, index)


def has_vip(spec: VipSpec) -> bool:
    """True if the VIP is on its interface and usable (not tentative, DAD not failed)."""
    state = vip_state(spec)
    return state is not None and state.usable


def vips_present(specs: Iterable[VipSpec]) -> list[VipSpec]:
    """The specs whose VIP is on its interface and usable; one netlink dump per
    interface and family."""
    specs = list(specs)
    present: set[VipSpec] = set()
    groups: dict[tuple[str, int], list[VipSpec]] = {}
    for spec in specs:
        groups.setdefault((spec.interface, spec.family), []).append(spec)
    with _netlink("list addresses") as ipr:
        for (ifname, family), group in groups.items():
            try:
                index = interface_index(ifname)
            except InterfaceNotFound:
                continue
            held: dict[tuple[IPAddress, int], Any] = {}
            for msg in ipr.get_addr(index=index, family=family):
                addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                if addr is not None:
                    held[(ipaddress.ip_address(addr), int(msg["prefixlen"]))] = msg
            for spec in group:
                msg = held.get((spec.address, spec.prefixlen))
                if msg is not None and _state_from_msg(spec, msg).usable:
                    present.add(spec)
    return [s for s in specs if s in present]


# -- interfaces and neighbours ----------------------------------------------------------


@dataclass(frozen=True)
class LinkInfo:
    name: str
    index: int
    mac: str
    up: bool
    #: IFF_LOWER_UP: the link has carrier
    carrier: bool
    operstate: str


_IFF_UP = 0x1
_IFF_LOWER_UP = 0x10000


def link_info(iface: str) -> LinkInfo:
    """Index, MAC, admin state and carrier of ``iface`` (via netlink: /sys/class/net
    would show the namespace of whoever mounted /sys, not the calling thread's)."""
    index = interface_index(iface)
    with _netlink(f"look up link {iface}", iface=iface) as ipr:
        links = ipr.get_links(index)
    if not links:
        raise InterfaceNotFound(f"no interface {iface!r}", interface=iface)
    msg = links[0]
    flags = int(msg["flags"])
    return LinkInfo(
        name=iface,
        index=index,
        mac=str(msg.get_attr("IFLA_ADDRESS") or "").lower(),
        up=bool(flags & _IFF_UP),
        carrier=bool(flags & _IFF_LOWER_UP),
        operstate=str(msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN"),
    )


_SIOCGIFHWADDR = 0x8927
_ARPHRD_ETHER = 1


def interface_mac(iface: str) -> str:
    """``iface``'s Ethernet address, ``"02:00:c0:00:02:0b"`` style (one ioctl, ~10 us;
    netlink's link dump costs 0.5-2 ms)."""
    name = _check_ifname(iface).encode()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            ifreq = fcntl.ioctl(sock.fileno(), _SIOCGIFHWADDR, struct.pack("16s16x", name))
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            raise InterfaceNotFound(
                f"no interface {iface!r} in this network namespace", interface=iface
            ) from exc
        raise VipError(f"{iface}: {exc.strerror}", interface=iface, errno=exc.errno) from exc
    (hatype,) = struct.unpack_from("=H", ifreq, 16)
    raw = ifreq[18:24]
    if hatype != _ARPHRD_ETHER or raw == bytes(6):
        raise VipError(f"{iface} has no Ethernet address", interface=iface)
    return ":".join(f"{b:02x}" for b in raw)


NUD_STATES = {
    0x01: "INCOMPLETE",
    0x02: "REACHABLE",
    0x04: "STALE",
    0x08: "DELAY",
    0x10: "PROBE",
    0x20: "FAILED",
    0x40: "NOARP",
    0x80: "PERMANENT",
}
#: Entries whose link-layer address the kernel considers current or recently so.
CLIENT_STATES = frozenset({"REACHABLE", "STALE", "DELAY", "PROBE"})


@dataclass(frozen=True)
class Neighbour:
    ip: IPAddress
    mac: str
    state: str


def neighbours(iface: str) -> list[Neighbour]:
    """The neighbour table (ARP and NDP) of ``iface``: entries with a link-layer address."""
    index = interface_index(iface)
    found: list[Neighbour] = []
    with _netlink(f"list neighbours of {iface}", iface=iface) as ipr:
        for msg in ipr.get_neighbours(ifindex=index):
            dst = msg.get_attr("NDA_DST")
            mac = msg.get_attr("NDA_LLADDR")
            if dst is None or mac is None or int(msg["ifindex"]) != index:
                continue
            state = int(msg["state"])
            name = "|".join(n for bit, n in NUD_STATES.items() if state & bit) or "NONE"
            found.append(Neighbour(ipaddress.ip_address(dst), str(mac).lower(), name))
    return found


def recent_clients(iface: str, vip_subnet: IPNetwork | str) -> list[tuple[IPAddress, str]]:
    """``(ip, mac)`` of the hosts in ``vip_subnet`` the kernel has talked to lately
    (REACHABLE, STALE, DELAY or PROBE entries): the clients to tell directly that the
    VIP moved (``unicast_announce``). Multicast and broadcast entries are left out."""
    net = ipaddress.ip_network(vip_subnet, strict=False)
    clients: list[tuple[IPAddress, str]] = []
    for n in neighbours(iface):
        if n.state not in CLIENT_STATES or n.ip.version != net.version:
            continue
        if n.ip not in net or n.ip.is_multicast:
            continue
        if isinstance(net, ipaddress.IPv4Network) and n.ip == net.broadcast_address:
            continue
        clients.append((n.ip, n.mac))
    return clients
