"""The pair state machine: peer messages, health and time in, actions out.

Pure: no I/O, no clock of its own.  Every input comes with ``now`` (``time.monotonic()``
in the daemon, a virtual clock in tests); ``transition`` returns the actions to carry out
in order, and ``next_wakeup`` says when the engine must deliver the next ``Tick``.

Failure detection: suspicion, then confirmation
-----------------------------------------------
A plain "dead after N missed heartbeats" rule must trade speed against false failovers:
at 100 ms heartbeats and 10 % random loss, "3 missed" (0.3 s) still fires on one run of
three losses (p^3 = 1e-3 per heartbeat: 0.6 times a minute).  We separate the two jobs:

* a BACKUP *suspects* the master after ``suspect_after`` intervals of silence (1.5, so
  one lost heartbeat is enough to suspect; the peer's own interval from its messages);
* it then sends ``probe_count`` PROBEs ``probe_spacing`` apart on every path; the master
  answers each at once.  Any message from the peer (ack or heartbeat) cancels the
  suspicion; if none comes within ``probe_timeout`` of the first probe (and a grace
  after the last probe, so a late engine never shortens the test), the master is dead.

False failover per suspicion, with independent loss p each way: every probe/ack round
trip fails with q = 1 - (1 - p)^2, all k fail with q^k; the next scheduled heartbeat
also falls inside the window (suspect at 150 ms, deadline 210 ms, heartbeat due at 200)
and must be lost too (factor p).  Suspicions happen at most once per lost heartbeat,
p / T per second.  With the defaults (T = 0.1 s, k = 10, 5 ms apart, 60 ms window):

    loss  q      q^k       x p (heartbeat) suspicions/600 s  false failovers/600 s
    10 %  0.19   6.1e-8    6.1e-9          <= 600            <= 4e-6  (<= 4e-7 in 60 s)
    30 %  0.51   1.2e-3    3.6e-4          <= 1800           <= 0.64

Simulated (tests/unit/test_pair_machine.py: two machines, the real wire, random loss
each way, 0.3-0.7 ms latency; 20 runs of 600 s): 10 % loss, 548 suspicions per 600 s,
0 false failovers; 30 % loss, 1409 suspicions and 0.55 false failovers per 600 s, each
a split brain of about 120 ms, healed by rank at the next heartbeat.

Detection time after the master dies at a uniform point of its heartbeat cycle:
suspect_after * T + probe_timeout - U(0, T): 0.11..0.21 s, median 0.16 s, plus one-way
latency; the takeover follows at once (or after the fence, with ``fence = "dom0"``).
Simulated, 150 deaths each at 0 % and 10 % loss: median 0.155 s, max 0.211 s.
``probe_count = 0`` turns the confirmation off: dead after ``dead_after`` intervals.

The rules, in short
-------------------
* Rank: higher priority wins; equal priority, the lower node name (UTF-8 bytes) wins.
  Used for the boot tie-break, for two BACKUPs, and for split brain (two MASTERs: the
  outranked one releases at once, the keeper re-announces, and again once the other
  has released).  Preempt does not matter for split brain: rank decides.
* The VIPs are never taken from a live peer that still lists VIPs in its messages (the
  engine fills that list from what it really holds), and never from a live MASTER
  except through the switchover handshake (release first, confirm, then take).
* INIT listens ``init_dead``; the first word from the peer decides at once (MASTER ->
  BACKUP; BACKUP/INIT -> rank; FAULT/STOPPED -> take); silence -> probe -> take.
* FAULT never takes; it returns to BACKUP when healthy and follows BACKUP's rules.
* Ping nodes (``ping = True``): when ours are unreachable but the live peer reports
  its own reachable, we count as unhealthy (yield).  If both fail, nobody yields.
* Clock jump (the VM was paused): longer than ``suspect_after`` intervals, the node
  stops claiming anything (state INIT, RESYNC flag, no heartbeats), probes the peer at
  once and decides only on an answer to those probes (buffered old packets cannot
  fool it): peer MASTER -> release, BACKUP; otherwise a former master resumes (and
  re-announces), a former backup decides like INIT; silence -> resume / take.
* Switchover can be run on either node.  On the master it *offers*: REQUEST -> the
  standby checks itself and answers READY (or REFUSED) -> the master releases, sends
  RELEASED -> the standby takes.  On the standby it *pulls*: REQUEST -> the master
  releases, sends RELEASED -> the standby takes.  The taker waits at most half of
  ``switchover_timeout``; the old master waits the full timeout for the peer to show up
  as MASTER and otherwise takes the VIPs back (rollback).  After handing off, preempt
  is held back on that node until it is master again (so an operator's move sticks).
* Preempt: a higher-ranked BACKUP, healthy for ``min_healthy`` and seeing a lower
  MASTER for ``preempt_delay``, pulls the role through the same handshake.
"""

from __future__ import annotations

import collections
import math
import random
from dataclasses import dataclass, field
from typing import Literal

from ._states import PairState, SwitchoverRole
from ._wire import MAX_NODE, Body, Flags, IPAddress, Message, MsgType

S = PairState
INF = math.inf

# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class PairConfig:
    """One node's failover settings.  Times in seconds unless said otherwise."""

    node: str  # our name (unique in the pair; used for the tie-break)
    priority: int = 100  # 0..255, higher wins
    peer: str | None = None  # the peer's name; None: the first node heard
    interval: float = 0.1  # heartbeat interval (>= 0.02)
    suspect_after: float = 1.5  # peer silence, in the peer's intervals, before probing
    dead_after: float = 3.0  # silence in intervals = dead, if probe_count == 0;
    #                                    also how long a peer's last word stays "fresh"
    init_dead: float = 2.0  # listen this long after start before taking over
    probe_count: int = 10
    probe_spacing: float = 0.005
    probe_timeout: float = 0.06  # from the first probe to "dead"
    preempt: bool = False  # take the role back from a lower-ranked master
    preempt_delay: float = 30.0  # ... after seeing it master this long
    min_healthy: float = 10.0  # ... and being healthy this long
    fence: Literal["none", "dom0"] = "none"  # dom0: Fence and wait for FenceResult first
    fence_timeout: float = 10.0
    fence_retry: float = 5.0  # after a failed fence, wait before trying again
    switchover_timeout: float = 2.0
    renew_interval: float = 1.0  # RenewVIPs this often while master
    goodbye_copies: int = 3  # GOODBYE / RELEASED are sent this many times
    ping: bool = False  # ping nodes are watched (PingResult events come)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"failover setting {name}: {why}")

        if not 1 <= len(self.node.encode("utf-8")) <= MAX_NODE:
            raise bad("node", f"must be 1..{MAX_NODE} bytes, got {self.node!r}")
        if self.peer is not None and self.peer == self.node:
            raise bad("peer", "must differ from the node name")
        if not 0 <= self.priority <= 255:
            raise bad("priority", f"must be 0..255, got {self.priority}")
        if not 0.02 <= self.interval <= 60:
            raise bad("interval", f"must be 0.02..60 s, got {self.interval}")
        if not 1.0 <= self.suspect_after <= 100:
            raise bad("suspect_after", f"must be 1..100 intervals, got {self.suspect_after}")
        if not self.suspect_after <= self.dead_after <= 1000:
            raise bad("dead_after", f"must be suspect_after..1000 intervals, got {self.dead_after}")
        if not 0 <= self.init_dead <= 3600:
            raise bad("init_dead", f"must be 0..3600 s, got {self.init_dead}")
        if not 0 <= self.probe_count <= 100:
            raise bad("probe_count", f"must be 0..100, got {self.probe_count}")
        if self.probe_count:
            if not 0 < self.probe_spacing <= 1:
                raise bad("probe_spacing", f"must be in (0, 1] s, got {self.probe_spacing}")
            if not (self.probe_count - 1) * self.probe_spacing < self.probe_timeout <= 60:
                raise bad(
                    "probe_timeout",
                    "must be longer than (probe_count - 1) * "
                    f"probe_spacing = {(self.probe_count - 1) * self.probe_spacing:g} s "
                    f"(and <= 60), got {self.probe_timeout}",
                )
        if self.fence not in ("none", "dom0"):
            raise bad("fence", f"must be 'none' or 'dom0', got {self.fence!r}")
        for name in (
            "preempt_delay",
            "min_healthy",
            "fence_timeout",
            "fence_retry",
            "switchover_timeout",
            "renew_interval",
        ):
            value = getattr(self, name)
            if not 0 <= value <= 86400:
                raise bad(name, f"must be 0..86400 s, got {value}")
        if self.switchover_timeout < 2 * self.interval:
            raise bad("switchover_timeout", "must be at least two intervals")
        if self.renew_interval <= 0:
            raise bad("renew_interval", "must be > 0")
        if not 1 <= self.goodbye_copies <= 10:
            raise bad("goodbye_copies", f"must be 1..10, got {self.goodbye_copies}")

    @property
    def interval_ms(self) -> int:
        return max(1, round(self.interval * 1000))

    @property
    def clock_jump_threshold(self) -> float:
        """A pause longer than this may have let the peer declare us dead."""
        return self.suspect_after * self.interval


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Tick:
    """Time passed; deliver at ``next_wakeup`` (late is fine, early is harmless)."""


@dataclass(frozen=True)
class PeerMessage:
    """An authenticated, fresh message (``Endpoint.open``) that came in on a path."""

    msg: Message
    path_index: int = 0


@dataclass(frozen=True)
class LocalHealth:
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class PingResult:
    reachable: bool
    detail: str = ""


@dataclass(frozen=True)
class Shutdown:
    reason: str = "shutting down"


@dataclass(frozen=True)
class SwitchoverCommand:
    reason: str = "operator asked for a switchover"


@dataclass(frozen=True)
class ClockJump:
    """The engine saw ``seconds`` pass that our monotonic clock and loop did not live
    through (CLOCK_BOOTTIME - CLOCK_MONOTONIC grew, or a timer fired that late)."""

    seconds: float


@dataclass(frozen=True)
class FenceResult:
    ok: bool
    detail: str = ""


Input = (
    Tick
    | PeerMessage
    | LocalHealth
    | PingResult
    | Shutdown
    | SwitchoverCommand
    | ClockJump
    | FenceResult
)

# ---------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Send:
    """Send ``body`` on every path, ``copies`` times (each copy a new packet), with the
    VIPs this node holds at that moment.  Subclasses name the message kind."""

    body: Body
    copies: int = 1

    @property
    def nonce(self) -> int:
        return self.body.nonce

    @property
    def type(self) -> MsgType:
        return self.body.type


@dataclass(frozen=True)
class SendHeartbeat(Send):
    pass


@dataclass(frozen=True)
class SendGoodbye(Send):
    pass


@dataclass(frozen=True)
class SendProbe(Send):
    pass


@dataclass(frozen=True)
class SendProbeAck(Send):
    pass


@dataclass(frozen=True)
class SendSwitchover(Send):
    pass


@dataclass(frozen=True)
class TakeVIPs:
    """Add the addresses (on a lease) and announce them (gratuitous ARP / NA)."""

    reason: str


@dataclass(frozen=True)
class ReleaseVIPs:
    """Remove the addresses.  Carry out before the messages that follow it."""

    reason: str


@dataclass(frozen=True)
class RenewVIPs:
    """Extend the addresses' kernel lease (a hung daemon loses them by itself)."""


@dataclass(frozen=True)
class Reannounce:
    """Make sure the addresses are present (re-add, fresh lease) and announce again."""

    reason: str


@dataclass(frozen=True)
class StateChange:
    old: PairState
    new: PairState
    reason: str


@dataclass(frozen=True)
class RunNotify:
    """Run the notify hook for the new state (after the VIP action, never blocking us)."""

    state: PairState
    reason: str


@dataclass(frozen=True)
class Fence:
    """Ask dom0 to make sure the peer is dead; answer with FenceResult."""

    peer: str | None
    generation: int
    boot_id: bytes
    reason: str


@dataclass(frozen=True)
class SwitchoverOutcome:
    """The end of a switchover that this node's SwitchoverCommand started."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class Notice:
    """Something worth a log line or a metric: kind is a short stable word."""

    kind: str
    detail: str


Action = (
    SendHeartbeat
    | SendGoodbye
    | SendProbe
    | SendProbeAck
    | SendSwitchover
    | TakeVIPs
    | ReleaseVIPs
    | RenewVIPs
    | Reannounce
    | StateChange
    | RunNotify
    | Fence
    | SwitchoverOutcome
    | Notice
)

# ---------------------------------------------------------------- bookkeeping


@dataclass
class PeerInfo:
    name: str
    generation: int
    boot_id: bytes
    state: PairState = PairState.INIT
    priority: int = 0
    flags: Flags = Flags.NONE
    interval: float = 0.1
    reason: str = ""
    vips: tuple[IPAddress, ...] = ()
    seq: int = -1  # last applied (in order) sequence number
    last_heard: float = -INF
    state_since: float = -INF
    dead: bool = False  # declared dead by us (cleared by any word)
    paths: dict[int, float] = field(default_factory=dict)  # path -> last heard
    view: tuple[int, ...] = ()  # the peer's view: last seq it got from us, per path
    view_generation: int = 0  # our generation as the peer last saw it


@dataclass
class Probing:
    """A confirmation in progress (suspicion, or resync after a clock jump)."""

    started: float
    why: str
    next_probe: float
    sent: int = 0
    last_sent: float = -INF
    nonces: dict[int, float] = field(default_factory=dict)  # nonce -> sent at
    answer: Message | None = None  # resync: the first fresh answer to our probes


@dataclass
class Fencing:
    started: float
    deadline: float
    why: str
    result: FenceResult | None = None


@dataclass
class Switchover:
    role: SwitchoverRole
    nonce: int
    started: float
    deadline: float
    origin: str  # "operator", "preempt" or "peer"
    peer_seq: int = -1  # peer seq when it started (newer words count)
    nonces: set[int] = field(default_factory=set)
    next_resend: float = INF
    ready: bool = False
    released: bool = False
    refused: str | None = None


@dataclass
class Resync:
    jump: float
    was: PairState
    probing: Probing


# ---------------------------------------------------------------- the machine


class PairMachine:
    """One node of the active/standby pair.  Drive it with ``transition``."""

    def __init__(
        self,
        config: PairConfig,
        now: float,
        *,
        healthy: bool = True,
        health_reason: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.rng = rng if rng is not None else random.Random()
        self.state = S.INIT
        self.since = now
        self.reason = f"started; listening {config.init_dead:g} s for the peer"
        self.holding = False
        self.healthy = healthy
        self.health_reason = health_reason or ("healthy" if healthy else "unhealthy")
        self.healthy_since: float | None = now if healthy else None
        self.ping_ok: bool | None = None
        self.ping_detail = ""
        self.peer: PeerInfo | None = None
        self.listen_until = now + config.init_dead
        self.probing: Probing | None = None
        self.fencing: Fencing | None = None
        self.fence_retry_at = -INF
        self.resync: Resync | None = None
        self.switchover: Switchover | None = None
        self.preempt_hold = False
        self.preempt_since: float | None = None
        self.preempt_due: float | None = None
        self.split_brain = False
        self.next_heartbeat = now
        self.next_renew = INF
        self.next_wakeup: float | None = now
        self.last_transition: tuple[PairState, PairState, float, str] | None = None
        self.last_rtt: float | None = None
        self.counters: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------ the one transition
    def transition(self, event: Input, now: float) -> list[Action]:
        out: list[Action] = []
        if self.state is S.STOPPED:
            return out
        if isinstance(event, PeerMessage):
            self._on_message(event, now, out)
        elif isinstance(event, LocalHealth):
            if event.ok and not self.healthy:
                self.healthy_since = now
            elif not event.ok:
                self.healthy_since = None
            self.healthy = event.ok
            self.health_reason = event.reason or ("healthy" if event.ok else "unhealthy")
        elif isinstance(event, PingResult):
            self.ping_ok = event.reachable
            self.ping_detail = event.detail
        elif isinstance(event, Shutdown):
            self._shutdown(now, event.reason, out)
            return out
        elif isinstance(event, SwitchoverCommand):
            self._command(now, event.reason, out)
        elif isinstance(event, ClockJump):
            self._clock_jump(now, event.seconds, out)
        elif isinstance(event, FenceResult):
            if self.fencing is not None:
                self.fencing.result = event
        for _ in range(6):  # settle: FAULT -> BACKUP -> MASTER in one go
            if not self._step(now, out):
                break
        self._heartbeat(now, out)
        self._schedule(now)
        return out

    # ------------------------------------------------------------ rank and liveness
    def outranks(self, peer: PeerInfo) -> bool:
        """Higher priority wins; equal priority: the lower node name (UTF-8 bytes)."""
        if self.config.priority != peer.priority:
            return self.config.priority > peer.priority
        return self.config.node.encode("utf-8") < peer.name.encode("utf-8")

    def _fresh_for(self, p: PeerInfo) -> float:
        return self.config.dead_after * p.interval

    def peer_alive(self, now: float) -> bool:
        p = self.peer
        return p is not None and not p.dead and now - p.last_heard <= self._fresh_for(p)

    def _ping_yield(self, now: float) -> bool:
        if self.ping_ok is not False or not self.peer_alive(now):
            return False
        assert self.peer is not None
        return Flags.PING_USED in self.peer.flags and Flags.PING_OK in self.peer.flags

    def eligible(self, now: float) -> bool:
        return self.healthy and not self._ping_yield(now)

    def _unhealthy_reason(self, now: float) -> str:
        if not self.healthy:
            return f"unhealthy: {self.health_reason}"
        detail = f" ({self.ping_detail})" if self.ping_detail else ""
        return f"ping nodes unreachable{detail} while the peer reaches them"

    # ------------------------------------------------------------ messages out
    def _flags(self) -> Flags:
        f = Flags.NONE
        if self.config.ping:
            f |= Flags.PING_USED
            if self.ping_ok is not False:
                f |= Flags.PING_OK
        if self.switchover is not None:
            f |= Flags.SWITCHOVER
        if self.resync is not None:
            f |= Flags.RESYNC
        if self.config.preempt:
            f |= Flags.PREEMPT
        return f

    def _body(
        self, mtype: MsgType, nonce: int = 0, reason: str = "", state: PairState | None = None
    ) -> Body:
        if state is None:
            state = S.INIT if self.resync is not None else self.state
        return Body(
            type=mtype,
            state=state,
            priority=self.config.priority,
            flags=self._flags(),
            interval_ms=self.config.interval_ms,
            nonce=nonce,
            reason=reason or self.reason,
        )

    def _nonce(self) -> int:
        return self.rng.getrandbits(64) | 1

    def _switch_msg(
        self, mtype: MsgType, nonce: int, reason: str = "", copies: int = 1
    ) -> SendSwitchover:
        return SendSwitchover(self._body(mtype, nonce, reason), copies)

    # ------------------------------------------------------------ messages in
    def _on_message(self, ev: PeerMessage, now: float, out: list[Action]) -> None:
        m = ev.msg
        cfg = self.config
        if m.node == cfg.node:
            return
        if cfg.peer is not None and m.node != cfg.peer:
            self.counters["foreign"] += 1
            out.append(Notice("foreign-node", f"message from {m.node!r}, our peer is {cfg.peer!r}"))
            return
        p = self.peer
        if p is None or p.name != m.node:
            if p is not None and self.peer_alive(now):
                self.counters["foreign"] += 1
                out.append(
                    Notice(
                        "foreign-node",
                        f"message from a third node {m.node!r} while {p.name!r} is our peer",
                    )
                )
                return
            p = self.peer = PeerInfo(m.node, m.generation, m.boot_id)
            out.append(Notice("peer", f"peer {m.node!r} heard (generation {m.generation})"))
        if m.generation < p.generation:
            return
        if m.generation > p.generation:
            out.append(
                Notice(
                    "peer-restarted",
                    f"peer {p.name!r} restarted: generation {p.generation} -> {m.generation}",
                )
            )
            p.generation = m.generation
            p.boot_id = m.boot_id
            p.seq = -1
        silence = now - p.last_heard
        stale = p.last_heard > -INF and silence > self._fresh_for(p)
        p.last_heard = now
        p.paths[ev.path_index] = now
        if p.dead:
            p.dead = False
            out.append(Notice("peer-alive", f"peer {p.name!r} is talking again"))
        elif stale and self.state is S.MASTER and self.holding:
            # A master never declares its peer dead; but a peer silent this long (a
            # partition, heavy loss) may have declared *us* dead, taken the addresses
            # and announced them, and may release them before we ever see it as
            # master (no split brain seen here).  The engine re-announces if we
            # still hold the addresses once this message is handled.
            self.counters["peer_back"] += 1
            out.append(Notice("peer-back", f"peer {p.name!r} heard again after "
                              f"{silence:.3f} s of silence"))
        in_order = m.seq > p.seq
        if in_order:
            p.seq = m.seq
            if m.state is not p.state:
                p.state_since = now
            p.state = m.state
            p.priority = m.priority
            p.flags = m.flags
            p.interval = m.interval
            p.reason = m.reason
            p.vips = m.vips
            p.view = m.peer_seqs
            p.view_generation = m.peer_generation
        if m.type is MsgType.PROBE_ACK and self.probing is not None:
            sent = self.probing.nonces.get(m.nonce)
            if sent is not None:
                self.last_rtt = now - sent
        if self.probing is not None:  # any word from the peer ends a suspicion
            self.counters["suspicions_cancelled"] += 1
            self.probing = None
        if m.type is MsgType.PROBE:
            out.append(SendProbeAck(self._body(MsgType.PROBE_ACK, m.nonce)))
            self.counters["probes_answered"] += 1
        elif m.type is MsgType.PROBE_ACK:
            self.counters["acks"] += 1
            r = self.resync
            if r is not None and m.nonce in r.probing.nonces:
                self.last_rtt = now - r.probing.nonces[m.nonce]
                if in_order and r.probing.answer is None:
                    r.probing.answer = m
        elif m.type in (
            MsgType.SWITCHOVER_REQUEST,
            MsgType.SWITCHOVER_READY,
            MsgType.SWITCHOVER_RELEASED,
            MsgType.SWITCHOVER_REFUSED,
        ):
            self._on_switchover_message(m, now, out)

    def _on_switchover_message(self, m: Message, now: float, out: list[Action]) -> None:
        sw = self.switchover
        R = SwitchoverRole
        if sw is not None and sw.role is R.HANDOFF and m.state is S.MASTER:
            self._end_switchover(True, f"peer {m.node!r} is master", out)
            sw = None
        if m.type is MsgType.SWITCHOVER_REQUEST:
            if (
                m.state is S.MASTER
                and self.state is S.BACKUP
                and self.resync is None
                and self.fencing is None
            ):
                # the master offers us the role
                if sw is None:
                    self.switchover = Switchover(
                        R.ACCEPT,
                        m.nonce,
                        now,
                        now + self.config.switchover_timeout / 2,
                        "peer",
                        self.peer.seq if self.peer else -1,
                        {m.nonce},
                    )
                    out.append(Notice("switchover", f"peer offers the role: {m.reason}"))
                    out.append(
                        self._switch_msg(MsgType.SWITCHOVER_READY, m.nonce, "healthy and ready")
                    )
                    return
                if sw.role in (R.ACCEPT, R.PULL):  # a repeat, or both asked at once
                    sw.nonces.add(m.nonce)
                    out.append(
                        self._switch_msg(MsgType.SWITCHOVER_READY, m.nonce, "healthy and ready")
                    )
                    return
            elif m.state is S.BACKUP and self.state is S.MASTER and self.resync is None:
                # the standby asks for the role
                if sw is None or sw.role is R.OFFER:
                    origin = sw.origin if sw is not None else "peer"
                    self.switchover = Switchover(
                        R.GRANT, m.nonce, now, now, origin, nonces={m.nonce}
                    )
                    out.append(Notice("switchover", f"peer asks for the role: {m.reason}"))
                    return
            elif sw is not None and sw.role is R.HANDOFF and m.nonce in sw.nonces:
                out.append(
                    self._switch_msg(
                        MsgType.SWITCHOVER_RELEASED, m.nonce, "released", self.config.goodbye_copies
                    )
                )
                return
            why = (
                f"not now: we are {self.state.value}"
                + (f", busy with {sw.role.value}" if sw is not None else "")
                + ("" if self.eligible(now) else f", {self._unhealthy_reason(now)}")
            )
            out.append(self._switch_msg(MsgType.SWITCHOVER_REFUSED, m.nonce, why))
            return
        if sw is None:
            return
        if m.type is MsgType.SWITCHOVER_READY:
            if sw.role is R.OFFER and m.nonce in sw.nonces:
                sw.ready = True
            elif sw.role is R.HANDOFF and m.nonce in sw.nonces:
                out.append(
                    self._switch_msg(
                        MsgType.SWITCHOVER_RELEASED, m.nonce, "released", self.config.goodbye_copies
                    )
                )
        elif m.type is MsgType.SWITCHOVER_RELEASED:
            if sw.role in (R.PULL, R.ACCEPT) and m.nonce in sw.nonces:
                sw.released = True
        elif m.type is MsgType.SWITCHOVER_REFUSED:
            if sw.role in (R.OFFER, R.PULL) and m.nonce in sw.nonces:
                sw.refused = m.reason or "refused"

    # ------------------------------------------------------------ commands
    def _command(self, now: float, reason: str, out: list[Action]) -> None:
        R = SwitchoverRole
        p = self.peer
        alive = self.peer_alive(now)

        def no(why: str) -> None:
            out.append(SwitchoverOutcome(False, why))

        if self.switchover is not None:
            return no(f"a switchover is already in progress ({self.switchover.role.value})")
        if self.resync is not None or self.fencing is not None:
            return no("busy: " + ("resyncing after a clock jump" if self.resync else "fencing"))
        if not alive or p is None:
            return no("the peer is " + ("unknown" if p is None else "silent"))
        timeout = self.config.switchover_timeout
        if self.state is S.MASTER:
            if p.state is not S.BACKUP:
                return no(f"the standby is not ready: peer {p.name!r} is {p.state.value}")
            n = self._nonce()
            self.switchover = Switchover(
                R.OFFER,
                n,
                now,
                now + timeout / 2,
                "operator",
                p.seq,
                {n},
                now + self.config.interval,
            )
            out.append(self._switch_msg(MsgType.SWITCHOVER_REQUEST, n, reason))
        elif self.state is S.BACKUP:
            if p.state is not S.MASTER:
                return no(f"nothing to take over: peer {p.name!r} is {p.state.value}")
            self._start_pull(now, "operator", reason, out)
        else:
            return no(f"cannot switch over while {self.state.value}")

    def _start_pull(self, now: float, origin: str, reason: str, out: list[Action]) -> None:
        n = self._nonce()
        p = self.peer
        self.switchover = Switchover(
            SwitchoverRole.PULL,
            n,
            now,
            now + self.config.switchover_timeout / 2,
            origin,
            p.seq if p else -1,
            {n},
            now + self.config.interval,
        )
        out.append(self._switch_msg(MsgType.SWITCHOVER_REQUEST, n, reason))

    def _end_switchover(self, ok: bool, detail: str, out: list[Action]) -> None:
        sw = self.switchover
        self.switchover = None
        if sw is None:
            return
        if sw.origin == "operator":
            out.append(SwitchoverOutcome(ok, detail))
        out.append(Notice("switchover", f"{sw.role.value} {'done' if ok else 'ended'}: {detail}"))
        if sw.origin == "preempt" and not ok:
            self.preempt_since = None

    def _shutdown(self, now: float, reason: str, out: list[Action]) -> None:
        self._end_switchover(False, "shutting down", out)
        if self.holding:
            out.append(ReleaseVIPs(reason))
            self.holding = False
        self.probing = None
        self.fencing = None
        self.resync = None
        self._set(
            S.STOPPED,
            now,
            reason,
            out,
            announce=SendGoodbye(
                self._body(MsgType.GOODBYE, reason=reason, state=S.STOPPED),
                self.config.goodbye_copies,
            ),
        )
        self.next_wakeup = None

    def _clock_jump(self, now: float, seconds: float, out: list[Action]) -> None:
        out.append(Notice("clock-jump", f"clock jumped {seconds:.3f} s (VM paused?)"))
        self.counters["clock_jumps"] += 1
        if seconds < self.config.clock_jump_threshold:
            return
        if self.state not in (S.MASTER, S.BACKUP, S.INIT):
            return
        was = self.resync.was if self.resync is not None else self.state
        self._end_switchover(False, f"clock jumped {seconds:.1f} s", out)
        self.probing = None
        self.fencing = None
        self.split_brain = False
        self.resync = Resync(seconds, was, Probing(now, "resync", now))
        self._set(
            S.INIT,
            now,
            f"resync: clock jumped {seconds:.1f} s (VM paused?); "
            "asking the peer before claiming anything",
            out,
            announce=None,
        )

    # ------------------------------------------------------------ transitions
    def _set(
        self,
        new: PairState,
        now: float,
        reason: str,
        out: list[Action],
        announce: SendGoodbye | None | Literal["heartbeat"] = "heartbeat",
    ) -> None:
        old = self.state
        self.reason = reason
        if new is old:
            return
        out.append(StateChange(old, new, reason))
        self.state = new
        self.since = now
        self.probing = None
        self.preempt_since = self.preempt_due = None
        self.last_transition = (old, new, now, reason)
        if announce == "heartbeat":
            out.append(SendHeartbeat(self._body(MsgType.HEARTBEAT)))
            self.next_heartbeat = now + self.config.interval
        elif announce is not None:
            out.append(announce)
            self.next_heartbeat = now + self.config.interval
        out.append(RunNotify(new, reason))

    def _take(self, now: float, reason: str, out: list[Action]) -> bool:
        sw = self.switchover
        if sw is not None:
            if sw.role is SwitchoverRole.HANDOFF:
                self._end_switchover(False, f"rolled back: {reason}", out)
            else:
                self._end_switchover(True, f"took over: {reason}", out)
        if self.holding:
            out.append(Reannounce(reason))
        else:
            out.append(TakeVIPs(reason))
            self.holding = True
            self.counters["takeovers"] += 1
        self.fencing = None
        self.preempt_hold = False
        self.split_brain = False
        self.next_renew = now + self.config.renew_interval
        self._set(S.MASTER, now, reason, out)
        return True

    def _release(
        self, new: PairState, now: float, reason: str, out: list[Action], goodbye: bool = False
    ) -> bool:
        if self.holding:
            out.append(ReleaseVIPs(reason))
            self.holding = False
        self.split_brain = False
        self.next_renew = INF
        announce: SendGoodbye | Literal["heartbeat"] = "heartbeat"
        if goodbye:
            announce = SendGoodbye(
                self._body(MsgType.GOODBYE, reason=reason, state=new), self.config.goodbye_copies
            )
        self._set(new, now, reason, out, announce=announce)
        return True

    # ------------------------------------------------------------ the rules
    def _step(self, now: float, out: list[Action]) -> bool:
        """Apply the rules once; True if the state changed (then run again)."""
        st = self.state
        if st is S.STOPPED:
            return False
        if self.resync is not None:
            return self._step_resync(now, out)
        if st is S.MASTER:
            return self._step_master(now, out)
        elig = self.eligible(now)
        if st is S.FAULT:
            if elig:
                self._set(S.BACKUP, now, f"healthy again ({self.health_reason})", out)
                return True
            self.reason = self._unhealthy_reason(now)
            return False
        if not elig:
            self._end_switchover(False, self._unhealthy_reason(now), out)
            self.fencing = None
            self._set(S.FAULT, now, self._unhealthy_reason(now), out)
            return True
        if self.fencing is not None:
            return self._step_fencing(now, out)
        if st is S.INIT:
            return self._step_init(now, out)
        return self._step_backup(now, out)

    def _step_init(self, now: float, out: list[Action]) -> bool:
        p = self.peer
        if self.peer_alive(now):
            assert p is not None
            return self._decide_against(p, now, out, "")
        if now < self.listen_until:
            return False
        silent = (
            "never heard the peer"
            if p is None
            else f"peer {p.name!r} silent for {now - p.last_heard:.3f} s"
        )
        return self._silence(now, out, f"{silent} after listening {self.config.init_dead:g} s")

    def _decide_against(self, p: PeerInfo, now: float, out: list[Action], prefix: str) -> bool:
        """INIT's decision once the peer's (fresh) state is known."""
        who = f"{prefix}peer {p.name!r} ({p.state.value}, priority {p.priority})"
        if p.state is S.MASTER:
            return self._release(S.BACKUP, now, f"{who} is master", out)
        if p.vips:
            return self._release(S.BACKUP, now, f"{who} still holds the addresses", out)
        if p.state in (S.FAULT, S.STOPPED):
            return self._take(now, f"{who} is not able to serve: {p.reason}", out)
        if self.outranks(p):
            return self._take(
                now,
                f"{who}: we outrank it (priority "
                f"{self.config.priority}, name {self.config.node!r})",
                out,
            )
        return self._release(S.BACKUP, now, f"{who} outranks us", out)

    def _step_backup(self, now: float, out: list[Action]) -> bool:
        R = SwitchoverRole
        p = self.peer
        alive = self.peer_alive(now)
        sw = self.switchover
        if sw is not None:
            if sw.role in (R.PULL, R.ACCEPT):
                released_by_word = (
                    alive
                    and p is not None
                    and p.seq > sw.peer_seq
                    and p.state is not S.MASTER
                    and not p.vips
                )
                if sw.released or released_by_word:
                    return self._take(
                        now, f"switchover: peer released the addresses ({sw.origin})", out
                    )
                if sw.refused is not None:
                    self._end_switchover(False, f"refused by the peer: {sw.refused}", out)
                elif now >= sw.deadline:
                    self._end_switchover(False, "the master did not release in time", out)
                elif sw.role is R.PULL and now >= sw.next_resend:
                    sw.next_resend = now + self.config.interval
                    out.append(self._switch_msg(MsgType.SWITCHOVER_REQUEST, sw.nonce, "switchover"))
            elif sw.role is R.HANDOFF:
                if alive and p is not None and p.state is S.MASTER:
                    self._end_switchover(True, f"peer {p.name!r} is master", out)
                elif now >= sw.deadline:
                    if alive and p is not None and not p.vips:
                        return self._take(
                            now,
                            f"switchover rollback: peer {p.name!r} did "
                            f"not become master within "
                            f"{self.config.switchover_timeout:g} s "
                            f"(it is {p.state.value})",
                            out,
                        )
                    self._end_switchover(
                        False,
                        "the peer went silent after the hand-off; taking back if it stays silent",
                        out,
                    )
        sw = self.switchover
        if alive:
            assert p is not None
            if p.state in (S.FAULT, S.STOPPED) and not p.vips:
                return self._take(now, f"peer {p.name!r} is {p.state.value}: {p.reason}", out)
            if (
                p.state is S.BACKUP
                and not p.vips
                and sw is None
                and Flags.SWITCHOVER not in p.flags
                and Flags.RESYNC not in p.flags
                and self.outranks(p)
            ):
                return self._take(now, f"peer {p.name!r} is backup too and we outrank it", out)
            if p.state is S.MASTER:
                self._preempt(p, now, out)
            else:
                self.preempt_since = self.preempt_due = None
        else:
            self.preempt_since = self.preempt_due = None
        if p is None:
            due = self.listen_until
            silent = "never heard the peer"
        else:
            due = p.last_heard + self.config.suspect_after * p.interval
            silent = f"peer {p.name!r} silent for {now - p.last_heard:.3f} s"
        if now >= due or (p is not None and p.dead):
            return self._silence(now, out, silent)
        return False

    def _preempt(self, p: PeerInfo, now: float, out: list[Action]) -> None:
        cfg = self.config
        if (
            not cfg.preempt
            or self.preempt_hold
            or self.switchover is not None
            or not self.outranks(p)
        ):
            self.preempt_since = self.preempt_due = None
            return
        if self.preempt_since is None:
            self.preempt_since = now
        healthy_since = self.healthy_since if self.healthy_since is not None else now
        due = max(self.preempt_since + cfg.preempt_delay, healthy_since + cfg.min_healthy)
        self.preempt_due = due
        if now >= due:
            self.preempt_due = None
            self.counters["preempts"] += 1
            self._start_pull(
                now, "preempt", f"preempt: priority {cfg.priority} > {p.priority}", out
            )
            out.append(Notice("preempt", f"asking {p.name!r} for the role"))

    def _silence(self, now: float, out: list[Action], why: str) -> bool:
        """The peer is silent: confirm with probes, then declare it dead."""
        cfg = self.config
        if now < self.fence_retry_at:
            return False
        if cfg.probe_count == 0:
            p = self.peer
            if p is not None and now < p.last_heard + cfg.dead_after * p.interval and not p.dead:
                return False
            return self._declare_dead(now, out, why)
        if self.probing is None:
            self.probing = Probing(now, why, now)
            self.counters["suspicions"] += 1
            out.append(Notice("suspect", why))
        pr = self.probing
        self._send_probes(pr, now, out)
        if self._probing_done(pr, now):
            self.probing = None
            return self._declare_dead(
                now, out, f"{pr.why}; {pr.sent} probes unanswered for {now - pr.started:.3f} s"
            )
        return False

    def _send_probes(self, pr: Probing, now: float, out: list[Action]) -> None:
        cfg = self.config
        while pr.sent < cfg.probe_count and now >= pr.next_probe:
            n = self._nonce()
            pr.nonces[n] = now
            pr.sent += 1
            pr.last_sent = now
            pr.next_probe += cfg.probe_spacing
            self.counters["probes"] += 1
            out.append(SendProbe(self._body(MsgType.PROBE, n)))
        if pr.sent < cfg.probe_count and pr.next_probe < now:
            pr.next_probe = now

    def _probing_deadline(self, pr: Probing) -> float:
        cfg = self.config
        grace = cfg.probe_timeout - (cfg.probe_count - 1) * cfg.probe_spacing
        return max(pr.started + cfg.probe_timeout, pr.last_sent + grace)

    def _probing_done(self, pr: Probing, now: float) -> bool:
        return pr.sent >= self.config.probe_count and now >= self._probing_deadline(pr)

    def _declare_dead(self, now: float, out: list[Action], why: str) -> bool:
        p = self.peer
        if p is not None:
            p.dead = True
        self.counters["peer_dead"] += 1
        out.append(Notice("peer-dead", why))
        if self.config.fence == "dom0" and not self.holding:
            self.fencing = Fencing(now, now + self.config.fence_timeout, why)
            self.counters["fences"] += 1
            out.append(
                Fence(
                    p.name if p else self.config.peer,
                    p.generation if p else 0,
                    p.boot_id if p else b"",
                    why,
                )
            )
            self.reason = f"fencing the peer before taking over: {why}"
            return False
        return self._take(now, f"peer declared dead: {why}", out)

    def _step_fencing(self, now: float, out: list[Action]) -> bool:
        f = self.fencing
        assert f is not None
        if f.result is not None and f.result.ok:
            return self._take(now, f"peer fenced ({f.result.detail or 'ok'}); {f.why}", out)
        if f.result is not None or now >= f.deadline:
            detail = (
                (f.result.detail or "failed")
                if f.result is not None
                else (f"no answer in {self.config.fence_timeout:g} s")
            )
            self.fencing = None
            self.fence_retry_at = now + self.config.fence_retry
            self.counters["fence_failures"] += 1
            self.reason = (
                f"fence failed ({detail}): not taking over; retry in "
                f"{self.config.fence_retry:g} s if the peer stays silent"
            )
            out.append(Notice("fence-failed", self.reason))
        return False

    def _step_master(self, now: float, out: list[Action]) -> bool:
        R = SwitchoverRole
        cfg = self.config
        if not self.eligible(now):
            why = self._unhealthy_reason(now)
            self._end_switchover(False, why, out)
            return self._release(S.FAULT, now, why, out, goodbye=True)
        p = self.peer
        alive = self.peer_alive(now)
        sw = self.switchover
        if sw is not None:
            if sw.role is R.GRANT or (sw.role is R.OFFER and sw.ready):
                name = p.name if p else "peer"
                self.switchover = Switchover(
                    R.HANDOFF,
                    sw.nonce,
                    now,
                    now + cfg.switchover_timeout,
                    sw.origin,
                    p.seq if p else -1,
                    sw.nonces,
                )
                self.preempt_hold = True
                self._release(S.BACKUP, now, f"switchover: handing the addresses to {name!r}", out)
                for n in sorted(sw.nonces):
                    out.append(
                        self._switch_msg(
                            MsgType.SWITCHOVER_RELEASED, n, "released", cfg.goodbye_copies
                        )
                    )
                return True
            if sw.refused is not None:
                self._end_switchover(False, f"the standby refused: {sw.refused}", out)
            elif now >= sw.deadline:
                self._end_switchover(False, "the standby did not answer in time", out)
            elif now >= sw.next_resend:
                sw.next_resend = now + cfg.interval
                out.append(self._switch_msg(MsgType.SWITCHOVER_REQUEST, sw.nonce, "switchover"))
        if alive and p is not None and p.state is S.MASTER:
            if not self.outranks(p):
                self.counters["split_brain_yield"] += 1
                self._end_switchover(False, "split brain", out)
                return self._release(
                    S.BACKUP,
                    now,
                    f"split brain: peer {p.name!r} is master "
                    f"too and outranks us (priority {p.priority})",
                    out,
                )
            if not self.split_brain:
                self.split_brain = True
                self.counters["split_brain_keep"] += 1
                out.append(
                    Notice(
                        "split-brain",
                        f"peer {p.name!r} is master too; we outrank it and keep the addresses",
                    )
                )
                out.append(Reannounce(f"split brain with {p.name!r}: we keep the addresses"))
        elif self.split_brain:
            self.split_brain = False
            name = p.name if p else "peer"
            out.append(Reannounce(f"split brain over: {name!r} released"))
        if now >= self.next_renew:
            out.append(RenewVIPs())
            self.next_renew = max(self.next_renew + cfg.renew_interval, now)
            if self.next_renew <= now:
                self.next_renew = now + cfg.renew_interval
        return False

    def _step_resync(self, now: float, out: list[Action]) -> bool:
        r = self.resync
        assert r is not None
        pr = r.probing
        elig = self.eligible(now)
        self._send_probes(pr, now, out)
        answer = pr.answer
        if answer is None and not self._probing_done(pr, now):
            return False
        self.resync = None
        p = self.peer
        if answer is not None and p is not None:
            if answer.state is S.MASTER:
                return self._release(
                    S.BACKUP, now, f"resync: peer {p.name!r} became master while we were away", out
                )
            if not elig:
                return self._release(
                    S.FAULT, now, self._unhealthy_reason(now), out, goodbye=self.holding
                )
            if self.holding:
                return self._take(
                    now,
                    f"resync: peer {p.name!r} is {answer.state.value}; we keep the addresses",
                    out,
                )
            return self._decide_against(p, now, out, "resync: ")
        if not elig:
            return self._release(
                S.FAULT, now, self._unhealthy_reason(now), out, goodbye=self.holding
            )
        if self.holding:
            return self._take(now, "resync: no answer from the peer; we keep the addresses", out)
        return self._declare_dead(now, out, f"resync: {pr.sent} probes unanswered")

    # ------------------------------------------------------------ time
    def _heartbeat(self, now: float, out: list[Action]) -> None:
        if self.state is S.STOPPED or self.resync is not None:
            return
        if now >= self.next_heartbeat:
            out.append(SendHeartbeat(self._body(MsgType.HEARTBEAT)))
            self.next_heartbeat += self.config.interval
            if self.next_heartbeat <= now:
                self.next_heartbeat = now + self.config.interval

    def _schedule(self, now: float) -> None:
        if self.state is S.STOPPED:
            self.next_wakeup = None
            return
        cfg = self.config
        times: list[float] = []
        if self.resync is None:
            times.append(self.next_heartbeat)
        if self.state is S.MASTER:
            times.append(self.next_renew)
        for pr in (self.probing, self.resync.probing if self.resync else None):
            if pr is not None:
                if pr.sent < cfg.probe_count:
                    times.append(pr.next_probe)
                else:
                    times.append(self._probing_deadline(pr))
        if self.fencing is not None:
            times.append(self.fencing.deadline)
        sw = self.switchover
        if sw is not None:
            times += [sw.deadline, sw.next_resend]
        if self.state is S.INIT:
            times.append(self.listen_until)
        p = self.peer
        if p is not None:
            times.append(p.last_heard + self._fresh_for(p))  # when it goes stale
            if self.state in (S.BACKUP, S.INIT):
                times.append(p.last_heard + cfg.suspect_after * p.interval)
                if cfg.probe_count == 0:
                    times.append(p.last_heard + cfg.dead_after * p.interval)
        if self.state is S.BACKUP:
            times.append(self.listen_until)
        times.append(self.fence_retry_at)
        if self.preempt_due is not None:
            times.append(self.preempt_due)
        future = [t for t in times if t > now and t < INF]
        self.next_wakeup = min(future) if future else None

    # ------------------------------------------------------------ status
    def status(self, now: float) -> dict[str, object]:
        """A plain dict for ``guardian status`` (the engine adds drop counters and the
        per-path ages of what the peer heard from us: ``Endpoint.heard_age``)."""
        p = self.peer
        peer: dict[str, object] | None = None
        if p is not None:
            peer = {
                "name": p.name,
                "state": p.state.value,
                "state_age": now - p.state_since if p.state_since > -INF else None,
                "priority": p.priority,
                "reason": p.reason,
                "alive": self.peer_alive(now),
                "declared_dead": p.dead,
                "last_heard_age": now - p.last_heard,
                "generation": p.generation,
                "boot_id": p.boot_id.hex(),
                "interval": p.interval,
                "vips": [str(v) for v in p.vips],
                "flags": [f.name.lower() for f in Flags if f.value and f in p.flags and f.name],
                "outranked_by_us": self.outranks(p),
                "sees_our_generation": p.view_generation,
                "paths": {
                    i: {
                        "last_heard_age": now - t,
                        "peer_got_our_seq": p.view[i] if i < len(p.view) else None,
                    }
                    for i, t in sorted(p.paths.items())
                },
            }
        pr = self.probing
        sw = self.switchover
        r = self.resync
        return {
            "node": self.config.node,
            "priority": self.config.priority,
            "state": self.state.value,
            "since_age": now - self.since,
            "reason": self.reason,
            "holding_vips": self.holding,
            "healthy": self.healthy,
            "health_reason": self.health_reason,
            "eligible": self.eligible(now),
            "ping_ok": self.ping_ok,
            "peer": peer,
            "suspicion": None
            if pr is None
            else {
                "why": pr.why,
                "age": now - pr.started,
                "probes_sent": pr.sent,
                "deadline_in": self._probing_deadline(pr) - now if pr.sent else None,
            },
            "fencing": None
            if self.fencing is None
            else {"why": self.fencing.why, "age": now - self.fencing.started},
            "fence_retry_in": (self.fence_retry_at - now if self.fence_retry_at > now else None),
            "resync": None
            if r is None
            else {"jump": r.jump, "was": r.was.value, "probes_sent": r.probing.sent},
            "switchover": None
            if sw is None
            else {
                "role": sw.role.value,
                "origin": sw.origin,
                "age": now - sw.started,
                "deadline_in": sw.deadline - now,
            },
            "preempt": {
                "enabled": self.config.preempt,
                "held_back": self.preempt_hold,
                "due_in": (self.preempt_due - now if self.preempt_due is not None else None),
            },
            "split_brain": self.split_brain,
            "last_transition": None
            if self.last_transition is None
            else {
                "from": self.last_transition[0].value,
                "to": self.last_transition[1].value,
                "age": now - self.last_transition[2],
                "reason": self.last_transition[3],
            },
            "last_probe_rtt": self.last_rtt,
            "next_wakeup_in": (self.next_wakeup - now if self.next_wakeup is not None else None),
            "counters": dict(self.counters),
        }
