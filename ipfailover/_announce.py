"""Telling the LAN where the VIP is: gratuitous ARP, unsolicited neighbour advertisements,
unicast updates to known clients, and ARP / NS exchanges that check what others believe.

Frames are built and parsed with scapy and sent and received on a plain ``AF_PACKET``
socket bound to the interface, opened in the calling thread's network namespace.
Why not scapy's ``sendp``/``srp``: scapy resolves interfaces once, in the namespace the
process had when scapy was imported, so in a thread that entered another namespace
scapy 2.8's ``sendp(iface="eth0")`` fails with ENODEV; scapy 2.5's works but switches
the interface to promiscuous mode on every call and takes 20-40 ms per call, 7-20 ms to
the first frame. With the packet socket the first frame reaches the neighbour namespace
0.1-0.3 ms after the call; frames are built once per (address, MAC) and cached (0.5 ms
to build; :func:`prepare` does it ahead). Closing a packet socket waits for an RCU grace
period in the kernel (``synchronize_net``, 6-20 ms here), so a helper thread closes our
sockets after the call has returned.

Linux receivers, what updates an *existing* neighbour entry (checked in the lab; new
entries are only created by a host that is itself asked, RFC 826 / ``neigh_event_ns``):
- ARP request with sender IP = target IP = VIP (gratuitous request): always.
- ARP reply with sender IP = target IP = VIP: only if the ARP target *hardware* address
  equals the sender's (``arp_is_garp``). With target hardware = broadcast it is an
  ordinary reply, ignored within ``locktime`` (1 s) of the entry's last update - right
  after the client talked to the old holder.
- Unicast ARP reply to a client: also subject to ``locktime``; a unicast ARP *request*
  from the VIP to the client ("who-has CLIENT tell VIP") is not (the asked host always
  overrides), so :func:`unicast_announce` sends that.
- Unsolicited NA with Override=1: always (no locktime in NDP).

Every function is bounded: sends take ``(count - 1) * interval``, exchanges ``timeout``.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

# Imported here, not on first use (80-200 ms: not on the first takeover). Importing
# scapy in a thread that entered another network namespace also makes scapy 2.5 warn
# about interfaces it cannot find.
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether

from ._vip import (
    InterfaceNotFound,
    IPAddress,
    VipError,
    VipSpec,
    interface_mac,
)

T = TypeVar("T")

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
_PACKET_OUTGOING = 4
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
ZERO_MAC = "00:00:00:00:00:00"
ALL_NODES = ipaddress.IPv6Address("ff02::1")
_UNSPECIFIED_V4 = ipaddress.IPv4Address("0.0.0.0")
_UNSPECIFIED_V6 = ipaddress.IPv6Address("::")
_ARP_REQUEST = 1
_ARP_REPLY = 2


# -- addresses --------------------------------------------------------------------------


def _mac(mac: str) -> str:
    parts = mac.lower().split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"{mac!r}: not a MAC address")
    int("".join(parts), 16)
    return ":".join(parts)


def solicited_node(address: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """The solicited-node multicast group of ``address`` (ff02::1:ffXX:XXXX)."""
    return ipaddress.IPv6Address(
        int(ipaddress.IPv6Address("ff02::1:ff00:0")) | (int(address) & 0xFFFFFF)
    )


def multicast_mac(group: ipaddress.IPv6Address) -> str:
    """The Ethernet address of an IPv6 multicast group (33:33 + its low 32 bits)."""
    low = group.packed[-4:]
    return "33:33:" + ":".join(f"{b:02x}" for b in low)


# -- frames (scapy builds and parses) ------------------------------------------------------


@functools.lru_cache(maxsize=256)
def garp_frames(address: ipaddress.IPv4Address, mac: str) -> tuple[bytes, bytes]:
    """The two gratuitous ARP forms, both Ethernet-broadcast from ``mac``: a request
    (sender = target = VIP) and a reply (sender = target = VIP, target hardware =
    sender hardware, the form Linux's ``arp_is_garp`` accepts)."""

    mac = _mac(mac)
    ip = str(address)
    request = Ether(src=mac, dst=BROADCAST_MAC) / ARP(
        op=_ARP_REQUEST, hwsrc=mac, psrc=ip, hwdst=ZERO_MAC, pdst=ip
    )
    reply = Ether(src=mac, dst=BROADCAST_MAC) / ARP(
        op=_ARP_REPLY, hwsrc=mac, psrc=ip, hwdst=mac, pdst=ip
    )
    return bytes(request), bytes(reply)


@functools.lru_cache(maxsize=256)
def arp_request_frame(
    sender_ip: ipaddress.IPv4Address,
    sender_mac: str,
    target_ip: ipaddress.IPv4Address,
    dst_mac: str = BROADCAST_MAC,
) -> bytes:
    """ARP request "who-has TARGET tell SENDER" (sender 0.0.0.0: an RFC 5227 probe)."""

    sender_mac = _mac(sender_mac)
    frame = Ether(src=sender_mac, dst=_mac(dst_mac)) / ARP(
        op=_ARP_REQUEST,
        hwsrc=sender_mac,
        psrc=str(sender_ip),
        hwdst=ZERO_MAC,
        pdst=str(target_ip),
    )
    return bytes(frame)


@functools.lru_cache(maxsize=256)
def na_frame(
    address: ipaddress.IPv6Address,
    mac: str,
    dst_ip: ipaddress.IPv6Address = ALL_NODES,
    dst_mac: str | None = None,
) -> bytes:
    """An unsolicited neighbour advertisement for ``address``: Override=1, Solicited=0,
    Router=0, with the target link-layer address option; hop limit 255 (RFC 4861:
    receivers drop ND packets with any other)."""
    mac = _mac(mac)
    eth_dst = _mac(dst_mac) if dst_mac is not None else multicast_mac(dst_ip)
    frame = (
        Ether(src=mac, dst=eth_dst)
        / IPv6(src=str(address), dst=str(dst_ip), hlim=255)
        / ICMPv6ND_NA(R=0, S=0, O=1, tgt=str(address))
        / ICMPv6NDOptDstLLAddr(lladdr=mac)
    )
    return bytes(frame)


@functools.lru_cache(maxsize=256)
def ns_frame(
    sender_ip: ipaddress.IPv6Address, sender_mac: str, target_ip: ipaddress.IPv6Address
) -> bytes:
    """A neighbour solicitation for ``target_ip`` to its solicited-node group. From
    ``::`` it is a DAD probe (no source link-layer option, RFC 4862); from a unicast
    address it carries the source link-layer option, so the target learns us."""
    sender_mac = _mac(sender_mac)
    group = solicited_node(target_ip)
    pkt = (
        Ether(src=sender_mac, dst=multicast_mac(group))
        / IPv6(src=str(sender_ip), dst=str(group), hlim=255)
        / ICMPv6ND_NS(tgt=str(target_ip))
    )
    if not sender_ip.is_unspecified:
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=sender_mac)
    return bytes(pkt)


# -- the packet socket ------------------------------------------------------------------


class _Closer:
    """Closes packet sockets in a helper thread: the kernel's packet_release() waits
    for an RCU grace period (6-20 ms measured) that the caller should not wait for."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def close(self, sock: socket.socket) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="ipfailover-close", daemon=True
                )
                self._thread.start()
        self._queue.put(sock)

    def _run(self) -> None:
        while True:
            self._queue.get().close()


_closer = _Closer()


@contextmanager
def _packet_socket(iface: str, ethertype: int = 0) -> Iterator[socket.socket]:
    """An AF_PACKET socket on ``iface`` in the calling thread's namespace; receives
    frames of ``ethertype`` (nothing for 0). Bound before anything is sent, so no
    answer is missed."""
    # Protocol 0 at creation: the socket receives nothing until bind() names the
    # interface, so no frame of another interface slips in between.
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except OSError as exc:
        raise VipError(f"packet socket: {exc}", interface=iface, errno=exc.errno) from exc
    try:
        try:
            sock.bind((iface, ethertype))
        except OSError as exc:
            cls = InterfaceNotFound if exc.errno == errno.ENODEV else VipError
            raise cls(f"{iface}: {exc.strerror}", interface=iface, errno=exc.errno) from exc
        yield sock
    finally:
        _closer.close(sock)


def _sock_mac(sock: socket.socket, iface: str) -> str:
    """The hardware address of the interface a packet socket is bound to."""
    hwaddr = sock.getsockname()[4]
    if len(hwaddr) != 6 or hwaddr == bytes(6):
        raise VipError(f"{iface} has no Ethernet address", interface=iface)
    return ":".join(f"{b:02x}" for b in hwaddr)


def _send(sock: socket.socket, iface: str, frame: bytes) -> None:
    try:
        sock.send(frame)
    except OSError as exc:
        raise VipError(
            f"send on {iface}: {exc.strerror}", interface=iface, errno=exc.errno
        ) from exc


def _send_rounds(
    iface: str,
    frames_for: Callable[[str], Iterable[bytes]],
    count: int,
    interval: float,
    mac: str | None,
) -> int:
    """Send ``frames_for(our_mac)`` ``count`` times, ``interval`` seconds apart."""
    if count < 1:
        raise ValueError(f"count {count}: want at least 1")
    if interval < 0:
        raise ValueError(f"interval {interval}: want >= 0")
    sent = 0
    with _packet_socket(iface) as sock:
        frames = tuple(frames_for(_mac(mac) if mac else _sock_mac(sock, iface)))
        for i in range(count):
            if i:
                time.sleep(interval)
            for frame in frames:
                _send(sock, iface, frame)
                sent += 1
    return sent


def _exchange(
    iface: str,
    ethertype: int,
    frame_for: Callable[[str], bytes],
    timeout: float,
    match: Callable[[Any, str], T | None],
    *,
    mac: str | None = None,
    tries: int = 2,
    first: bool = True,
) -> list[T]:
    """Send ``frame_for(our_mac)`` ``tries`` times spread over ``timeout``, collecting
    ``match(packet, our_mac)``'s non-None verdicts on the frames received meanwhile;
    stop at the first when ``first``. Returns within ``timeout`` (plus a send)."""
    if timeout <= 0:
        raise ValueError(f"timeout {timeout}: want > 0")
    tries = max(1, tries)
    start = time.monotonic()
    deadline = start + timeout
    results: list[T] = []
    with _packet_socket(iface, ethertype) as sock:
        our_mac = _mac(mac) if mac else _sock_mac(sock, iface)
        frame = frame_for(our_mac)
        for attempt in range(tries):
            _send(sock, iface, frame)
            until = min(deadline, start + timeout * (attempt + 1) / tries)
            while True:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                sock.settimeout(remaining)
                try:
                    data, addr = sock.recvfrom(65535)
                except TimeoutError:
                    break
                except OSError as exc:
                    raise VipError(
                        f"receive on {iface}: {exc.strerror}", interface=iface, errno=exc.errno
                    ) from exc
                if addr[2] == _PACKET_OUTGOING or len(data) < 14:
                    continue
                if int.from_bytes(data[12:14], "big") != ethertype:
                    continue
                verdict = match(Ether(data), our_mac)
                if verdict is not None:
                    results.append(verdict)
                    if first:
                        return results
    return results


# -- announcements ----------------------------------------------------------------------


def garp(spec: VipSpec, count: int = 3, interval: float = 0.1, *, mac: str | None = None) -> int:
    """Gratuitous ARP for an IPv4 VIP: ``count`` rounds of both forms (request and
    reply, see :func:`garp_frames`), ``interval`` seconds apart, from ``mac`` (default:
    the interface's). Returns the number of frames sent; takes ``(count-1)*interval``.
    The first frame leaves ~0.1 ms after the call (frames are cached per address
    and MAC)."""
    vip = spec.address
    if not isinstance(vip, ipaddress.IPv4Address):
        raise ValueError(f"{vip}: gratuitous ARP is for IPv4 (use unsolicited_na)")
    return _send_rounds(spec.interface, lambda m: garp_frames(vip, m), count, interval, mac)


def unsolicited_na(
    spec: VipSpec, count: int = 3, interval: float = 0.1, *, mac: str | None = None
) -> int:
    """Unsolicited neighbour advertisements for an IPv6 VIP to all nodes (ff02::1),
    Override=1: ``count`` of them, ``interval`` seconds apart. Returns frames sent."""
    vip = spec.address
    if not isinstance(vip, ipaddress.IPv6Address):
        raise ValueError(f"{vip}: neighbour advertisements are for IPv6 (use garp)")
    return _send_rounds(spec.interface, lambda m: (na_frame(vip, m),), count, interval, mac)


def announce(
    spec: VipSpec, count: int = 3, interval: float = 0.1, *, mac: str | None = None
) -> int:
    """:func:`garp` for an IPv4 VIP, :func:`unsolicited_na` for an IPv6 one."""
    if spec.version == 4:
        return garp(spec, count, interval, mac=mac)
    return unsolicited_na(spec, count, interval, mac=mac)


def prepare(spec: VipSpec, mac: str | None = None) -> str:
    """Build and cache the announcement frames of ``spec`` now (at startup), so the
    first takeover does not pay for it; returns the MAC used."""
    mac = _mac(mac or interface_mac(spec.interface))
    if isinstance(spec.address, ipaddress.IPv4Address):
        garp_frames(spec.address, mac)
    else:
        na_frame(spec.address, mac)
    return mac


def unicast_announce(
    spec: VipSpec,
    neighbours: Iterable[tuple[IPAddress | str, str]],
    *,
    mac: str | None = None,
) -> int:
    """Tell each known client directly, one frame each, Ethernet-unicast to its MAC:
    IPv4: "who-has CLIENT tell VIP" from our MAC (a host asked for its own address
    always takes the sender's mapping; a unicast reply would be ignored within the
    client's 1 s locktime; the client answers, which is harmless);
    IPv6: an unsolicited NA (Override=1) to the client's address.
    ``neighbours`` as from :func:`recent_clients`; other families and the VIP itself
    are skipped. Returns the number of frames sent."""
    vip = spec.address
    targets: list[tuple[IPAddress, str]] = []
    for raw_ip, client_mac in neighbours:
        ip = ipaddress.ip_address(raw_ip)
        if ip.version == vip.version and ip != vip:
            targets.append((ip, _mac(client_mac)))
    if not targets:
        return 0

    def frames_for(our_mac: str) -> list[bytes]:
        frames = []
        for ip, client_mac in targets:
            if isinstance(ip, ipaddress.IPv4Address) and isinstance(vip, ipaddress.IPv4Address):
                frames.append(arp_request_frame(vip, our_mac, ip, client_mac))
            elif isinstance(ip, ipaddress.IPv6Address) and isinstance(vip, ipaddress.IPv6Address):
                frames.append(na_frame(vip, our_mac, ip, client_mac))
        return frames

    return _send_rounds(spec.interface, frames_for, 1, 0.0, mac)


# -- exchanges: probes and convergence ----------------------------------------------------


def arp_probe(
    iface: str,
    target_ip: ipaddress.IPv4Address | str,
    timeout: float = 0.2,
    *,
    sender_ip: ipaddress.IPv4Address | str | None = None,
    sender_mac: str | None = None,
    tries: int = 2,
) -> str | None:
    """Ask "who-has TARGET tell SENDER" (broadcast) and return the MAC in the first
    reply, None if none came within ``timeout``. ``sender_ip`` None sends an RFC 5227
    probe (sender 0.0.0.0: nobody learns anything from it)."""
    target = ipaddress.IPv4Address(target_ip)
    sender = ipaddress.IPv4Address(sender_ip) if sender_ip is not None else _UNSPECIFIED_V4

    def match(pkt: Any, our_mac: str) -> str | None:
        arp = pkt.getlayer(ARP)
        if arp is None or arp.op != _ARP_REPLY or arp.psrc != str(target):
            return None
        if str(pkt.dst).lower() not in (our_mac, BROADCAST_MAC):
            return None
        return str(arp.hwsrc).lower()

    found = _exchange(
        iface,
        ETH_P_ARP,
        lambda m: arp_request_frame(sender, m, target),
        timeout,
        match,
        mac=sender_mac,
        tries=tries,
    )
    return found[0] if found else None


def ns_probe(
    iface: str,
    target_ip: ipaddress.IPv6Address | str,
    timeout: float = 0.2,
    *,
    sender_ip: ipaddress.IPv6Address | str,
    sender_mac: str | None = None,
    tries: int = 2,
) -> str | None:
    """IPv6 twin of :func:`arp_probe`: a neighbour solicitation for ``target_ip`` from
    ``sender_ip`` (with our link-layer address), and the MAC in the solicited NA that
    comes back to us; None if none within ``timeout``."""
    target = ipaddress.IPv6Address(target_ip)
    sender = ipaddress.IPv6Address(sender_ip)
    if sender.is_unspecified:
        raise ValueError("ns_probe needs a source address (for DAD see duplicate_holders)")

    def match(pkt: Any, our_mac: str) -> str | None:
        if str(pkt.dst).lower() != our_mac:
            return None
        return _na_of(pkt, target)

    found = _exchange(
        iface,
        ETH_P_IPV6,
        lambda m: ns_frame(sender, m, target),
        timeout,
        match,
        mac=sender_mac,
        tries=tries,
    )
    return found[0] if found else None


def _na_of(pkt: Any, target: ipaddress.IPv6Address) -> str | None:
    """The advertised MAC if ``pkt`` is a neighbour advertisement for ``target``."""
    na = pkt.getlayer(ICMPv6ND_NA)
    if na is None or ipaddress.IPv6Address(na.tgt) != target:
        return None
    opt = pkt.getlayer(ICMPv6NDOptDstLLAddr)
    return str(opt.lladdr if opt is not None else pkt.src).lower()


def converged(
    spec: VipSpec,
    observer_ip: IPAddress | str,
    our_mac: str | None = None,
    timeout: float = 0.2,
) -> bool:
    """Has ``observer_ip`` (the gateway, a client) learned that the VIP is at our MAC?

    We cannot read a remote neighbour cache, so we make the observer write it and
    watch for the proof: we ask the observer for *its* address with the VIP as sender
    (ARP "who-has OBSERVER tell VIP", or an NS from the VIP with our link-layer
    option). A Linux host that answers such a request has first stored sender IP ->
    sender MAC with override (``neigh_event_ns`` for ARP; ``ndisc_recv_ns`` for NDP),
    so an answer addressed to our MAC means: at the moment it answered, the observer
    mapped the VIP to us. True on such an answer within ``timeout``.

    Limits: it proves the mapping at answer time only (a late frame from the old
    holder can undo it); False means "not shown", not "wrong" (the observer may be
    down, filter ARP, or run with arp_ignore that forbids answering); non-Linux
    observers that answer without updating their cache (against RFC 826) would give a
    false True. It also *causes* the convergence it checks, so it doubles as a
    targeted announcement.
    """
    observer = ipaddress.ip_address(observer_ip)
    vip = spec.address
    if isinstance(observer, ipaddress.IPv4Address) and isinstance(vip, ipaddress.IPv4Address):
        found = arp_probe(spec.interface, observer, timeout, sender_ip=vip, sender_mac=our_mac)
    elif isinstance(observer, ipaddress.IPv6Address) and isinstance(vip, ipaddress.IPv6Address):
        found = ns_probe(spec.interface, observer, timeout, sender_ip=vip, sender_mac=our_mac)
    else:
        raise ValueError(f"observer {observer} and VIP {vip}: not the same family")
    return found is not None


def duplicate_holders(
    spec: VipSpec, timeout: float = 0.2, *, mac: str | None = None, tries: int = 2
) -> list[str]:
    """MACs of *other* hosts that answer for the VIP (our own never counts).

    IPv4: an RFC 5227 probe (who-has VIP, sender 0.0.0.0); holders answer with an ARP
    reply; any ARP frame from the VIP with another MAC counts (e.g. its GARP).
    IPv6: a DAD probe (NS for the VIP from ::); holders answer with an NA to ff02::1.
    Holders that do not answer are not seen: Linux with arp_ignore >= 2 does not
    answer 0.0.0.0 probes, and a host with the link down is silent.
    Waits the whole ``timeout`` to hear every holder; returns the distinct MACs.
    """
    vip = spec.address
    if isinstance(vip, ipaddress.IPv4Address):
        vip4 = vip

        def match4(pkt: Any, our_mac: str) -> str | None:
            arp = pkt.getlayer(ARP)
            if arp is None or arp.psrc != str(vip4):
                return None
            other = str(arp.hwsrc).lower()
            return other if other != our_mac else None

        found = _exchange(
            spec.interface,
            ETH_P_ARP,
            lambda m: arp_request_frame(_UNSPECIFIED_V4, m, vip4),
            timeout,
            match4,
            mac=mac,
            tries=tries,
            first=False,
        )
    else:
        vip6 = vip

        def match6(pkt: Any, our_mac: str) -> str | None:
            other = _na_of(pkt, vip6)
            if other is None or other == our_mac or str(pkt.src).lower() == our_mac:
                return None
            return other

        found = _exchange(
            spec.interface,
            ETH_P_IPV6,
            lambda m: ns_frame(_UNSPECIFIED_V6, m, vip6),
            timeout,
            match6,
            mac=mac,
            tries=tries,
            first=False,
        )
    return sorted(set(found))
