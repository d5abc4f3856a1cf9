"""Before holding a VIP: what on this machine, or on the LAN, would make it fail.

:func:`preflight` reads the interface state over netlink, the sysctls from
``/proc/sys/net`` (both belong to the calling thread's network namespace) and, unless
told not to, asks the LAN whether someone else already answers for the VIP.

The sysctls, and why they are or are not reported (IPv4 values: the effective value
is the larger of ``conf/all`` and ``conf/IFACE`` for arp_ignore, arp_announce and
rp_filter, either one for arp_filter):

- ``arp_ignore`` 8: the kernel answers no ARP request at all. ERROR.
  2: answers only askers that share a subnet with the VIP (an address of the
  interface covering both); askers elsewhere and RFC 5227 probes (sender 0.0.0.0) get
  no answer, so a peer's duplicate check cannot see us. WARNING.
  1 (target configured on the incoming interface) and 3 (not for scope-host
  addresses) are fine: the VIP is global and on the interface that hears the ARP.
- ``rp_filter`` 1 (strict) and ``arp_filter`` 1 break the VIP when the VIP's subnet is
  connected on *another* interface (asymmetric: requests arrive on IFACE, the route
  back leaves elsewhere): strict reverse-path filtering drops the clients' packets,
  arp_filter suppresses the ARP answers. Reported (ERROR) in that case only; with the
  subnet routed through IFACE, or only through a gateway (the VIP's own connected
  route then wins), they do no harm.
- ``arp_announce`` only chooses the sender address of ARP requests we send; no effect
  on others reaching the VIP. Not reported.
- IPv6 ``disable_ipv6`` 1 on the interface (or no IPv6 at all): the VIP cannot be
  added. ERROR. ``accept_dad`` is irrelevant: VIPs are added ``nodad``, and the
  duplicate check below replaces DAD.
- A VIP the kernel already holds *permanently* (static configuration) defeats the
  lease: a dead daemon would not lose it. ERROR.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ._announce import duplicate_holders
from ._vip import (
    InterfaceNotFound,
    IPAddress,
    LinkInfo,
    VipError,
    VipSpec,
    _netlink,
    link_info,
    vip_state,
)

PROC_SYS_NET = Path("/proc/sys/net")


class Severity(enum.Enum):
    ERROR = "error"  # the VIP will not work (or not safely)
    WARNING = "warning"  # it works, with a caveat worth knowing


class ProblemKind(enum.Enum):
    INTERFACE_MISSING = "interface-missing"
    INTERFACE_DOWN = "interface-down"
    NO_CARRIER = "no-carrier"
    NO_IPV6 = "ipv6-disabled"
    ARP_IGNORE = "arp-ignore"
    RP_FILTER = "rp-filter"
    ARP_FILTER = "arp-filter"
    STATIC_VIP = "static-vip"
    DUPLICATE_ADDRESS = "duplicate-address"
    PROBE_FAILED = "probe-failed"


@dataclass(frozen=True)
class Problem:
    """One thing wrong: what (``kind``, ``message``) and how to fix it (``fix``)."""

    kind: ProblemKind
    severity: Severity
    interface: str
    address: IPAddress | None
    message: str
    fix: str

    def __str__(self) -> str:
        where = self.interface + (f" {self.address}" if self.address is not None else "")
        return f"{self.severity.value}: {where}: {self.message} (fix: {self.fix})"


def read_sysctl(path: str) -> int | None:
    """An integer sysctl under /proc/sys/net (``"ipv4/conf/eth0/arp_ignore"``) in the
    calling thread's network namespace; None if it does not exist."""
    try:
        return int((PROC_SYS_NET / path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _ipv4_conf(iface: str, name: str) -> tuple[int, int]:
    return (
        read_sysctl(f"ipv4/conf/all/{name}") or 0,
        read_sysctl(f"ipv4/conf/{iface}/{name}") or 0,
    )


def _subnet_elsewhere(spec: VipSpec, link: LinkInfo) -> str | None:
    """The name of another interface on which a directly connected route (no gateway,
    main table) covers the VIP: replies to the VIP's neighbours leave from there."""
    with _netlink("list routes", spec) as ipr:
        routes = ipr.get_routes(family=spec.family, table=254)
    for msg in routes:
        oif = msg.get_attr("RTA_OIF")
        dst = msg.get_attr("RTA_DST")
        if oif is None or dst is None or int(oif) == link.index:
            continue
        if msg.get_attr("RTA_GATEWAY") is not None or msg.get_attr("RTA_MULTIPATH"):
            continue
        net = ipaddress.ip_network(f"{dst}/{int(msg['dst_len'])}", strict=False)
        if spec.address in net:
            try:
                return socket.if_indextoname(int(oif))
            except OSError:
                return f"ifindex {oif}"
    return None


def _check_link(spec: VipSpec) -> tuple[LinkInfo | None, list[Problem]]:
    iface = spec.interface

    def problem(kind: ProblemKind, sev: Severity, msg: str, fix: str) -> Problem:
        return Problem(kind, sev, iface, None, msg, fix)

    try:
        link = link_info(iface)
    except InterfaceNotFound:
        return None, [
            problem(
                ProblemKind.INTERFACE_MISSING,
                Severity.ERROR,
                "no such interface in this network namespace",
                f"create it, or name the right interface for {spec.address}",
            )
        ]
    if not link.up:
        return link, [
            problem(
                ProblemKind.INTERFACE_DOWN,
                Severity.ERROR,
                "interface is administratively down",
                f"ip link set {iface} up (and bring it up at boot)",
            )
        ]
    if not link.carrier:
        return link, [
            problem(
                ProblemKind.NO_CARRIER,
                Severity.WARNING,
                f"interface has no carrier (operstate {link.operstate})",
                "check the cable / the Xen vif and bridge in dom0",
            )
        ]
    return link, []


def _check_sysctls(spec: VipSpec, link: LinkInfo) -> list[Problem]:
    iface = spec.interface
    found: list[Problem] = []

    def problem(kind: ProblemKind, sev: Severity, msg: str, fix: str) -> None:
        found.append(Problem(kind, sev, iface, spec.address, msg, fix))

    if spec.version == 6:
        if not (PROC_SYS_NET / "ipv6").is_dir():
            problem(
                ProblemKind.NO_IPV6,
                Severity.ERROR,
                "the kernel runs without IPv6",
                "boot without ipv6.disable=1",
            )
        elif read_sysctl(f"ipv6/conf/{iface}/disable_ipv6") == 1:
            problem(
                ProblemKind.NO_IPV6,
                Severity.ERROR,
                f"net.ipv6.conf.{iface}.disable_ipv6 = 1",
                f"sysctl -w net.ipv6.conf.{iface}.disable_ipv6=0 (and in /etc/sysctl.d)",
            )
        return found

    all_ign, if_ign = _ipv4_conf(iface, "arp_ignore")
    ignore = max(all_ign, if_ign)
    which = "all" if all_ign >= if_ign else iface
    fix = (
        f"sysctl -w net.ipv4.conf.{which}.arp_ignore=1 (0 or 1 both serve a VIP; "
        "and in /etc/sysctl.d)"
    )
    if ignore == 8:
        problem(
            ProblemKind.ARP_IGNORE,
            Severity.ERROR,
            f"net.ipv4.conf.{which}.arp_ignore = 8: no ARP request is answered, "
            "clients cannot resolve the VIP",
            fix,
        )
    elif ignore == 2:
        problem(
            ProblemKind.ARP_IGNORE,
            Severity.WARNING,
            f"net.ipv4.conf.{which}.arp_ignore = 2: askers outside the VIP's subnet and "
            "RFC 5227 probes get no ARP answer (the peer's duplicate check cannot see "
            "this host)",
            fix,
        )

    all_rp, if_rp = _ipv4_conf(iface, "rp_filter")
    all_af, if_af = _ipv4_conf(iface, "arp_filter")
    strict_rp = max(all_rp, if_rp) == 1
    arp_filter = bool(all_af or if_af)
    if strict_rp or arp_filter:
        other = _subnet_elsewhere(spec, link)
        if other is not None and strict_rp:
            which = "all" if all_rp == 1 else iface
            problem(
                ProblemKind.RP_FILTER,
                Severity.ERROR,
                f"net.ipv4.conf.{which}.rp_filter = 1 (strict) and {spec.network} is "
                f"connected on {other}: clients' packets to the VIP arriving on {iface} "
                "fail the reverse-path check",
                f"put the VIP on {other}, or set rp_filter = 2 (loose) for {iface} and all",
            )
        if other is not None and arp_filter:
            which = "all" if all_af else iface
            problem(
                ProblemKind.ARP_FILTER,
                Severity.ERROR,
                f"net.ipv4.conf.{which}.arp_filter = 1 and {spec.network} is connected "
                f"on {other}: ARP requests for the VIP arriving on {iface} go unanswered",
                f"put the VIP on {other}, or set arp_filter = 0",
            )
    return found


def _check_static(spec: VipSpec) -> list[Problem]:
    state = vip_state(spec)
    if state is None or not state.permanent:
        return []
    return [
        Problem(
            ProblemKind.STATIC_VIP,
            Severity.ERROR,
            spec.interface,
            spec.address,
            "the VIP is configured permanently on this host (no lease: it would stay "
            "after the daemon dies, and on both VMs at once)",
            "remove it from the static network configuration (/etc/network/interfaces, "
            "systemd-networkd, ...) and let the failover daemon hold it",
        )
    ]


def _check_duplicates(spec: VipSpec, link: LinkInfo, timeout: float) -> list[Problem]:
    try:
        others = duplicate_holders(spec, timeout, mac=link.mac)
    except VipError as exc:
        return [
            Problem(
                ProblemKind.PROBE_FAILED,
                Severity.WARNING,
                spec.interface,
                spec.address,
                f"could not probe for another holder: {exc}",
                "check that this process may open packet sockets (CAP_NET_RAW)",
            )
        ]
    if not others:
        return []
    proto = "ARP" if spec.version == 4 else "neighbour advertisement"
    return [
        Problem(
            ProblemKind.DUPLICATE_ADDRESS,
            Severity.ERROR,
            spec.interface,
            spec.address,
            f"another host answers for the VIP ({proto} from {', '.join(others)})",
            "find that host (its MAC above) and take the VIP off it (stop its failover "
            "daemon or static configuration) before this one takes over",
        )
    ]


def preflight(specs: Iterable[VipSpec], *, probe_timeout: float | None = 0.2) -> list[Problem]:
    """Everything that would keep these VIPs from working here, with fixes; empty if
    none. Works in the calling thread's network namespace.

    ``probe_timeout`` seconds are spent per VIP listening for another holder
    (:func:`ipfailover.duplicate_holders`; our own answers never count, so it is
    fine to run while we hold the VIP); None skips the probe (no traffic at all).
    """
    problems: list[Problem] = []
    links: dict[str, tuple[LinkInfo | None, list[Problem]]] = {}
    for spec in specs:
        if spec.interface not in links:
            links[spec.interface] = _check_link(spec)
            problems += links[spec.interface][1]
        link, link_problems = links[spec.interface]
        if link is None:
            continue
        problems += _check_sysctls(spec, link)
        problems += _check_static(spec)
        if (
            probe_timeout is not None
            and link.up
            and not any(p.kind is ProblemKind.INTERFACE_DOWN for p in link_problems)
        ):
            problems += _check_duplicates(spec, link, probe_timeout)
    return problems
