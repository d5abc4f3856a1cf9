"""The pair engine: drives one ``PairMachine`` with real sockets, clocks and addresses.

One ``PairEngine`` per failover group, an asyncio task in guardian's TaskGroup
(``await engine.run()``).  What it does, in the order the pair core asks for:

* **Time.**  A ``Tick`` at ``machine.next_wakeup`` (the first one at once).  When a
  packet and a tick are due together, the packet goes first.  Before anything buffered
  during a pause is delivered, the engine checks for a clock jump: the loop woke later
  than it asked to (a SIGSTOPped daemon, a paused VM whose monotonic clock ran on), or
  CLOCK_BOOTTIME - CLOCK_MONOTONIC grew (a suspended VM); either is a ``ClockJump``.
* **Packets.**  One non-blocking UDP socket per path, bound to the path's local
  address (and interface, SO_BINDTODEVICE), handled by the loop (``DatagramProtocol``).
  Every datagram goes through ``Endpoint.open`` at once: a refused one is counted by
  reason and dropped; it never raises, blocks or reaches the machine.
* **Sends.**  Each ``Send`` is sealed on every path, ``copies`` times, with the VIPs
  this node holds at that moment.  "Holds" is the kernel's word: the answer of the
  last netlink operation on the address, corrected by the kernel's own address events
  (``RTM_NEWADDR``/``RTM_DELADDR``, on a netlink socket in the loop, so a lease that
  ran out is seen at once) and never longer than the lease: conservative, so a VIP
  that may still be on the interface is always listed (the peer does not take VIPs a
  live peer lists).
* **Addresses.**  All netlink and packet-socket work runs on one worker thread per
  group (FIFO: a release is never overtaken by an earlier add); the loop never waits
  for it, except that ``ReleaseVIPs`` is awaited (bounded) before the GOODBYE or
  RELEASED that follows it.  Takeover = add (~1 ms) and the first announcement in one
  job on that thread; the other ``announce_count - 1`` rounds follow
  ``announce_interval`` apart and stop as soon as the VIPs are released.  RenewVIPs
  renews the lease (``lease`` s; renewals every ``min(1 s, lease / 3)``); a VIP found
  gone while master is put back and announced.  Cold services: start, wait until up
  (``cold_timeout``; if they are not up by then the VIPs are added anyway and their own
  ladder decides), then the VIPs; on release the VIPs go first, then the services.
  When a peer we declared dead talks again while we are master, we announce again:
  a resumed VM may have re-pointed clients at itself before it released (a reply
  from the VIP makes its kernel ask the client for its MAC with the VIP as sender).
* **Verified takeover** (``verify``: observers such as the gateway or clients).
  After the first announcement, a task asks each observer whether it maps each VIP
  of its family to us (``VipOps.converged``: an ARP request / NS from the VIP, one
  short job on the address thread per probe); a round that leaves one unconvinced
  is followed by another announcement and a round twice as long (50 ms, 100, 200,
  ...) until ``verify_timeout``.  The outcome goes to the observer (``converged``)
  and to ``status()["last_convergence"]``; it never delays the first announcement,
  the loop or the heartbeats, and the VIPs stay either way.
* **Health.**  ``LocalHealth`` is the sum of: tracked services whose ladder ran its
  ``failover`` rung (until they are up again), carrier on the VIP interface
  (``track_interface``; when it comes back, healthy only ``init_dead`` later, so the
  heartbeats flow again before this node may suspect its peer), a VIP that could not
  be added (for 10 s).  ``PingResult``
  from ICMP echo to the ping nodes on a worker thread (unreachable after 3 failed
  rounds, reachable after one answer).
* **Hooks.**  ``RunNotify`` queues the notify command; one task runs them in order,
  each after the address work before it, with a timeout; the machine never waits.
* **Fence.**  ``fence = "dom0"``: a ``Fence`` action calls ``fencer(vm, reason)``
  (guardian's escalation to guardian-hostd: a ``fence-peer`` request for ``fence_vm``)
  on a task and posts its ``(ok, detail)`` as ``FenceResult``; one fence at a time
  (a Fence while one is running waits for that one).  The machine's own deadline
  (``fence_timeout``) bounds the wait; without a fencer the answer is
  ``FenceResult(False, ...)`` at once (never a takeover from a silent peer).
* **State on disk.**  ``Generation.advance(floor=time())`` at start, and the replay
  guard's peer generations, in ``STATE_DIR/failover/GROUP/``.

Startup refuses the group (``status()["error"]``, nothing sent) on a key file, bind or
preflight error.  A VIP left on the interface by an earlier run is kept while the
machine decides and removed unless this node becomes master.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import ipaddress
import json
import logging
import os
import signal
import socket
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ._machine import (
    Action,
    ClockJump,
    Fence,
    FenceResult,
    Input,
    LocalHealth,
    Notice,
    PairMachine,
    PeerMessage,
    PingResult,
    Reannounce,
    ReleaseVIPs,
    RenewVIPs,
    RunNotify,
    Send,
    Shutdown,
    StateChange,
    SwitchoverCommand,
    SwitchoverOutcome,
    TakeVIPs,
    Tick,
)
from ._settings import GroupSettings, IPAddress, PathSettings
from ._states import PairState
from ._vip import VipSpec
from ._wire import MAX_CLIENTS, Body, Endpoint, Generation, KeyRing, Message, MsgType

log = logging.getLogger("guardian.failover")

T = TypeVar("T")
S = PairState

#: how long the loop waits for one job of the address thread (netlink round trips)
VIP_TIMEOUT = 2.0
#: a VIP that could not be added keeps the node unhealthy this long, then it may retry
VIP_FAILURE_HOLD = 10.0
#: a client list from the peer older than this is not used at a takeover (s)
CLIENTS_MAX_AGE = 600.0
#: an unchanged client list is sent again at every this many-th collection
CLIENTS_RESEND_EVERY = 5
#: how often the master collects its clients when ``announce_refresh`` is 0 (s)
CLIENTS_DEFAULT_PERIOD = 10.0
#: consecutive failed ping rounds before the ping nodes count as unreachable
PING_FALL = 3
#: verified takeover: the first round's wait for the observers' answers; each round
#: that leaves one unconvinced re-announces and waits twice as long (up to verify_timeout)
VERIFY_FIRST_WAIT = 0.05

# ---------------------------------------------------------------- the kernel side


class VipOps(Protocol):
    """The address work, called on the engine's address thread (blocking, short)."""

    def load(self) -> None:
        """Import what the other calls need (slow: do it before the first takeover)."""

    def preflight(self, specs: Sequence[VipSpec]) -> list[tuple[bool, str]]:
        """Problems as (fatal, text)."""

    def prepare(self, spec: VipSpec) -> None: ...

    def present(self, specs: Sequence[VipSpec]) -> list[VipSpec]: ...

    def add(self, spec: VipSpec) -> int:
        """Add or re-add with a fresh lease; returns the lease the kernel holds (s)."""

    def renew(self, spec: VipSpec) -> int | None:
        """Fresh lease if present (returns it), None if it is gone (nothing added)."""

    def remove(self, spec: VipSpec) -> bool: ...

    def announce(self, spec: VipSpec) -> None:
        """One round of gratuitous ARP / unsolicited NA."""

    def carrier(self, interface: str) -> bool | None:
        """Carrier of ``interface``; None if there is no such interface."""

    def converged(self, spec: VipSpec, observer: IPAddress, timeout: float) -> bool:
        """Has ``observer`` shown (within ``timeout``) that it maps ``spec`` to us?"""

    def clients(self, specs: Sequence[VipSpec]) -> list[tuple[IPAddress, str]]:
        """Recent clients ``(address, MAC)`` on the subnets of ``specs`` (neighbour table:
        REACHABLE, STALE, DELAY, PROBE), each once."""

    def unicast_announce(self, spec: VipSpec, clients: Sequence[tuple[IPAddress, str]]) -> int:
        """Tell each of ``clients`` directly that ``spec`` is here; frames sent."""


class KernelVipOps:
    """The real thing: ``ipfailover._vip`` (pyroute2) and ``_announce`` (packet sockets)."""

    def load(self) -> None:
        from . import _announce, _preflight  # noqa: F401 - scapy: 0.1-0.3 s

    def preflight(self, specs: Sequence[VipSpec]) -> list[tuple[bool, str]]:
        from ._preflight import ProblemKind, Severity, preflight

        out = []
        for p in preflight(specs, probe_timeout=0.2):
            # Another holder at startup is the peer (master) as often as not: the
            # machine sorts it out; it is worth a line in the log, not a refusal.
            fatal = p.severity is Severity.ERROR and p.kind is not ProblemKind.DUPLICATE_ADDRESS
            out.append((fatal, str(p)))
        return out

    def prepare(self, spec: VipSpec) -> None:
        from ._announce import prepare

        prepare(spec)

    def present(self, specs: Sequence[VipSpec]) -> list[VipSpec]:
        from ._vip import vips_present

        return vips_present(specs)

    def add(self, spec: VipSpec) -> int:
        from ._vip import add_vip

        return int(add_vip(spec).valid_lft)

    def renew(self, spec: VipSpec) -> int | None:
        from ._vip import renew_vip

        st = renew_vip(spec)
        return None if st is None else int(st.valid_lft)

    def remove(self, spec: VipSpec) -> bool:
        from ._vip import remove_vip

        return remove_vip(spec)

    def announce(self, spec: VipSpec) -> None:
        from ._announce import announce

        announce(spec, count=1)

    def converged(self, spec: VipSpec, observer: IPAddress, timeout: float) -> bool:
        from ._announce import converged

        return converged(spec, observer, timeout=timeout)

    def clients(self, specs: Sequence[VipSpec]) -> list[tuple[IPAddress, str]]:
        from ._vip import recent_clients

        out: list[tuple[IPAddress, str]] = []
        seen: set[IPAddress] = set()
        done: set[tuple[str, str]] = set()
        for spec in specs:
            key = (spec.interface, str(spec.network))
            if key in done:
                continue
            done.add(key)
            for ip, mac in recent_clients(spec.interface, spec.network):
                if ip not in seen:
                    seen.add(ip)
                    out.append((ip, mac))
        return out

    def unicast_announce(self, spec: VipSpec, clients: Sequence[tuple[IPAddress, str]]) -> int:
        from ._announce import unicast_announce

        return unicast_announce(spec, clients)

    def carrier(self, interface: str) -> bool | None:
        from ._vip import InterfaceNotFound, link_info

        try:
            return link_info(interface).carrier
        except InterfaceNotFound:
            return None


class ServiceHooks(Protocol):
    """How the engine starts, stops and waits for its group's cold services
    (guardian's Supervisor implements it through the services' backends)."""

    async def start_service(self, name: str, timeout: float) -> None: ...

    async def stop_service(self, name: str, timeout: float) -> None: ...

    async def wait_service_up(self, name: str, timeout: float) -> bool: ...


# ---------------------------------------------------------------- netlink events

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
IFF_LOWER_UP = 0x10000
IFLA_IFNAME = 3
IFA_ADDRESS, IFA_LOCAL, IFA_CACHEINFO = 1, 2, 6
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")
INFINITY_LIFE_TIME = 0xFFFFFFFF


@dataclass(frozen=True)
class LinkEvent:
    index: int
    name: str
    carrier: bool
    deleted: bool


@dataclass(frozen=True)
class AddrEvent:
    index: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    prefixlen: int
    deleted: bool
    valid_lft: int | None


def _rtattrs(body: bytes, off: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while off + 4 <= len(body):
        length, kind = _RTATTR.unpack_from(body, off)
        if length < 4 or off + length > len(body):
            break
        out[kind & 0x3FFF] = body[off + 4 : off + length]
        off += (length + 3) & ~3
    return out


def parse_netlink(data: bytes) -> Iterator[LinkEvent | AddrEvent]:
    """The link and address events in one netlink datagram (others are skipped)."""
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            return
        body = data[off + _NLMSGHDR.size : off + length]
        off += (length + 3) & ~3
        if mtype in (RTM_NEWLINK, RTM_DELLINK) and len(body) >= _IFINFOMSG.size:
            _fam, _type, index, flags, _change = _IFINFOMSG.unpack_from(body, 0)
            attrs = _rtattrs(body, _IFINFOMSG.size)
            name = attrs.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode(errors="replace")
            yield LinkEvent(index, name, bool(flags & IFF_LOWER_UP), mtype == RTM_DELLINK)
        elif mtype in (RTM_NEWADDR, RTM_DELADDR) and len(body) >= _IFADDRMSG.size:
            _fam, plen, _aflags, _scope, index = _IFADDRMSG.unpack_from(body, 0)
            attrs = _rtattrs(body, _IFADDRMSG.size)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw is None or len(raw) not in (4, 16):
                continue
            valid: int | None = None
            cache = attrs.get(IFA_CACHEINFO)
            if cache is not None and len(cache) >= 8:
                _preferred, valid = struct.unpack_from("=II", cache)
            yield AddrEvent(index, ipaddress.ip_address(raw), plen, mtype == RTM_DELADDR, valid)


class _NetlinkWatch:
    """Link and address events of this network namespace, read by the loop."""

    def __init__(self, on_events: Callable[[list[LinkEvent | AddrEvent]], None],
                 on_overrun: Callable[[], None]) -> None:
        self.on_events = on_events
        self.on_overrun = on_overrun
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        events: list[LinkEvent | AddrEvent] = []
        overrun = False
        for _ in range(64):
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    overrun = True
                    continue
                log.warning("netlink events: %s", exc)
                break
            events.extend(parse_netlink(data))
        if events:
            self.on_events(events)
        if overrun:
            self.on_overrun()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


# ---------------------------------------------------------------- ICMP echo


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_ping(address: str, timeout: float, ident: int, seq: int) -> bool:
    """One ICMP (v6) echo request to ``address``; True on a matching reply within
    ``timeout``.  Blocking (raw socket: needs CAP_NET_RAW): run it on a thread."""
    ip = ipaddress.ip_address(address)
    v4 = ip.version == 4
    family = socket.AF_INET if v4 else socket.AF_INET6
    proto = socket.IPPROTO_ICMP if v4 else socket.IPPROTO_ICMPV6
    request_type, reply_type = (8, 0) if v4 else (128, 129)
    payload = b"guardian-failover-ping"
    head = struct.pack("!BBHHH", request_type, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    packet = head + payload
    if v4:  # the kernel fills in the ICMPv6 checksum itself
        packet = head[:2] + struct.pack("!H", _checksum(packet)) + head[4:] + payload
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_RAW, proto) as sock:
        sock.sendto(packet, (str(ip), 0))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sock.settimeout(left)
            try:
                data, src = sock.recvfrom(2048)
            except TimeoutError:
                return False
            if v4:
                data = data[(data[0] & 0x0F) * 4 :] if data else data
            if len(data) < 8 or ipaddress.ip_address(src[0].split("%")[0]) != ip:
                continue
            kind, _code, _sum, rid, rseq = struct.unpack_from("!BBHHH", data)
            if kind == reply_type and rid == ident & 0xFFFF and rseq == seq & 0xFFFF:
                return True


# ---------------------------------------------------------------- sockets


class _PathProtocol(asyncio.DatagramProtocol):
    def __init__(self, engine: PairEngine, index: int) -> None:
        self.engine = engine
        self.index = index

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.engine._received(self.index, data, addr)

    def error_received(self, exc: Exception) -> None:
        self.engine._send_error(self.index, exc)


@dataclass
class _Path:
    settings: PathSettings
    address: tuple[Any, ...]  # the peer's socket address
    transport: asyncio.DatagramTransport | None = None
    received: int = 0
    sent: int = 0
    send_errors: int = 0
    last_error: str | None = None


def _sockaddr(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int,
              interface: str | None) -> tuple[Any, ...]:
    if ip.version == 4:
        return (str(ip), port)
    scope = 0
    if ip.is_link_local and interface:
        scope = socket.if_nametoindex(interface)
    return (str(ip), port, 0, scope)


def _open_socket(path: PathSettings, port: int) -> socket.socket:
    v4 = path.local.version == 4
    sock = socket.socket(socket.AF_INET if v4 else socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        if path.interface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, path.interface.encode())
        # room for a burst of junk (a flood must not crowd out the peer's heartbeats
        # before the loop reads them)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        with contextlib.suppress(OSError):  # network control class, like VRRP
            if v4:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xC0)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0xC0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, 6)
        sock.bind(_sockaddr(path.local, port, path.interface))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# ---------------------------------------------------------------- hooks


async def run_hook(argv: Sequence[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run ``argv`` in its own session with ``env`` added; (exit status, stderr tail).
    On timeout the process group is killed and (-9, "timed out") returned.
    Raises OSError when it cannot be started."""
    full = dict(os.environ)
    full.update(env)
    with tempfile.TemporaryFile() as err:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=err, env=full, start_new_session=True)
        try:
            async with asyncio.timeout(timeout):
                rc = await proc.wait()
        except (TimeoutError, asyncio.CancelledError) as exc:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(1.0):
                    await proc.wait()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return -9, f"timed out after {timeout:g} s"
        err.seek(0)
        tail = err.read()[-2000:].decode(errors="replace").strip().splitlines()
        return rc, tail[-1] if tail else ""


# ---------------------------------------------------------------- the engine


class EngineRefused(Exception):
    """The group cannot start here; the message says why and what to fix."""


@dataclass(frozen=True)
class Transition:
    at: float  # monotonic
    wall: float
    old: str
    new: str
    reason: str


def _boot_drift() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME) - time.clock_gettime(time.CLOCK_MONOTONIC)


class FailoverObserver(Protocol):
    """What the engine tells an observer (guardian's incident timeline)."""

    def feed(self, actions: Sequence[Any], now: float) -> None: ...

    def vips_configured(self, now: float) -> None: ...

    def announced(self, now: float) -> None: ...

    def converged(self, now: float, ok: bool, detail: str = "") -> None: ...


class PairEngine:
    """One failover group on this node.  ``await run()`` (never raises; returns when
    shut down or refused); ``shutdown()`` releases, says goodbye and ends ``run``."""

    def __init__(
        self,
        settings: GroupSettings,
        *,
        ops: VipOps | None = None,
        services: ServiceHooks | None = None,
        clock: Callable[[], float] = time.monotonic,
        healthy: bool = True,
        netlink: bool = True,
    ) -> None:
        self.settings = settings
        self.name = settings.group
        #: told about every step (guardian's incident timeline); never required
        self.observer: FailoverObserver | None = None
        #: ``fence = "dom0"``: async (vm, reason) -> (ok, detail); set by guardian
        self.fencer: Callable[[str, str], Awaitable[tuple[bool, str]]] | None = None
        self._fence_task: asyncio.Task[Any] | None = None
        self.config = settings.pair_config()
        self.ops: VipOps = ops if ops is not None else KernelVipOps()
        self.services = services
        self.clock = clock
        self.specs = tuple(
            VipSpec(v.ip, v.network.prefixlen, settings.interface, lifetime=settings.lease)
            for v in settings.vips
        )
        self.state_dir = Path(settings.state_dir) / "failover" / settings.group
        self.error: str | None = None
        self.warnings: list[str] = []
        self.started = False
        self.machine: PairMachine | None = None
        self.endpoint: Endpoint | None = None
        self._paths: list[_Path] = []
        self._inbox: collections.deque[tuple[Input, asyncio.Future[Any] | None]] = (
            collections.deque())
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._held: dict[VipSpec, float] = {}
        self._failures: dict[str, str] = {}
        self._posted_health: tuple[bool, str] | None = None
        self._initial_health = healthy
        self._use_netlink = netlink
        self._vip_pool: ThreadPoolExecutor | None = None
        self._ping_pool: ThreadPoolExecutor | None = None
        self._watch: _NetlinkWatch | None = None
        self._ifindex: int | None = None
        self._carrier: bool | None = None
        self._carrier_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._res_tail: asyncio.Task[None] | None = None
        self._take_task: asyncio.Task[None] | None = None
        self._take_token = 0
        self._vips_up_token = -1  # the take whose VIPs are on (renew may put back)
        self._last_announce = -float("inf")
        self._notify_q: asyncio.Queue[tuple[asyncio.Task[None] | None, dict[str, str]]] = (
            asyncio.Queue())
        self._cmd_fut: asyncio.Future[Any] | None = None
        self._pending_sw: asyncio.Future[Any] | None = None
        self._last_change: StateChange | None = None
        self._settling = True  # until the first BACKUP/FAULT/MASTER after start
        self._drift = 0.0
        self._saved_known: dict[str, int] = {}
        self.history: collections.deque[Transition] = collections.deque(maxlen=20)
        self.last_takeover: dict[str, Any] | None = None
        self.last_convergence: dict[str, Any] | None = None
        #: (VIP, observer) pairs checked after each takeover (``verify``)
        self.verify_pairs: tuple[tuple[VipSpec, IPAddress], ...] = tuple(
            (spec, obs) for spec in self.specs for obs in settings.verify
            if obs.version == spec.version and obs != spec.address)
        self.notify_runs = 0
        self.notify_failures = 0
        self.notify_last_error: str | None = None
        self.ping_ok: bool | None = None
        self.vip_errors = 0
        self._drop_logged: dict[str, float] = {}
        # recent clients of the VIPs: collected while master (sent to the peer as
        # CLIENTS), received while backup (told directly at our takeover)
        self._clients_polled = -float("inf")
        self._clients_polling = False
        self._clients_sent: frozenset[tuple[IPAddress, str]] | None = None
        self._clients_unchanged = 0
        self.clients_sent = 0
        self._known_clients: tuple[tuple[IPAddress, str], ...] = ()
        self._known_clients_at: float | None = None
        self._unicast_early: tuple[int, int] | None = None
        self._last_takeover_token = -1
        self.started_at = clock()

    # ------------------------------------------------------------ public
    async def run(self) -> None:
        try:
            await self._start()
        except asyncio.CancelledError:
            self._close()
            raise
        except EngineRefused as exc:
            self.error = str(exc)
            log.error("failover %s: not started: %s", self.name, exc)
            self._close()
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not take guardian down
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("failover %s: not started", self.name)
            self._close()
            return
        try:
            await self._drive()
        except asyncio.CancelledError:
            self._close()
            raise
        except Exception as exc:  # noqa: BLE001
            self.error = f"engine stopped by a bug: {type(exc).__name__}: {exc}"
            log.exception("failover %s: engine failed", self.name)
        await self._finish()

    @property
    def running(self) -> bool:
        return self.started and not self._done.is_set()

    def post(self, event: Input) -> None:
        """Give the machine an input (from the loop thread)."""
        self._inbox.append((event, None))
        self._wake.set()

    async def shutdown(self, reason: str = "shutting down", timeout: float = 5.0) -> None:
        """Release the VIPs, send the goodbye copies, end ``run``."""
        if not self.started or self._done.is_set():
            return
        self.post(Shutdown(reason))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout)

    async def switchover(self, reason: str = "operator asked for a switchover") -> tuple[bool, str]:
        if self.error is not None:
            return False, f"group {self.name} is not running: {self.error}"
        if not self.running:
            return False, f"group {self.name} is not running"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inbox.append((SwitchoverCommand(reason), fut))
        self._wake.set()
        try:
            outcome = await asyncio.wait_for(fut, self.config.switchover_timeout + 3.0)
        except TimeoutError:
            return False, "no outcome in time"
        assert isinstance(outcome, SwitchoverOutcome)
        return outcome.ok, outcome.detail

    def reload_keys(self) -> str | None:
        """Re-read the key file (SIGHUP); keeps the old keys on error (returned)."""
        if self.endpoint is None:
            return None
        try:
            ring = KeyRing.load(self.settings.key_file)
        except (OSError, ValueError) as exc:
            log.error("failover %s: keys not reloaded, the old ones stay: %s", self.name, exc)
            return str(exc)
        self.endpoint.keyring = ring
        log.info("failover %s: keys reloaded (%s)", self.name, ring)
        return None

    # tracked services (guardian's ladder and service states)
    def service_failed(self, service: str, reason: str) -> None:
        self._set_failure(f"service {service}", reason)

    def service_recovered(self, service: str) -> None:
        self._clear_failure(f"service {service}")

    # ------------------------------------------------------------ health
    def _set_failure(self, key: str, reason: str) -> None:
        if self._failures.get(key) == reason:
            return
        self._failures[key] = reason
        self._health_changed()

    def _clear_failure(self, key: str) -> None:
        if self._failures.pop(key, None) is not None:
            self._health_changed()

    def _health(self) -> tuple[bool, str]:
        if not self._failures:
            return True, "healthy"
        return False, "; ".join(f"{k}: {v}" for k, v in sorted(self._failures.items()))

    def _health_changed(self) -> None:
        h = self._health()
        if self.machine is None or h == self._posted_health:
            return
        self._posted_health = h
        level = logging.INFO if h[0] else logging.WARNING
        log.log(level, "failover %s: local health: %s", self.name, h[1])
        self.post(LocalHealth(h[0], h[1]))

    # ------------------------------------------------------------ start
    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        st = self.settings
        if len(self.specs) == 0:
            raise EngineRefused("no VIPs configured")
        try:
            ring = KeyRing.load(st.key_file)
        except ValueError as exc:
            raise EngineRefused(str(exc)) from None
        self._vip_pool = ThreadPoolExecutor(1, thread_name_prefix=f"vip-{self.name}")
        await self._vip(self.ops.load, timeout=30.0)
        problems = await self._vip(self.ops.preflight, self.specs, timeout=10.0)
        fatal = [text for bad, text in problems if bad]
        for bad, text in problems:
            if not bad:
                self.warnings.append(text)
                log.warning("failover %s: preflight: %s", self.name, text)
        if fatal:
            raise EngineRefused("preflight: " + "; ".join(fatal))
        for spec in self.specs:
            await self._vip(self.ops.prepare, spec)
        now = self.clock()
        present = await self._vip(self.ops.present, self.specs)
        for spec in present:
            self._held[spec] = now + spec.lifetime + 1  # at most that long (a lease)
        if present:
            log.warning("failover %s: %s on %s from an earlier run: kept until this node "
                        "knows whether it is master", self.name,
                        ", ".join(str(s.address) for s in present), st.interface)
        if st.track_interface:
            self._carrier = await self._vip(self.ops.carrier, st.interface)
            if self._carrier is not True:
                self._failures["interface"] = (f"{st.interface} is missing" if self._carrier
                                               is None else f"{st.interface} has no carrier")
        if not self._initial_health:
            self._failures["startup"] = "unhealthy at start"

        def disk() -> tuple[int, dict[str, int]]:
            gen = Generation(self.state_dir).advance(floor=int(time.time()))
            known: dict[str, int] = {}
            with contextlib.suppress(FileNotFoundError):
                raw = json.loads((self.state_dir / "peers.json").read_text())
                if isinstance(raw, dict):
                    known = {str(k): int(v) for k, v in raw.items()}
            return gen, known

        try:
            generation, known = await loop.run_in_executor(None, disk)
        except (OSError, ValueError) as exc:
            raise EngineRefused(f"state directory {self.state_dir}: {exc}") from None
        self._saved_known = dict(known)
        self.endpoint = Endpoint(ring, st.group, st.node, generation, paths=len(st.paths),
                                 peer=st.peer, known=known)
        for i, p in enumerate(st.paths):
            try:
                sock = _open_socket(p, st.port)
            except OSError as exc:
                raise EngineRefused(f"path {i} ({p}): cannot bind {p.local} port {st.port}: "
                                    f"{exc.strerror or exc}") from None
            path = _Path(p, _sockaddr(p.peer, st.port, p.interface))
            self._paths.append(path)
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(_PathProtocol, self, i), sock=sock)
            path.transport = transport
        try:
            if self._use_netlink:
                self._watch = _NetlinkWatch(self._netlink_events, self._netlink_overrun)
        except OSError as exc:
            self.warnings.append(f"no netlink events ({exc}): VIP state from our own calls only")
            log.warning("failover %s: %s", self.name, self.warnings[-1])
        with contextlib.suppress(OSError):
            self._ifindex = socket.if_nametoindex(st.interface)
        ok, why = self._health()
        self._posted_health = (ok, why)
        self.machine = PairMachine(self.config, self.clock(), healthy=ok, health_reason=why)
        self._drift = _boot_drift()
        self.started = True
        self._spawn(self._notify_worker(), "notify")
        if st.ping:
            self._ping_pool = ThreadPoolExecutor(len(st.ping),
                                                 thread_name_prefix=f"ping-{self.name}")
            self._spawn(self._ping_loop(), "ping")
        log.info("failover %s: node %s (priority %d), peer %s, VIPs %s on %s, paths %s, "
                 "generation %d", self.name, st.node, st.priority, st.peer,
                 ", ".join(str(v) for v in st.vips), st.interface,
                 "; ".join(str(p) for p in st.paths), generation)

    # ------------------------------------------------------------ the loop
    async def _drive(self) -> None:
        m = self.machine
        assert m is not None
        loop = asyncio.get_running_loop()
        await self._deliver(Tick(), None)
        while not self._stopped():
            wait_start = self.clock()
            expected = m.next_wakeup
            if not self._inbox:
                handle = None
                if expected is not None:
                    handle = loop.call_later(max(0.0, expected - wait_start), self._wake.set)
                await self._wake.wait()
                if handle is not None:
                    handle.cancel()
            self._wake.clear()
            now = self.clock()
            late = now - max(expected, wait_start) if expected is not None else 0.0
            drift = _boot_drift()
            suspended = drift - self._drift
            self._drift = drift
            jump = max(late, suspended)
            if jump >= self.config.interval:
                log.warning("failover %s: the loop woke %.3f s late%s (paused?)", self.name,
                            jump, f", suspended {suspended:.3f} s" if suspended > 0.001 else "")
                await self._deliver(ClockJump(jump), None)
            while self._inbox and not self._stopped():
                item, fut = self._inbox.popleft()
                await self._deliver(item, fut)
            due = m.next_wakeup
            if due is not None and self.clock() >= due and not self._stopped():
                await self._deliver(Tick(), None)

    def _observe(self, method: str, *args: Any) -> None:
        if self.observer is None:
            return
        try:
            getattr(self.observer, method)(*args)
        except Exception:  # noqa: BLE001 - a record of the failover must not stop it
            log.exception("failover %s: observer %s failed", self.name, method)

    def _stopped(self) -> bool:
        return self.machine is not None and self.machine.state is S.STOPPED

    async def _deliver(self, item: Input, fut: asyncio.Future[Any] | None) -> None:
        m = self.machine
        assert m is not None
        if isinstance(item, SwitchoverCommand):
            self._cmd_fut = fut
        try:
            now = self.clock()
            actions = m.transition(item, now)
            self._observe("feed", actions, now)
            await self._carry_out(actions)
        finally:
            if fut is not None and not fut.done():
                if self._pending_sw is not None and not self._pending_sw.done():
                    self._pending_sw.set_result(SwitchoverOutcome(False, "superseded"))
                self._pending_sw = fut
            self._cmd_fut = None
        if self._settling and m.state in (S.BACKUP, S.FAULT):
            # the first decision after start: not master, so nothing of ours may stay
            # (a VIP or a cold service left running by an earlier run)
            self._settling = False
            if self.held_now() or self.settings.cold:
                log.info("failover %s: %s at start: removing the VIPs%s left from an "
                         "earlier run", self.name, m.state.value,
                         " and stopping the cold services" if self.settings.cold else "")
                await self._release("not master at start")
        elif self._settling and m.state is S.MASTER:
            self._settling = False
        if isinstance(item, PeerMessage):
            self._persist_known()

    async def _carry_out(self, actions: list[Action]) -> None:
        for a in actions:
            try:
                if isinstance(a, Send):
                    self._send(a)
                elif isinstance(a, TakeVIPs):
                    self._take(a.reason)
                elif isinstance(a, ReleaseVIPs):
                    await self._release(a.reason)
                elif isinstance(a, RenewVIPs):
                    self._renew()
                elif isinstance(a, Reannounce):
                    self._reannounce(a.reason)
                elif isinstance(a, StateChange):
                    self._state_change(a)
                elif isinstance(a, RunNotify):
                    self._queue_notify(a)
                elif isinstance(a, Fence):
                    self._fence(a)
                elif isinstance(a, SwitchoverOutcome):
                    fut = self._cmd_fut or self._pending_sw
                    if fut is not None and not fut.done():
                        fut.set_result(a)
                    if fut is self._pending_sw:
                        self._pending_sw = None
                    log.info("failover %s: switchover %s: %s", self.name,
                             "done" if a.ok else "failed", a.detail)
                elif isinstance(a, Notice):
                    level = logging.INFO
                    if a.kind in ("suspect",):
                        level = logging.DEBUG
                    elif a.kind in ("peer-dead", "split-brain", "clock-jump", "foreign-node"):
                        level = logging.WARNING
                    elif a.kind in ("fence-failed",):
                        level = logging.ERROR
                    log.log(level, "failover %s: %s: %s", self.name, a.kind, a.detail)
                    m = self.machine
                    if (a.kind in ("peer-alive", "peer-back") and m is not None
                            and m.holding and m.state is S.MASTER):
                        # The peer we declared dead is back (a paused VM, a healed
                        # partition; "peer-back": silent long enough to have
                        # declared us dead, while we never declared it dead).  Until
                        # it released the VIPs its kernel may have
                        # answered for them, or asked a client for its MAC with a VIP
                        # as sender -- which re-points that client at the peer.  The
                        # announcement rounds after its release set them right.
                        self._reannounce("the peer is back: correcting what it may have "
                                         "told the neighbours")
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one failed action must not stop the others
                log.exception("failover %s: carrying out %s failed", self.name, a)

    # ------------------------------------------------------------ packets
    def held_now(self, now: float | None = None) -> list[VipSpec]:
        now = self.clock() if now is None else now
        return [s for s in self.specs if self._held.get(s, -1.0) > now]

    def _send(self, a: Send) -> None:
        ep = self.endpoint
        assert ep is not None
        now = self.clock()
        vips = [s.address for s in self.held_now(now)]
        for _ in range(a.copies):
            for i, path in enumerate(self._paths):
                packet = ep.seal(a.body, path=i, vips=vips, now=now)
                if path.transport is not None:
                    path.transport.sendto(packet, path.address)
                    path.sent += 1

    def _received(self, index: int, data: bytes, addr: tuple[Any, ...]) -> None:
        ep = self.endpoint
        if ep is None or self.machine is None or self._done.is_set():
            return
        path = self._paths[index]
        path.received += 1
        try:
            msg = ep.open(data, path=index)
        except Exception:  # noqa: BLE001 - open() raises nothing by contract; belt and braces
            log.exception("failover %s: Endpoint.open raised", self.name)
            return
        if msg is None:
            drop = ep.last_drop
            reason = drop.reason.value if drop is not None else "?"
            now = self.clock()
            if now - self._drop_logged.get(reason, -1e9) >= 10.0:
                self._drop_logged[reason] = now
                log.warning("failover %s: dropped a packet on path %d from %s: %s "
                            "(%d dropped so far; logged once per 10 s per reason)", self.name,
                            index, addr[0], drop, sum(ep.drops.values()))
            return
        if msg.type is MsgType.CLIENTS:
            # informational: authenticated and replay-checked like every message, but
            # nothing for the state machine
            self._clients_received(msg)
            return
        self._inbox.append((PeerMessage(msg, index), None))
        self._wake.set()

    # ------------------------------------------------------------ recent clients
    def _clients_received(self, msg: Message) -> None:
        if msg.state is not S.MASTER:
            return
        nets = [s.network for s in self.specs]
        ours = {s.address for s in self.specs} | {p.local for p in self.settings.paths}
        keep = tuple((ip, mac) for ip, mac in msg.clients
                     if any(ip.version == n.version and ip in n for n in nets)
                     and ip not in ours)[:MAX_CLIENTS]
        self._known_clients = keep
        self._known_clients_at = self.clock()

    def _poll_clients(self, now: float) -> None:
        """While master (from ``_renew``): collect the clients on the address thread
        every ``announce_refresh`` and send them to the peer."""
        st = self.settings
        period = st.announce_refresh if st.announce_refresh > 0 else CLIENTS_DEFAULT_PERIOD
        if (not st.unicast_clients or self._clients_polling
                or now - self._clients_polled < period):
            return
        specs = self.held_now(now)
        if not specs:
            return
        self._clients_polled = now
        self._clients_polling = True
        assert self._vip_pool is not None
        fut = asyncio.wrap_future(self._vip_pool.submit(self.ops.clients, specs))
        fut.add_done_callback(self._clients_polled_done)

    def _clients_polled_done(self, fut: asyncio.Future[list[tuple[IPAddress, str]]]) -> None:
        self._clients_polling = False
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.debug("failover %s: listing the clients: %s", self.name, exc)
            return
        peers = {p.peer for p in self.settings.paths}  # the peer is no client
        clients = tuple([c for c in fut.result() if c[0] not in peers][:MAX_CLIENTS])
        m = self.machine
        if not clients or m is None or m.state is not S.MASTER or not m.holding:
            return
        current = frozenset(clients)
        if current == self._clients_sent:
            self._clients_unchanged += 1
            if self._clients_unchanged % CLIENTS_RESEND_EVERY:
                return
        self._clients_sent = current
        self._clients_unchanged = 0
        self._send_clients(clients)

    def _send_clients(self, clients: Sequence[tuple[IPAddress, str]]) -> None:
        ep, m = self.endpoint, self.machine
        assert ep is not None and m is not None
        now = self.clock()
        body = Body(MsgType.CLIENTS, m.state, self.config.priority,
                    interval_ms=self.config.interval_ms)
        vips = [s.address for s in self.held_now(now)]
        for i, path in enumerate(self._paths):
            packet = ep.seal(body, path=i, vips=vips, clients=clients, now=now)
            if path.transport is not None:
                path.transport.sendto(packet, path.address)
                path.sent += 1
        self.clients_sent += 1

    def _takeover_clients(self) -> tuple[tuple[IPAddress, str], ...]:
        at = self._known_clients_at
        if not self.settings.unicast_clients or at is None:
            return ()
        if self.clock() - at > CLIENTS_MAX_AGE:
            return ()
        return self._known_clients

    def _unicast(self, token: int, added: Sequence[VipSpec],
                 clients: Sequence[tuple[IPAddress, str]]) -> int:
        """On the address thread, right after the first broadcast round: tell the
        peer's recent clients directly (for those that missed or ignore the broadcast)."""
        if token != self._take_token:
            return 0
        sent = 0
        for spec in added:
            net = spec.network
            mine = [(ip, mac) for ip, mac in clients if ip.version == net.version
                    and ip in net and ip != spec.address]
            if not mine:
                continue
            try:
                sent += self.ops.unicast_announce(spec, mine)
            except Exception as exc:  # noqa: BLE001
                log.warning("failover %s: unicast announcement of %s: %s", self.name,
                            spec.address, exc)
        return sent

    def _unicast_done(self, fut: asyncio.Future[int], token: int, count: int) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        sent = fut.result()
        log.info("failover %s: told %d known client(s) directly (%d frame(s))", self.name,
                 count, sent)
        if token == self._last_takeover_token and self.last_takeover is not None:
            self.last_takeover["unicast_clients"] = sent
        else:  # done before _do_take recorded the takeover
            self._unicast_early = (token, sent)

    def _send_error(self, index: int, exc: Exception) -> None:
        path = self._paths[index]
        path.send_errors += 1
        path.last_error = str(exc)

    def _persist_known(self) -> None:
        ep = self.endpoint
        if ep is None:
            return
        known = ep.guard.generations()
        if known == self._saved_known:
            return
        self._saved_known = dict(known)
        target = self.state_dir / "peers.json"

        def write() -> None:
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, sort_keys=True))
            os.replace(tmp, target)

        fut = asyncio.get_running_loop().run_in_executor(None, write)
        fut.add_done_callback(self._log_write_error)

    def _log_write_error(self, fut: asyncio.Future[None]) -> None:
        exc = fut.exception()
        if exc is not None:
            log.warning("failover %s: cannot save peer generations: %s", self.name, exc)

    # ------------------------------------------------------------ addresses
    async def _vip(self, fn: Callable[..., T], *args: Any, timeout: float = VIP_TIMEOUT) -> T:
        assert self._vip_pool is not None
        fut = self._vip_pool.submit(fn, *args)
        return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)

    def _fence(self, a: Fence) -> None:
        vm = self.settings.fence_vm or a.peer or self.settings.peer
        if self.fencer is None:
            log.error("failover %s: fence = \"dom0\" asked to fence %s, but no escalation "
                      "channel is available: not taking over (%s)", self.name, vm, a.reason)
            self.post(FenceResult(False, "no escalation channel available"))
            return
        if self._fence_task is not None and not self._fence_task.done():
            log.info("failover %s: a fence of %s is still running; waiting for it",
                     self.name, vm)
            return
        log.warning("failover %s: asking dom0 to fence %s before taking over (%s)",
                    self.name, vm, a.reason)
        fencer = self.fencer

        async def run() -> None:
            try:
                ok, detail = await fencer(vm, a.reason)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed fence is an answer
                log.exception("failover %s: fencing %s raised", self.name, vm)
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            log.log(logging.WARNING if ok else logging.ERROR,
                    "failover %s: fence of %s %s: %s", self.name, vm,
                    "confirmed" if ok else "failed", detail)
            self.post(FenceResult(ok, detail))

        self._fence_task = self._spawn(run(), "fence")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"failover:{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _chain(self, job: Callable[[], Awaitable[None]], name: str) -> asyncio.Task[None]:
        """Run ``job`` after every resource job before it (takes, releases, service
        starts and stops happen in the order the machine asked for them)."""
        prev = self._res_tail

        async def run() -> None:
            if prev is not None and not prev.done():
                await asyncio.wait({prev})
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("failover %s: %s failed", self.name, name)

        task: asyncio.Task[None] = self._spawn(run(), name)
        self._res_tail = task
        return task

    def _take(self, reason: str) -> None:
        self._take_token += 1
        token = self._take_token
        self._take_task = self._chain(lambda: self._do_take(reason, token), "take")

    async def _do_take(self, reason: str, token: int) -> None:
        st = self.settings
        t0 = self.clock()
        if st.cold and self.services is not None:
            for name in st.cold:
                try:
                    await self.services.start_service(name, st.cold_timeout)
                except Exception as exc:  # noqa: BLE001 - the gate below tells
                    log.error("failover %s: starting cold service %s: %s", self.name, name, exc)
            deadline = self.clock() + st.cold_timeout
            for name in st.cold:
                left = max(0.0, deadline - self.clock())
                if not await self.services.wait_service_up(name, left):
                    log.warning("failover %s: cold service %s not up after %.1f s; adding the "
                                "VIPs anyway (its own ladder decides what happens next)",
                                self.name, name, st.cold_timeout)
            if token != self._take_token:
                return
        t_add = self.clock()
        clients = self._takeover_clients()
        up: list[VipSpec] = []
        assert self._vip_pool is not None
        add_fut = self._vip_pool.submit(self._add_and_announce, self.specs, up)
        if clients:
            # queued behind the first broadcast round on the address thread: never
            # delays it, and runs right after it
            ufut = asyncio.wrap_future(
                self._vip_pool.submit(self._unicast, token, up, clients))
            ufut.add_done_callback(
                functools.partial(self._unicast_done, token=token, count=len(clients)))
        results = await asyncio.wait_for(asyncio.wrap_future(add_fut), VIP_TIMEOUT)
        now = self.clock()
        self._observe("vips_configured", now)
        self._observe("announced", now)
        failed = []
        for spec, lease in results:
            if isinstance(lease, int):
                self._held[spec] = now + min(lease, spec.lifetime) + 1
            else:
                failed.append(f"{spec.address}: {lease}")
                self.vip_errors += 1
        self._vips_up_token = token
        self._last_announce = now
        self.last_takeover = {
            "reason": reason,
            "age_at": now,
            "services_s": round(t_add - t0, 6),
            "vips_s": round(now - t_add, 6),
            "unicast_clients": None if clients else 0,
        }
        self._last_takeover_token = token
        self._clients_sent = None  # send our own list to the peer at the first poll
        early = self._unicast_early
        if early is not None and early[0] == token:
            self.last_takeover["unicast_clients"] = early[1]
        self._unicast_early = None
        log.warning("failover %s: took over %s in %.1f ms%s: %s", self.name,
                    ", ".join(str(s.address) for s in self.specs), (now - t0) * 1000,
                    f" (cold services {t_add - t0:.3f} s)" if st.cold else "", reason)
        if failed:
            why = "cannot add " + "; ".join(failed)
            log.error("failover %s: %s", self.name, why)
            self._set_failure("vip", why)
            asyncio.get_running_loop().call_later(
                VIP_FAILURE_HOLD, self._clear_failure, "vip")
        if st.announce_count > 1:
            self._spawn(self._announce_rounds(token, st.announce_count - 1), "announce")
        if self.verify_pairs:
            added = {spec for spec, lease in results if isinstance(lease, int)}
            pairs = [(spec, obs) for spec, obs in self.verify_pairs if spec in added]
            self._spawn(self._verify(token, pairs, now, t0), "verify")

    async def _verify(self, token: int, pairs: list[tuple[VipSpec, IPAddress]],
                      t_announced: float, t_take: float) -> None:
        """Verified takeover: ask each observer whether it maps the VIP to us
        (``VipOps.converged``, which also makes it do so); after a round that leaves
        one unconvinced, announce again and wait twice as long; give up at
        ``verify_timeout`` after the first announcement.  Each probe is one short job
        on the address thread (a release queued meanwhile waits for one probe at
        most, and no probe is sent after the release was asked for)."""
        st = self.settings
        deadline = t_announced + st.verify_timeout
        pending = list(pairs)
        wait = VERIFY_FIRST_WAIT
        rounds = reannounced = 0
        while pending:
            rounds += 1
            round_start = self.clock()
            for spec, obs in list(pending):
                left = deadline - self.clock()
                if left <= 0:
                    break
                probe = max(0.005, min(wait, left))
                ok = await self._vip(self._probe, token, spec, obs, probe,
                                     timeout=probe + VIP_TIMEOUT)
                if token != self._take_token:
                    return  # released meanwhile: nothing to record
                if ok:
                    pending.remove((spec, obs))
            now = self.clock()
            if not pending or now >= deadline:
                break
            rest = min(wait - (now - round_start), deadline - now)
            if rest > 0:  # the probes failed at once (no answer to wait for)
                await asyncio.sleep(rest)
            if token != self._take_token:
                return
            await self._vip(self._announce_held, token, sorted({s for s, _ in pending},
                                                               key=str))
            reannounced += 1
            wait *= 2
        if token != self._take_token:
            return
        now = self.clock()
        ok = not pending and bool(pairs)
        confirmed = [(s, o) for s, o in pairs if (s, o) not in pending]
        self.last_convergence = {
            "ok": ok,
            "seconds": round(now - t_announced, 6) if ok else None,
            "after_take_s": round(now - t_take, 6) if ok else None,
            "observers": sorted({str(o) for _, o in self.verify_pairs}),
            "confirmed": [f"{o} -> {s.address}" for s, o in confirmed],
            "missing": [f"{o} -> {s.address}" for s, o in pending]
                       or ([] if pairs else ["no VIP was added"]),
            "rounds": rounds,
            "reannounced": reannounced,
            "age_at": now,
        }
        if self.last_takeover is not None:
            self.last_takeover["convergence_s"] = self.last_convergence["seconds"]
        if ok:
            detail = (f"{', '.join(self.last_convergence['confirmed'])} confirmed "
                      f"{(now - t_announced) * 1000:.1f} ms after the first announcement")
            log.info("failover %s: converged: %s (%d round(s), %d re-announcement(s))",
                     self.name, detail, rounds, reannounced)
        else:
            detail = (f"not shown within {st.verify_timeout:g} s: "
                      f"{', '.join(self.last_convergence['missing'])}")
            log.warning("failover %s: convergence %s (%d round(s), %d re-announcement(s)); "
                        "the VIPs stay here", self.name, detail, rounds, reannounced)
        self._observe("converged", now, ok, detail)

    def _probe(self, token: int, spec: VipSpec, observer: IPAddress, timeout: float) -> bool:
        """On the address thread: one convergence probe, unless released meanwhile."""
        if token != self._take_token:
            return False
        try:
            return self.ops.converged(spec, observer, timeout)
        except Exception as exc:  # noqa: BLE001 - "not shown"
            log.debug("failover %s: convergence probe %s -> %s: %s", self.name, observer,
                      spec.address, exc)
            return False

    def _announce_held(self, token: int, specs: Sequence[VipSpec]) -> None:
        if token == self._take_token:
            self._announce_all(specs)

    def _add_and_announce(self, specs: Sequence[VipSpec],
                          added: list[VipSpec] | None = None) -> list[tuple[VipSpec, int | str]]:
        """On the address thread: add every VIP, then the first announcement round.
        The VIPs added are appended to ``added`` (for a job queued behind this one)."""
        out: list[tuple[VipSpec, int | str]] = []
        for spec in specs:
            try:
                out.append((spec, self.ops.add(spec)))
            except Exception as exc:  # noqa: BLE001 - reported to the loop
                out.append((spec, f"{type(exc).__name__}: {exc}"))
        if added is not None:
            added.extend(spec for spec, lease in out if isinstance(lease, int))
        for spec, lease in out:
            if isinstance(lease, int):
                try:
                    self.ops.announce(spec)
                except Exception as exc:  # noqa: BLE001
                    log.warning("failover %s: announcing %s: %s", self.name, spec.address, exc)
        return out

    def _announce_all(self, specs: Sequence[VipSpec]) -> None:
        for spec in specs:
            try:
                self.ops.announce(spec)
            except Exception as exc:  # noqa: BLE001
                log.warning("failover %s: announcing %s: %s", self.name, spec.address, exc)

    async def _announce_rounds(self, token: int, rounds: int) -> None:
        for _ in range(rounds):
            await asyncio.sleep(self.settings.announce_interval)
            if token != self._take_token:
                return
            await self._vip(self._announce_all, self.held_now())
            self._last_announce = self.clock()

    async def _release(self, reason: str) -> None:
        self._take_token += 1
        if self._take_task is not None and not self._take_task.done():
            self._take_task.cancel()
        self._take_task = None
        t0 = self.clock()
        task = self._chain(self._do_release, "release")
        try:
            await asyncio.wait_for(asyncio.shield(task), VIP_TIMEOUT + 1.0)
        except TimeoutError:
            log.error("failover %s: releasing the VIPs takes longer than %.0f s; going on "
                      "(our messages list what is still on the interface, so the peer "
                      "waits for it)", self.name, VIP_TIMEOUT + 1.0)
        log.info("failover %s: released the VIPs in %.1f ms: %s", self.name,
                 (self.clock() - t0) * 1000, reason)
        if self.settings.cold and self.services is not None:
            self._chain(self._stop_cold, "stop cold services")

    async def _do_release(self) -> None:
        def remove_all() -> list[tuple[VipSpec, bool | str]]:
            out: list[tuple[VipSpec, bool | str]] = []
            for spec in self.specs:
                try:
                    out.append((spec, self.ops.remove(spec)))
                except Exception as exc:  # noqa: BLE001 - reported to the loop
                    out.append((spec, f"{type(exc).__name__}: {exc}"))
            return out

        for spec, res in await self._vip(remove_all):
            if isinstance(res, bool):
                self._held.pop(spec, None)
            else:
                self.vip_errors += 1
                log.error("failover %s: cannot remove %s: %s (the lease ends it within "
                          "%d s)", self.name, spec, res, spec.lifetime + 1)

    async def _stop_cold(self) -> None:
        assert self.services is not None
        for name in reversed(self.settings.cold):
            try:
                await self.services.stop_service(name, self.settings.cold_timeout)
            except Exception as exc:  # noqa: BLE001
                log.error("failover %s: stopping cold service %s: %s", self.name, name, exc)

    def _renew(self) -> None:
        if self._vips_up_token != self._take_token:
            return  # a takeover is still on its way (cold services): nothing to renew yet
        token = self._take_token
        now = self.clock()
        refresh = (self.settings.announce_refresh > 0
                   and now - self._last_announce >= self.settings.announce_refresh)

        def job() -> list[tuple[VipSpec, int | None | str]]:
            out: list[tuple[VipSpec, int | None | str]] = []
            for spec in self.specs:
                try:
                    out.append((spec, self.ops.renew(spec)))
                except Exception as exc:  # noqa: BLE001
                    out.append((spec, f"{type(exc).__name__}: {exc}"))
            if refresh:
                self._announce_all([s for s, r in out if isinstance(r, int)])
            return out

        if refresh:
            self._last_announce = now
        assert self._vip_pool is not None
        fut = asyncio.wrap_future(self._vip_pool.submit(job))
        fut.add_done_callback(lambda f: self._renewed(f, token))
        self._poll_clients(now)

    def _renewed(self, fut: asyncio.Future[list[tuple[VipSpec, int | None | str]]],
                 token: int) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        now = self.clock()
        gone = []
        for spec, res in fut.result():
            if isinstance(res, int):
                self._held[spec] = now + min(res, spec.lifetime) + 1
            elif res is None:
                self._held.pop(spec, None)
                gone.append(spec)
            else:
                self.vip_errors += 1
                log.error("failover %s: renewing %s: %s", self.name, spec, res)
        m = self.machine
        if gone and token == self._take_token and m is not None and m.holding:
            log.warning("failover %s: %s gone at renewal (lease ran out, or removed by "
                        "someone): putting back", self.name,
                        ", ".join(str(s.address) for s in gone))
            self._reannounce("VIP gone at renewal")

    def _reannounce(self, reason: str) -> None:
        token = self._take_token
        if self._vips_up_token != token:
            return  # the takeover in progress adds and announces them

        async def job() -> None:
            if token != self._take_token:
                return
            results = await self._vip(self._add_and_announce, self.specs)
            now = self.clock()
            for spec, lease in results:
                if isinstance(lease, int):
                    self._held[spec] = now + min(lease, spec.lifetime) + 1
            self._last_announce = now
            log.info("failover %s: re-announced: %s", self.name, reason)
            if self.settings.announce_count > 1:
                self._spawn(self._announce_rounds(token, self.settings.announce_count - 1),
                            "announce")

        self._chain(job, "reannounce")

    # ------------------------------------------------------------ netlink
    def _netlink_events(self, events: list[LinkEvent | AddrEvent]) -> None:
        now = self.clock()
        iface = self.settings.interface
        for ev in events:
            if isinstance(ev, LinkEvent):
                if ev.name == iface and not ev.deleted:
                    self._ifindex = ev.index
                if ev.index != self._ifindex:
                    continue
                carrier = None if ev.deleted else ev.carrier
                if carrier != self._carrier:
                    self._carrier = carrier
                    if self.settings.track_interface:
                        self._carrier_changed(carrier)
            else:
                if ev.index != self._ifindex:
                    continue
                for spec in self.specs:
                    if spec.address == ev.address and spec.prefixlen == ev.prefixlen:
                        if ev.deleted:
                            self._held.pop(spec, None)
                        elif ev.valid_lft is not None:
                            life = (float("inf") if ev.valid_lft == INFINITY_LIFE_TIME
                                    else ev.valid_lft + 1)
                            self._held[spec] = now + life

    def _carrier_changed(self, carrier: bool | None) -> None:
        iface = self.settings.interface
        if self._carrier_timer is not None:
            self._carrier_timer.cancel()
            self._carrier_timer = None
        if not carrier:
            self._set_failure("interface", f"{iface} is gone" if carrier is None
                              else f"{iface} has no carrier")
        elif "interface" in self._failures:
            # Hold-down: the link is back, but the neighbour entries and the peer's
            # heartbeats are not yet; a backup that suspected its peer at once could
            # declare a live master dead.  Stay FAULT (talking) for init_dead first.
            hold = self.settings.init_dead
            self._failures["interface"] = f"{iface} carrier back; healthy in {hold:g} s"
            self._carrier_timer = asyncio.get_running_loop().call_later(
                hold, self._clear_failure, "interface")

    def _netlink_overrun(self) -> None:
        """Events were lost: ask the kernel for the whole picture."""
        async def refresh() -> None:
            now = self.clock()
            present = await self._vip(self.ops.present, self.specs)
            for spec in self.specs:
                if spec not in present:
                    self._held.pop(spec, None)
                elif spec not in self._held:
                    self._held[spec] = now + spec.lifetime + 1
            if self.settings.track_interface:
                carrier = await self._vip(self.ops.carrier, self.settings.interface)
                self._netlink_events([LinkEvent(self._ifindex or -1, self.settings.interface,
                                                bool(carrier), carrier is None)])

        if self.running:
            self._spawn(refresh(), "netlink-refresh")

    # ------------------------------------------------------------ state, hooks, ping
    def _state_change(self, a: StateChange) -> None:
        self._last_change = a
        self.history.append(Transition(self.clock(), time.time(), a.old.value, a.new.value,
                                       a.reason))
        level = logging.WARNING if a.new in (S.MASTER, S.FAULT) else logging.INFO
        log.log(level, "failover %s: %s -> %s: %s", self.name, a.old.value.upper(),
                a.new.value.upper(), a.reason)

    def _queue_notify(self, a: RunNotify) -> None:
        if not self.settings.notify:
            return
        old = self._last_change.old.value if self._last_change is not None else ""
        m = self.machine
        peer = (m.peer.name if m is not None and m.peer is not None else self.settings.peer)
        env = {
            "GUARDIAN_FAILOVER_GROUP": self.name,
            "GUARDIAN_FAILOVER_STATE": a.state.value,
            "GUARDIAN_FAILOVER_OLD_STATE": old,
            "GUARDIAN_FAILOVER_REASON": a.reason,
            "GUARDIAN_FAILOVER_VIPS": " ".join(str(v) for v in self.settings.vips),
            "GUARDIAN_FAILOVER_PEER": peer,
            "GUARDIAN_FAILOVER_NODE": self.settings.node,
        }
        self._notify_q.put_nowait((self._res_tail, env))

    async def _notify_worker(self) -> None:
        argv = list(self.settings.notify)
        while True:
            barrier, env = await self._notify_q.get()
            if barrier is not None and not barrier.done():
                await asyncio.wait({barrier}, timeout=self.settings.cold_timeout + 5.0)
            self.notify_runs += 1
            try:
                rc, tail = await run_hook(argv, env, self.settings.notify_timeout)
            except OSError as exc:
                rc, tail = -1, f"cannot run {argv[0]}: {exc.strerror or exc}"
            if rc != 0:
                self.notify_failures += 1
                self.notify_last_error = f"exit {rc}: {tail}" if rc >= 0 else tail
                log.error("failover %s: notify hook %s (%s): %s", self.name, argv[0],
                          env["GUARDIAN_FAILOVER_STATE"], self.notify_last_error)
            else:
                log.info("failover %s: notify hook %s done (%s)", self.name, argv[0],
                         env["GUARDIAN_FAILOVER_STATE"])

    async def _ping_loop(self) -> None:
        st = self.settings
        loop = asyncio.get_running_loop()
        fails = 0
        seq = 0
        ident = os.getpid() & 0xFFFF
        while True:
            seq += 1
            futs = [loop.run_in_executor(self._ping_pool, icmp_ping, str(ip), st.ping_timeout,
                                         ident, seq) for ip in st.ping]
            results = await asyncio.gather(*futs, return_exceptions=True)
            answered = [str(ip) for ip, r in zip(st.ping, results, strict=True) if r is True]
            errors = [f"{ip}: {r}" for ip, r in zip(st.ping, results, strict=True)
                      if isinstance(r, BaseException)]
            new = self.ping_ok
            if answered:
                fails = 0
                new = True
                detail = f"{', '.join(answered)} answered"
            else:
                fails += 1
                detail = ("no answer from " + ", ".join(str(ip) for ip in st.ping)
                          + (f" ({'; '.join(errors)})" if errors else ""))
                if fails >= PING_FALL:
                    new = False
            if new is not None and new != self.ping_ok:
                self.ping_ok = new
                log.log(logging.INFO if new else logging.WARNING, "failover %s: ping nodes: %s",
                        self.name, detail)
                self.post(PingResult(new, detail))
            await asyncio.sleep(st.ping_interval)

    # ------------------------------------------------------------ the end
    async def _finish(self) -> None:
        # let the last hooks and service stops run a little, then close
        pending = [t for t in (self._res_tail,) if t is not None and not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.cold_timeout if
                               self.settings.cold else VIP_TIMEOUT)
        deadline = self.clock() + min(2.0, self.settings.notify_timeout)
        while not self._notify_q.empty() and self.clock() < deadline:
            await asyncio.sleep(0.02)
        self._persist_known()
        self._close()

    def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for path in self._paths:
            if path.transport is not None:
                path.transport.close()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        for pool in (self._vip_pool, self._ping_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        for fut in (self._pending_sw, self._cmd_fut):
            if fut is not None and not fut.done():
                fut.set_result(SwitchoverOutcome(False, "the failover group stopped"))
        self._done.set()

    # ------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        st = self.settings
        now = self.clock()
        base: dict[str, Any] = {
            "group": self.name,
            "node": st.node,
            "peer_name": st.peer,
            "priority": st.priority,
            "interface": st.interface,
            "port": st.port,
            "vips": [str(v) for v in st.vips],
            "vips_held": [f"{s.address}/{s.prefixlen}" for s in self.held_now(now)],
            "running": self.running,
            "error": self.error,
            "warnings": list(self.warnings),
            "services": list(st.services),
            "cold": list(st.cold),
            "fence": st.fence,
            "lease": st.lease,
        }
        m, ep = self.machine, self.endpoint
        if m is None or ep is None:
            base["state"] = "refused" if self.error else "starting"
            base["reason"] = self.error or "starting"
            return base
        out = m.status(now)
        out.update(base)
        if not self.running and out["state"] != S.STOPPED.value:
            out["state"] = "stopped"
        out["endpoint"] = ep.status()
        out["drops"] = ep.drops.as_dict()
        peer = m.peer
        paths = []
        for i, p in enumerate(self._paths):
            heard = peer.paths.get(i) if peer is not None else None
            view = peer.view[i] if peer is not None and i < len(peer.view) else 0
            paths.append({
                "index": i,
                "local": str(p.settings.local),
                "peer": str(p.settings.peer),
                "interface": p.settings.interface,
                "heard_age": None if heard is None else now - heard,
                "peer_heard_us_age": ep.heard_age(i, view, now),
                "received": p.received,
                "sent": p.sent,
                "send_errors": p.send_errors,
                "last_error": p.last_error,
            })
        out["paths"] = paths
        health_ok, health_reason = self._health()
        out["local_health"] = {"ok": health_ok, "reason": health_reason,
                               "carrier": self._carrier, "ping_ok": self.ping_ok}
        out["history"] = [
            {"ago": now - h.at, "at": h.wall, "from": h.old, "to": h.new, "reason": h.reason}
            for h in self.history
        ]
        if self.last_takeover is not None:
            lt = dict(self.last_takeover)
            lt["age"] = now - lt.pop("age_at")
            out["last_takeover"] = lt
        else:
            out["last_takeover"] = None
        if self.last_convergence is not None:
            lc = dict(self.last_convergence)
            lc["age"] = now - lc.pop("age_at")
            out["last_convergence"] = lc
        else:
            out["last_convergence"] = None
        out["notify"] = {"runs": self.notify_runs, "failures": self.notify_failures,
                         "last_error": self.notify_last_error}
        out["vip_errors"] = self.vip_errors
        at = self._known_clients_at
        out["clients_known"] = (None if at is None else
                                {"count": len(self._known_clients), "age": now - at})
        out["clients_sent"] = self.clients_sent
        return out
