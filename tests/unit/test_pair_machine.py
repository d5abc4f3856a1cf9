"""The failover pair machine: scenario tables on a virtual clock, then two machines on a
simulated lossy link (the real wire format in between) for false failovers, detection
time and the one-holder rule.  No sleeps."""

from __future__ import annotations

import functools
import heapq
import ipaddress
import random
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import pytest

from ipfailover._machine import (
    Action,
    ClockJump,
    Fence,
    FenceResult,
    Input,
    LocalHealth,
    Notice,
    PairConfig,
    PairMachine,
    PeerMessage,
    PingResult,
    Reannounce,
    ReleaseVIPs,
    RenewVIPs,
    RunNotify,
    Send,
    SendGoodbye,
    SendHeartbeat,
    SendProbe,
    SendProbeAck,
    SendSwitchover,
    Shutdown,
    StateChange,
    SwitchoverCommand,
    SwitchoverOutcome,
    TakeVIPs,
    Tick,
)
from ipfailover._states import PairState
from ipfailover._wire import Endpoint, Flags, KeyRing, Message, MsgType

S = PairState
T = MsgType
VIP = ipaddress.ip_address("192.0.2.100")
CFG = PairConfig(node="vm01", priority=150, init_dead=1.0, preempt_delay=5.0, min_healthy=2.0)


class Peer:
    """Builds authenticated-looking messages from the peer (``PeerMessage`` is what the
    engine delivers after ``Endpoint.open``)."""

    def __init__(self, name: str = "vm02", priority: int = 100, generation: int = 1) -> None:
        self.name = name
        self.priority = priority
        self.generation = generation
        self.seq = 0

    def __call__(self, state: PairState = S.BACKUP, mtype: MsgType = T.HEARTBEAT, *,
                 nonce: int = 0, vips: Iterable[object] = (), flags: Flags = Flags.NONE,
                 reason: str = "", path: int = 0, seq: int | None = None) -> PeerMessage:
        if seq is None:
            self.seq += 1
            seq = self.seq
        msg = Message(type=mtype, group="web", node=self.name, generation=self.generation,
                      seq=seq, boot_id=b"\x00" * 8, state=state, priority=self.priority,
                      flags=flags, interval_ms=100, nonce=nonce,
                      vips=tuple(ipaddress.ip_address(str(v)) for v in vips), reason=reason)
        return PeerMessage(msg, path)


class Wait:
    """Deliver every Tick the machine asks for up to (and at) the row's time."""


WAIT = Wait()
IGNORED: tuple[type, ...] = (StateChange, RunNotify, Notice, SendHeartbeat, RenewVIPs)
Row = tuple[float, Input | Wait, PairState, list[type]]


def ticks_until(m: PairMachine, until: float) -> list[Action]:
    out: list[Action] = []
    while m.next_wakeup is not None and m.next_wakeup < until:
        out += m.transition(Tick(), m.next_wakeup)
    out += m.transition(Tick(), until)
    return out


def run(m: PairMachine, rows: list[Row]) -> list[Action]:
    """Each row: (time, input or WAIT, state after, kinds of actions other than the
    IGNORED ones).  WAIT rows compare the kinds with repeats collapsed."""
    everything: list[Action] = []
    for i, (t, event, state, kinds) in enumerate(rows):
        if isinstance(event, Wait):
            actions = ticks_until(m, t)
        else:
            actions = m.transition(event, t)
        everything += actions
        got = [type(a) for a in actions if not isinstance(a, IGNORED)]
        if isinstance(event, Wait):
            got = [k for j, k in enumerate(got) if j == 0 or got[j - 1] is not k]
        assert m.state is state, f"row {i} at t={t}: {m.state} ({m.reason})"
        assert got == kinds, f"row {i} at t={t}: actions {got}, expected {kinds} ({m.reason})"
    return everything


def state_of(m: PairMachine) -> PairState:
    """``m.state``, without mypy narrowing it from an earlier assert."""
    return m.state


def of(kind: type, actions: list[Action]) -> list[Action]:
    return [a for a in actions if isinstance(a, kind)]


def master(cfg: PairConfig = CFG, peer: Peer | None = None) -> tuple[PairMachine, Peer]:
    """vm01 master, vm02 heard as backup at t=0.1."""
    peer = peer or Peer()
    m = PairMachine(cfg, 0.0, rng=random.Random(1))
    run(m, [(0.0, Tick(), S.INIT, []),
            (0.1, peer(S.INIT), S.MASTER, [TakeVIPs])])
    run(m, [(0.2, peer(S.BACKUP), S.MASTER, [])])
    return m, peer


def backup(cfg: PairConfig = CFG, peer: Peer | None = None) -> tuple[PairMachine, Peer]:
    """vm01 backup of a master vm02 (priority 200 unless given)."""
    peer = peer or Peer(priority=200)
    m = PairMachine(cfg, 0.0, rng=random.Random(1))
    run(m, [(0.0, Tick(), S.INIT, []),
            (0.1, peer(S.MASTER, vips=[VIP]), S.BACKUP, [])])
    return m, peer


def heartbeats(m: PairMachine, peer: Peer, start: float, end: float, state: PairState,
               vips: Iterable[object] = (), every: float = 0.1) -> list[Action]:
    """The peer's heartbeats at start, start+every, ... < end, with our ticks between."""
    out: list[Action] = []
    t = start
    while t < end - 1e-9:
        out += ticks_until(m, t)
        out += m.transition(peer(state, vips=vips), t)
        t += every
    return out


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("bad, match", [
    ({"interval": 0.01}, "interval"),
    ({"priority": 300}, "priority"),
    ({"probe_count": 5, "probe_spacing": 0.02, "probe_timeout": 0.05}, "probe_timeout"),
    ({"dead_after": 1.0}, "dead_after"),
    ({"fence": "ipmi"}, "fence"),
    ({"peer": "vm01"}, "peer"),
    ({"node": ""}, "node"),
    ({"switchover_timeout": 0.1}, "switchover_timeout"),
])
def test_config_errors_name_the_setting(bad: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=f"failover setting {match}"):
        replace(CFG, **bad)  # type: ignore[arg-type]


def test_defaults() -> None:
    c = PairConfig(node="a")
    assert (c.interval, c.suspect_after, c.probe_count, c.probe_spacing, c.probe_timeout) == (
        0.1, 1.5, 10, 0.005, 0.06)
    assert c.interval_ms == 100 and c.clock_jump_threshold == pytest.approx(0.15)


# ---------------------------------------------------------------- INIT


def test_alone_at_boot_listens_init_dead_then_confirms_then_takes() -> None:
    m = PairMachine(CFG, 0.0, rng=random.Random(1))
    acts = run(m, [
        (0.0, Tick(), S.INIT, []),
        (0.99, WAIT, S.INIT, []),
        (1.0, WAIT, S.INIT, [SendProbe]),                 # probing the silence first
        (1.07, WAIT, S.MASTER, [SendProbe, TakeVIPs]),
    ])
    assert len(of(SendProbe, acts)) == 10
    take = of(TakeVIPs, acts)[0]
    assert isinstance(take, TakeVIPs) and "never heard the peer" in take.reason
    beats = of(SendHeartbeat, acts)
    assert beats and all(isinstance(b, Send) and b.body.state in (S.INIT, S.MASTER)
                         for b in beats)
    assert of(RunNotify, acts) == [RunNotify(S.MASTER, take.reason)]


def test_boot_hearing_a_master_becomes_backup_at_once() -> None:
    m, _ = backup()
    assert m.state is S.BACKUP and "is master" in m.reason and not m.holding


@pytest.mark.parametrize("mine, theirs, my_name, their_name, expect", [
    (150, 100, "vm01", "vm02", S.MASTER),     # higher priority wins
    (100, 150, "vm01", "vm02", S.BACKUP),
    (100, 100, "vm01", "vm02", S.MASTER),     # tie: the lower name wins
    (100, 100, "vm03", "vm02", S.BACKUP),
])
def test_boot_tie_break(mine: int, theirs: int, my_name: str, their_name: str,
                        expect: PairState) -> None:
    m = PairMachine(replace(CFG, node=my_name, priority=mine), 0.0)
    m.transition(Tick(), 0.0)
    m.transition(Peer(their_name, theirs)(S.INIT), 0.3)
    assert m.state is expect, m.reason


def test_two_machines_booting_together_agree() -> None:
    for prio_a, prio_b in ((150, 100), (100, 100), (100, 150)):
        a = PairMachine(replace(CFG, node="vm01", priority=prio_a), 0.0)
        b = PairMachine(replace(CFG, node="vm02", priority=prio_b), 0.0)
        pa, pb = Peer("vm01", prio_a), Peer("vm02", prio_b)
        a.transition(Tick(), 0.0)
        b.transition(Tick(), 0.0)
        # each hears the other's INIT heartbeat (crossing on the wire)
        a.transition(pb(S.INIT), 0.001)
        b.transition(pa(S.INIT), 0.001)
        assert {a.state, b.state} == {S.MASTER, S.BACKUP}
        a.transition(pb(b.state, vips=[VIP] if b.holding else []), 0.1)
        b.transition(pa(a.state, vips=[VIP] if a.holding else []), 0.1)
        assert {a.state, b.state} == {S.MASTER, S.BACKUP} and a.holding != b.holding


def test_boot_unhealthy_goes_fault_and_comes_back_after_init_dead() -> None:
    m = PairMachine(CFG, 0.0, healthy=False, health_reason="http failing")
    run(m, [
        (0.0, Tick(), S.FAULT, []),
        (0.5, LocalHealth(True, "all checks passing"), S.BACKUP, []),
        (0.99, WAIT, S.BACKUP, []),                         # init_dead still respected
        (1.1, WAIT, S.MASTER, [SendProbe, TakeVIPs]),
    ])


def test_boot_peer_not_master_but_holding_addresses_means_wait() -> None:
    m = PairMachine(CFG, 0.0)
    peer = Peer()
    run(m, [(0.0, Tick(), S.INIT, []),
            (0.1, peer(S.INIT, vips=[VIP], flags=Flags.RESYNC), S.BACKUP, []),
            (0.2, peer(S.BACKUP), S.MASTER, [TakeVIPs])])     # released: we outrank it


def test_boot_peer_fault_lets_us_take() -> None:
    m = PairMachine(replace(CFG, priority=10), 0.0)
    run(m, [(0.0, Tick(), S.INIT, []),
            (0.1, Peer()(S.FAULT, reason="apache down"), S.MASTER, [TakeVIPs])])
    assert "apache down" in m.reason


# ---------------------------------------------------------------- detection


def test_backup_suspects_probes_and_takes_over_within_the_window() -> None:
    m, peer = backup()
    acts = heartbeats(m, peer, 0.2, 1.05, S.MASTER, vips=[VIP])   # last one at 1.0
    assert not of(SendProbe, acts)
    acts = ticks_until(m, 1.149)
    assert not of(SendProbe, acts) and m.state is S.BACKUP
    acts = ticks_until(m, 1.2)
    assert len(of(SendProbe, acts)) == 10 and m.state is S.BACKUP
    assert m.status(1.2)["suspicion"] is not None
    acts = ticks_until(m, 1.3)
    take = of(TakeVIPs, acts)
    assert state_of(m) is S.MASTER and take
    assert m.since == pytest.approx(1.0 + 0.15 + 0.06)
    assert "10 probes unanswered" in m.reason


def test_any_word_from_the_master_cancels_the_suspicion() -> None:
    m, peer = backup()
    heartbeats(m, peer, 0.2, 1.05, S.MASTER, vips=[VIP])
    acts = ticks_until(m, 1.16)                      # suspecting, 3 probes out
    probes = of(SendProbe, acts)
    assert len(probes) == 3
    assert isinstance(probes[1], SendProbe)
    run(m, [(1.161, peer(S.MASTER, T.PROBE_ACK, nonce=probes[1].nonce, vips=[VIP]),
             S.BACKUP, [])])
    assert m.probing is None and m.last_rtt == pytest.approx(0.006)
    assert not of(SendProbe, ticks_until(m, 1.31))   # silence counts again from the ack
    acts = ticks_until(m, 1.33)
    assert m.state is S.BACKUP and len(of(SendProbe, acts)) == 4
    run(m, [(1.335, peer(S.MASTER, vips=[VIP]), S.BACKUP, [])])    # a heartbeat also does
    assert m.probing is None
    assert m.counters["suspicions"] == 2 and m.counters["suspicions_cancelled"] == 2


def test_late_engine_never_shortens_the_confirmation() -> None:
    m, peer = backup()
    heartbeats(m, peer, 0.2, 1.05, S.MASTER, vips=[VIP])
    m.transition(Tick(), 1.15)                    # first probe
    acts = m.transition(Tick(), 1.5)              # the engine was stalled 350 ms
    assert m.state is S.BACKUP, "must not conclude before the probes had their chance"
    assert len(of(SendProbe, acts)) == 9
    acts = ticks_until(m, 1.6)
    assert state_of(m) is S.MASTER
    assert m.since >= 1.5 + 0.015 - 1e-9


def test_classic_mode_without_probes() -> None:
    m, peer = backup(replace(CFG, probe_count=0, dead_after=3))
    heartbeats(m, peer, 0.2, 1.05, S.MASTER, vips=[VIP])
    ticks_until(m, 1.29)
    assert m.state is S.BACKUP
    acts = ticks_until(m, 1.31)
    assert state_of(m) is S.MASTER and of(TakeVIPs, acts) and not of(SendProbe, acts)


def test_master_answers_probes_at_once_and_beats_every_interval() -> None:
    m, peer = master()
    acts = run(m, [(0.25, peer(S.BACKUP, T.PROBE, nonce=77), S.MASTER, [SendProbeAck])])
    ack = of(SendProbeAck, acts)[0]
    assert isinstance(ack, SendProbeAck)
    assert ack.nonce == 77 and ack.body.state is S.MASTER and ack.body.type is T.PROBE_ACK
    acts = ticks_until(m, 1.25)
    assert len(of(SendHeartbeat, acts)) == 10
    assert len(of(RenewVIPs, acts)) == 1


def test_out_of_order_state_is_not_applied() -> None:
    m, peer = backup()
    run(m, [(0.2, peer(S.MASTER, vips=[VIP]), S.BACKUP, [])])
    run(m, [(0.21, peer(S.FAULT, seq=1), S.BACKUP, [])])       # older than seq 2
    assert m.peer is not None and m.peer.state is S.MASTER


# ---------------------------------------------------------------- health, goodbye, shutdown


def test_unhealthy_master_releases_first_then_says_goodbye() -> None:
    m, peer = master()
    acts = m.transition(LocalHealth(False, "http: 3/3 CRITICAL"), 0.3)
    kinds = [type(a) for a in acts if not isinstance(a, Notice)]
    assert kinds == [ReleaseVIPs, StateChange, SendGoodbye, RunNotify]
    bye = of(SendGoodbye, acts)[0]
    assert isinstance(bye, SendGoodbye)
    assert bye.body.state is S.FAULT and bye.copies == 3 and "http" in bye.body.reason
    assert m.state is S.FAULT and not m.holding
    acts = ticks_until(m, 0.5)                               # FAULT keeps talking
    assert all(isinstance(b, Send) and b.body.state is S.FAULT
               for b in of(SendHeartbeat, acts))
    # health back while the peer took over: BACKUP, never straight to MASTER
    run(m, [(0.5, peer(S.MASTER, vips=[VIP]), S.FAULT, []),
            (0.6, LocalHealth(True), S.BACKUP, [])])


def test_backup_takes_over_at_once_on_goodbye() -> None:
    m, peer = backup()
    run(m, [(0.5, peer(S.FAULT, T.GOODBYE, reason="unhealthy: http"), S.MASTER, [TakeVIPs])])
    assert "fault" in m.reason and "http" in m.reason
    m2, peer2 = backup()
    run(m2, [(0.5, peer2(S.STOPPED, T.GOODBYE), S.MASTER, [TakeVIPs])])


def test_goodbye_from_a_peer_that_still_lists_addresses_waits_for_the_release() -> None:
    m, peer = backup()
    run(m, [(0.5, peer(S.FAULT, T.GOODBYE, vips=[VIP]), S.BACKUP, []),
            (0.6, peer(S.FAULT), S.MASTER, [TakeVIPs])])


def test_unhealthy_backup_does_not_take_on_goodbye() -> None:
    m, peer = backup()
    run(m, [(0.3, LocalHealth(False, "disk full"), S.FAULT, []),
            (0.5, peer(S.FAULT, T.GOODBYE), S.FAULT, []),
            (0.6, LocalHealth(True), S.MASTER, [TakeVIPs])])


def test_shutdown_releases_says_goodbye_and_goes_inert() -> None:
    m, peer = master()
    acts = m.transition(Shutdown("systemctl stop"), 0.5)
    kinds = [type(a) for a in acts if not isinstance(a, Notice)]
    assert kinds == [ReleaseVIPs, StateChange, SendGoodbye, RunNotify]
    bye = of(SendGoodbye, acts)[0]
    assert isinstance(bye, SendGoodbye) and bye.body.state is S.STOPPED
    assert m.state is S.STOPPED and m.next_wakeup is None
    assert m.transition(peer(S.BACKUP, T.PROBE, nonce=1), 0.6) == []
    assert m.transition(Tick(), 5.0) == []


# ---------------------------------------------------------------- split brain


def test_split_brain_keeper_reannounces_twice_loser_releases() -> None:
    keeper, peer = master()
    run(keeper, [
        (0.5, peer(S.MASTER, vips=[VIP]), S.MASTER, [Reannounce]),
        (0.6, peer(S.MASTER, vips=[VIP]), S.MASTER, []),                 # once per episode
        (0.7, peer(S.BACKUP), S.MASTER, [Reannounce]),                   # it released
    ])
    loser = PairMachine(replace(CFG, priority=100), 0.0)
    lpeer = Peer("vm00", 100)                                  # vm00 < vm01: it outranks us
    run(loser, [(0.0, Tick(), S.INIT, []),
                (0.1, lpeer(S.FAULT), S.MASTER, [TakeVIPs])])
    acts = run(loser, [(0.5, lpeer(S.MASTER, vips=[VIP]), S.BACKUP, [ReleaseVIPs])])
    assert "split brain" in loser.reason
    beat = of(SendHeartbeat, acts)
    assert beat and isinstance(beat[0], Send) and beat[0].body.state is S.BACKUP


def test_master_notes_a_peer_back_from_a_long_silence() -> None:
    """A partition healed where the peer released before we saw it as master: no split
    brain here, but a ``peer-back`` notice (the engine re-announces on it)."""
    m, peer = master()
    acts = heartbeats(m, peer, 0.3, 0.6, S.BACKUP)               # fresh: nothing to note
    assert not [a for a in of(Notice, acts) if a.kind == "peer-back"]
    acts = ticks_until(m, 2.0) + m.transition(peer(S.BACKUP), 2.0)   # 1.5 s of silence
    back = [a for a in of(Notice, acts) if a.kind == "peer-back"]
    assert len(back) == 1 and "1.5" in back[0].detail, back
    assert m.state is S.MASTER and m.counters["peer_back"] == 1
    acts = m.transition(peer(S.BACKUP), 2.1)
    assert not [a for a in of(Notice, acts) if a.kind == "peer-back"]


# ---------------------------------------------------------------- switchover


def test_switchover_offered_by_the_master() -> None:
    m, peer = master()
    acts = run(m, [(0.5, SwitchoverCommand(), S.MASTER, [SendSwitchover])])
    req = of(SendSwitchover, acts)[0]
    assert isinstance(req, SendSwitchover) and req.type is T.SWITCHOVER_REQUEST
    acts = run(m, [
        (0.51, peer(S.BACKUP, T.SWITCHOVER_READY, nonce=req.nonce, flags=Flags.SWITCHOVER),
         S.BACKUP, [ReleaseVIPs, SendSwitchover]),
        (0.52, peer(S.MASTER, vips=[VIP]), S.BACKUP, [SwitchoverOutcome]),
    ])
    rel = of(SendSwitchover, acts)[0]
    assert isinstance(rel, SendSwitchover) and rel.type is T.SWITCHOVER_RELEASED
    assert rel.nonce == req.nonce and rel.copies == 3 and rel.body.state is S.BACKUP
    assert of(SwitchoverOutcome, acts)[0] == SwitchoverOutcome(True, "peer 'vm02' is master")
    # preempt is held back after a planned hand-off
    pm, ppeer = master(replace(CFG, preempt=True))
    out = pm.transition(SwitchoverCommand(), 0.5)
    n = of(SendSwitchover, out)[0]
    assert isinstance(n, SendSwitchover)
    pm.transition(ppeer(S.BACKUP, T.SWITCHOVER_READY, nonce=n.nonce), 0.51)
    acts = heartbeats(pm, ppeer, 0.52, 30.0, S.MASTER, vips=[VIP])
    assert pm.state is S.BACKUP and not of(SendSwitchover, [
        a for a in acts if isinstance(a, SendSwitchover) and a.type is T.SWITCHOVER_REQUEST])
    assert pm.status(30.0)["preempt"] == {"enabled": True, "held_back": True, "due_in": None}


def test_standby_answers_an_offer_and_takes_on_released() -> None:
    m, peer = backup()
    acts = run(m, [
        (0.5, peer(S.MASTER, T.SWITCHOVER_REQUEST, nonce=9, vips=[VIP]), S.BACKUP,
         [SendSwitchover]),
    ])
    ready = of(SendSwitchover, acts)[0]
    assert isinstance(ready, SendSwitchover)
    assert ready.type is T.SWITCHOVER_READY and ready.nonce == 9
    assert Flags.SWITCHOVER in ready.body.flags
    acts = run(m, [(0.51, peer(S.BACKUP, T.SWITCHOVER_RELEASED, nonce=9), S.MASTER,
                    [TakeVIPs])])
    assert not of(SwitchoverOutcome, acts)          # the outcome belongs to the master side


def test_standby_takes_when_released_message_is_lost_but_a_backup_heartbeat_comes() -> None:
    m, peer = backup()
    m.transition(peer(S.MASTER, T.SWITCHOVER_REQUEST, nonce=9, vips=[VIP]), 0.5)
    run(m, [(0.52, peer(S.BACKUP, flags=Flags.SWITCHOVER), S.MASTER, [TakeVIPs])])


def test_switchover_pulled_by_the_standby() -> None:
    m, peer = backup(replace(CFG, priority=50))
    heartbeats(m, peer, 0.2, 0.45, S.MASTER, vips=[VIP])
    acts = run(m, [(0.5, SwitchoverCommand(), S.BACKUP, [SendSwitchover])])
    req = of(SendSwitchover, acts)[0]
    assert isinstance(req, SendSwitchover) and req.type is T.SWITCHOVER_REQUEST
    assert req.body.state is S.BACKUP
    acts = run(m, [(0.51, peer(S.BACKUP, T.SWITCHOVER_RELEASED, nonce=req.nonce), S.MASTER,
                    [SwitchoverOutcome, TakeVIPs])])
    outcome = of(SwitchoverOutcome, acts)[0]
    assert isinstance(outcome, SwitchoverOutcome) and outcome.ok


def test_master_grants_a_pull_and_waits_for_the_new_master() -> None:
    m, peer = master()
    acts = run(m, [(0.5, peer(S.BACKUP, T.SWITCHOVER_REQUEST, nonce=5), S.BACKUP,
                    [ReleaseVIPs, SendSwitchover])])
    rel = of(SendSwitchover, acts)[0]
    assert isinstance(rel, SendSwitchover) and rel.type is T.SWITCHOVER_RELEASED
    # the standby did not hear it and asks again: RELEASED again
    acts = run(m, [(0.55, peer(S.BACKUP, T.SWITCHOVER_REQUEST, nonce=5), S.BACKUP,
                    [SendSwitchover])])
    assert of(SendSwitchover, acts)[0].type is T.SWITCHOVER_RELEASED  # type: ignore[union-attr]
    run(m, [(0.6, peer(S.MASTER, vips=[VIP]), S.BACKUP, [])])
    assert m.switchover is None and m.preempt_hold


def test_switchover_rolls_back_when_the_standby_does_not_take_over() -> None:
    m, peer = master()
    req = of(SendSwitchover, m.transition(SwitchoverCommand(), 0.5))[0]
    assert isinstance(req, SendSwitchover)
    run(m, [(0.51, peer(S.BACKUP, T.SWITCHOVER_READY, nonce=req.nonce), S.BACKUP,
             [ReleaseVIPs, SendSwitchover])])
    heartbeats(m, peer, 0.6, 2.5, S.BACKUP, every=0.1)        # stays backup, flag or not
    assert m.state is S.BACKUP
    acts = run(m, [(2.52, WAIT, S.MASTER, [SwitchoverOutcome, TakeVIPs])])
    outcome = of(SwitchoverOutcome, acts)[0]
    assert isinstance(outcome, SwitchoverOutcome)
    assert not outcome.ok and "rolled back" in outcome.detail


def test_switchover_refused_or_unanswered_keeps_the_master() -> None:
    m, peer = master()
    req = of(SendSwitchover, m.transition(SwitchoverCommand(), 0.5))[0]
    assert isinstance(req, SendSwitchover)
    acts = run(m, [(0.51, peer(S.BACKUP, T.SWITCHOVER_REFUSED, nonce=req.nonce,
                               reason="fencing"), S.MASTER, [SwitchoverOutcome])])
    assert of(SwitchoverOutcome, acts) == [
        SwitchoverOutcome(False, "the standby refused: fencing")]
    m.transition(SwitchoverCommand(), 0.6)
    acts = heartbeats(m, peer, 0.65, 1.7, S.BACKUP)
    resent = [a for a in acts if isinstance(a, SendSwitchover)]
    assert len(resent) >= 5                                   # REQUEST repeated
    outcomes = of(SwitchoverOutcome, acts)
    assert outcomes == [SwitchoverOutcome(False, "the standby did not answer in time")]
    assert m.state is S.MASTER and m.holding


@pytest.mark.parametrize("setup, expect", [
    ("fault", "cannot switch over while fault"),
    ("silent", "the peer is silent"),
    ("busy", "already in progress"),
    ("peer-fault", "the standby is not ready"),
])
def test_switchover_command_refusals(setup: str, expect: str) -> None:
    m, peer = master()
    if setup == "fault":
        m.transition(LocalHealth(False), 0.3)
    elif setup == "silent":
        ticks_until(m, 2.0)
    elif setup == "busy":
        m.transition(SwitchoverCommand(), 0.3)
    elif setup == "peer-fault":
        m.transition(peer(S.FAULT), 0.3)
    acts = m.transition(SwitchoverCommand(), 0.35 if setup != "silent" else 2.0)
    outcomes = of(SwitchoverOutcome, acts)
    assert len(outcomes) == 1 and isinstance(outcomes[0], SwitchoverOutcome)
    assert not outcomes[0].ok and expect in outcomes[0].detail


def test_standby_refuses_an_offer_while_fencing() -> None:
    m, peer = backup(replace(CFG, fence="dom0"))
    ticks_until(m, 0.5)                                        # silent: fence requested
    assert m.fencing is not None
    acts = m.transition(peer(S.MASTER, T.SWITCHOVER_REQUEST, nonce=3, vips=[VIP]), 0.6)
    refused = of(SendSwitchover, acts)
    assert len(refused) == 1 and refused[0].type is T.SWITCHOVER_REFUSED  # type: ignore[union-attr]


# ---------------------------------------------------------------- preempt


def test_preempt_waits_for_delay_and_health_then_pulls() -> None:
    cfg = replace(CFG, preempt=True, preempt_delay=5.0, min_healthy=8.0)
    m, peer = backup(cfg, Peer(priority=100))                 # we outrank the master
    acts = heartbeats(m, peer, 0.2, 7.95, S.MASTER, vips=[VIP])
    assert not of(SendSwitchover, acts) and m.preempt_due == pytest.approx(8.0)
    acts = heartbeats(m, peer, 8.0, 8.05, S.MASTER, vips=[VIP])
    req = of(SendSwitchover, acts)
    assert len(req) == 1 and req[0].type is T.SWITCHOVER_REQUEST  # type: ignore[union-attr]
    assert isinstance(req[0], SendSwitchover)
    run(m, [(8.01, peer(S.BACKUP, T.SWITCHOVER_RELEASED, nonce=req[0].nonce), S.MASTER,
             [TakeVIPs])])


def test_no_preempt_when_disabled_or_outranked() -> None:
    m, peer = backup(replace(CFG, preempt=False), Peer(priority=100))
    acts = heartbeats(m, peer, 0.2, 40.0, S.MASTER, vips=[VIP])
    assert not of(SendSwitchover, acts) and m.state is S.BACKUP
    m2, peer2 = backup(replace(CFG, preempt=True))            # peer priority 200
    acts = heartbeats(m2, peer2, 0.2, 40.0, S.MASTER, vips=[VIP])
    assert not of(SendSwitchover, acts)


def test_preempt_restarts_its_delay_after_a_refusal() -> None:
    cfg = replace(CFG, preempt=True, preempt_delay=1.0, min_healthy=0.0)
    m, peer = backup(cfg, Peer(priority=100))
    acts = heartbeats(m, peer, 0.2, 1.15, S.MASTER, vips=[VIP]) + ticks_until(m, 1.15)
    req = of(SendSwitchover, acts)[0]
    assert isinstance(req, SendSwitchover)
    m.transition(peer(S.MASTER, T.SWITCHOVER_REFUSED, nonce=req.nonce, vips=[VIP]), 1.2)
    acts = heartbeats(m, peer, 1.3, 2.15, S.MASTER, vips=[VIP])
    assert not of(SendSwitchover, acts)
    acts = heartbeats(m, peer, 2.2, 2.35, S.MASTER, vips=[VIP])
    assert of(SendSwitchover, acts)


# ---------------------------------------------------------------- fencing


def test_fence_before_taking_over() -> None:
    m, peer = backup(replace(CFG, fence="dom0"))
    heartbeats(m, peer, 0.2, 1.05, S.MASTER, vips=[VIP])
    acts = ticks_until(m, 1.3)
    fence = of(Fence, acts)
    assert m.state is S.BACKUP and len(fence) == 1 and not of(TakeVIPs, acts)
    assert isinstance(fence[0], Fence) and fence[0].peer == "vm02"
    assert fence[0].generation == 1
    assert "fencing" in m.reason
    run(m, [(2.0, FenceResult(True, "vm02 destroyed"), S.MASTER, [TakeVIPs])])
    assert "fenced" in m.reason


def test_failed_fence_never_takes_and_retries_later() -> None:
    m, peer = backup(replace(CFG, fence="dom0", fence_retry=5.0, fence_timeout=3.0))
    ticks_until(m, 0.5)
    run(m, [(1.0, FenceResult(False, "hostd unreachable"), S.BACKUP, [])])
    assert "fence failed" in m.reason
    acts = ticks_until(m, 5.99)
    assert not of(Fence, acts) and not of(TakeVIPs, acts)
    acts = ticks_until(m, 6.2)
    assert len(of(Fence, acts)) == 1
    acts = ticks_until(m, 9.3)                                    # no answer: timeout
    assert m.state is S.BACKUP and "no answer in 3 s" in m.reason
    # the peer talks again: fine, nothing to fence
    run(m, [(9.4, peer(S.MASTER, vips=[VIP]), S.BACKUP, [])])
    assert m.peer is not None and not m.peer.dead


# ---------------------------------------------------------------- clock jumps


def test_paused_master_finds_the_peer_took_over_and_releases() -> None:
    m, peer = master()
    acts = run(m, [(5.0, ClockJump(4.0), S.INIT, [SendProbe])])
    assert m.holding and not of(SendHeartbeat, acts)
    probe = of(SendProbe, acts)[0]
    assert isinstance(probe, SendProbe) and probe.body.state is S.INIT
    assert Flags.RESYNC in probe.body.flags
    # a heartbeat from before the pause (buffered) decides nothing
    run(m, [(5.001, peer(S.BACKUP), S.INIT, [])])
    acts = run(m, [(5.002, peer(S.MASTER, T.PROBE_ACK, nonce=probe.nonce, vips=[VIP]),
                    S.BACKUP, [ReleaseVIPs])])
    assert "became master while we were away" in m.reason and not m.holding


def test_paused_master_resumes_if_the_peer_is_still_backup_or_silent() -> None:
    m, peer = master()
    probe = of(SendProbe, m.transition(ClockJump(2.0), 5.0))[0]
    assert isinstance(probe, SendProbe)
    run(m, [(5.001, peer(S.BACKUP, T.PROBE_ACK, nonce=probe.nonce), S.MASTER, [Reannounce])])
    m2, _ = master()
    m2.transition(ClockJump(2.0), 5.0)
    run(m2, [(5.1, WAIT, S.MASTER, [SendProbe, Reannounce])])
    assert "no answer" in m2.reason


def test_paused_backup_listens_before_claiming() -> None:
    m, peer = backup()
    run(m, [(5.0, ClockJump(3.0), S.INIT, [SendProbe])])
    probe = m.resync.probing if m.resync else None
    assert probe is not None
    nonce = next(iter(probe.nonces))
    run(m, [(5.001, peer(S.MASTER, T.PROBE_ACK, nonce=nonce, vips=[VIP]), S.BACKUP, [])])
    m2, _ = backup()
    m2.transition(ClockJump(3.0), 5.0)
    run(m2, [(5.1, WAIT, S.MASTER, [SendProbe, TakeVIPs])])


def test_short_clock_jump_is_only_noted() -> None:
    m, _ = master()
    acts = run(m, [(1.0, ClockJump(0.05), S.MASTER, [])])
    assert of(Notice, acts) and m.resync is None


# ---------------------------------------------------------------- ping nodes


def test_ping_failure_yields_only_when_the_peer_still_reaches_them() -> None:
    cfg = replace(CFG, ping=True)
    m, peer = master(cfg)
    both = Flags.PING_USED | Flags.PING_OK
    run(m, [(0.3, peer(S.BACKUP, flags=Flags.PING_USED), S.MASTER, []),     # peer fails too
            (0.35, PingResult(False, "192.0.2.1 unreachable"), S.MASTER, []),
            (0.4, peer(S.BACKUP, flags=both), S.FAULT, [ReleaseVIPs, SendGoodbye])])
    assert "ping nodes unreachable" in m.reason
    # reachable again: backup, and as the (fake) peer is backup too and outranked: master
    run(m, [(0.5, PingResult(True), S.MASTER, [TakeVIPs])])
    beat = of(SendHeartbeat, m.transition(Tick(), 0.6))
    assert beat and isinstance(beat[0], Send) and both in beat[0].body.flags


# ---------------------------------------------------------------- peers and status


def test_peer_restart_and_third_nodes() -> None:
    m, peer = master()
    again = Peer(generation=2)
    acts = m.transition(again(S.INIT), 0.5)
    assert any(isinstance(a, Notice) and a.kind == "peer-restarted" for a in acts)
    assert m.peer is not None and m.peer.generation == 2
    acts = m.transition(Peer("vm03")(S.MASTER, vips=[VIP]), 0.55)
    assert any(isinstance(a, Notice) and a.kind == "foreign-node" for a in acts)
    assert m.state is S.MASTER and m.peer.name == "vm02"
    m2 = PairMachine(replace(CFG, peer="vm02"), 0.0)
    acts = m2.transition(Peer("vm09")(S.MASTER), 0.1)
    assert m2.peer is None and m2.state is S.INIT


def test_both_backup_the_higher_takes_the_lower_waits() -> None:
    m2 = PairMachine(replace(CFG, priority=100), 0.0)
    m2.transition(Tick(), 0.0)
    m2.transition(Peer(priority=200)(S.BACKUP), 0.1)
    assert m2.state is S.BACKUP
    hi = PairMachine(replace(CFG, priority=250), 0.0)
    hi.transition(Peer(priority=200)(S.BACKUP), 0.1)
    assert hi.state is S.MASTER


def test_status_explains_itself() -> None:
    m, peer = backup()
    heartbeats(m, peer, 0.2, 0.55, S.MASTER, vips=[VIP])
    m.transition(peer(S.MASTER, vips=[VIP], path=1), 0.56)
    st = m.status(0.6)
    assert st["state"] == "backup" and st["holding_vips"] is False
    p = st["peer"]
    assert isinstance(p, dict)
    assert p["name"] == "vm02" and p["state"] == "master" and p["priority"] == 200
    assert p["alive"] is True and p["vips"] == ["192.0.2.100"]
    assert p["last_heard_age"] == pytest.approx(0.04)
    assert set(p["paths"]) == {0, 1}
    assert st["last_transition"] == {"from": "init", "to": "backup",
                                     "age": pytest.approx(0.5),
                                     "reason": "peer 'vm02' (master, priority 200) is master"}
    assert st["suspicion"] is None and st["switchover"] is None
    assert isinstance(st["next_wakeup_in"], float) and st["next_wakeup_in"] >= 0


def test_next_wakeup_is_always_in_the_future() -> None:
    m, peer = backup(replace(CFG, fence="dom0"))
    t = 0.2
    while t < 20:
        ticks_until(m, t)
        assert m.next_wakeup is None or m.next_wakeup > t
        t += 0.37


# ---------------------------------------------------------------- simulation

KEYS = KeyRing({1: bytes(range(32))})


@dataclass
class SimNode:
    m: PairMachine
    ep: Endpoint
    alive: bool = True
    holding: bool = False
    takes: list[float] = field(default_factory=list)
    token: int = 0


@dataclass
class Sim:
    """Two machines, the real wire between them, independent random loss each way."""

    seed: int
    loss: float = 0.0
    cfg_a: PairConfig = field(default_factory=lambda: PairConfig(node="vm01", priority=150))
    cfg_b: PairConfig = field(default_factory=lambda: PairConfig(node="vm02", priority=100))
    latency: float = 0.0003
    jitter: float = 0.0004
    start_b: float = 0.0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.now = 0.0
        self.q: list[tuple[float, int, Callable[[], None]]] = []
        self.n = 0
        self.cut = False
        self.nodes = [
            SimNode(PairMachine(self.cfg_a, 0.0, rng=random.Random(self.seed * 2)),
                    Endpoint(KEYS, "web", "vm01", 1)),
            SimNode(PairMachine(self.cfg_b, self.start_b, rng=random.Random(self.seed * 2 + 1)),
                    Endpoint(KEYS, "web", "vm02", 1))]
        self.both_since: float | None = None
        self.overlap = 0.0
        self.overlaps = 0
        self.partition_overlap = 0.0
        self.overlap_cut = False
        self.transitions: list[tuple[float, int, PairState]] = []
        for i in (0, 1):
            self.at(0.0 if i == 0 else self.start_b, functools.partial(self.deliver, i, Tick()))

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self.n += 1
        heapq.heappush(self.q, (t, self.n, fn))

    def deliver(self, i: int, event: Input) -> None:
        node = self.nodes[i]
        if not node.alive:
            return
        for a in node.m.transition(event, self.now):
            if isinstance(a, TakeVIPs):
                node.holding = True
                node.takes.append(self.now)
            elif isinstance(a, ReleaseVIPs):
                node.holding = False
            elif isinstance(a, StateChange):
                self.transitions.append((self.now, i, a.new))
            elif isinstance(a, Send):
                for _ in range(a.copies):
                    data = node.ep.seal(a.body, vips=[VIP] if node.holding else [],
                                        now=self.now)
                    if not self.cut and self.rng.random() >= self.loss:
                        delay = self.latency + self.rng.random() * self.jitter
                        self.at(self.now + delay, functools.partial(self.receive, 1 - i, data))
        node.token += 1
        if node.m.next_wakeup is not None:
            tok = node.token
            self.at(max(node.m.next_wakeup, self.now), lambda: self.tick(i, tok))

    def tick(self, i: int, token: int) -> None:
        if self.nodes[i].token == token:
            self.deliver(i, Tick())

    def receive(self, i: int, data: bytes) -> None:
        msg = self.nodes[i].ep.open(data)
        if msg is not None:
            self.deliver(i, PeerMessage(msg))

    def kill(self, i: int) -> None:
        self.nodes[i].alive = False
        self.nodes[i].holding = False                   # the host is gone, and its VIP

    def run(self, until: float) -> None:
        while self.q and self.q[0][0] <= until:
            t, _, fn = heapq.heappop(self.q)
            self.now = t
            fn()
            both = self.nodes[0].holding and self.nodes[1].holding
            if both and self.both_since is None:
                self.both_since = t
                self.overlaps += 1
                self.overlap_cut = False
            if both and self.cut:
                self.overlap_cut = True
            elif not both and self.both_since is not None:
                span = t - self.both_since
                self.overlap += span
                if self.overlap_cut:
                    self.partition_overlap += span
                self.both_since = None
        self.now = until

    def takes_by(self, i: int, after: float = 0.0) -> list[float]:
        return [t for t in self.nodes[i].takes if t > after]


def test_sim_boot_settles_with_one_holder() -> None:
    for seed in range(10):
        sim = Sim(seed, loss=0.1, start_b=seed * 0.13)
        sim.run(5.0)
        a, b = sim.nodes
        assert (a.m.state, b.m.state) == (S.MASTER, S.BACKUP), seed
        assert a.holding and not b.holding and sim.overlaps == 0


@pytest.mark.parametrize("loss, seconds", [(0.10, 600.0), (0.30, 600.0)])
def test_sim_false_failovers_under_random_loss(loss: float, seconds: float,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    sim = Sim(seed=7, loss=loss)
    sim.run(3.0)
    assert sim.nodes[0].m.state is S.MASTER
    sim.run(seconds + 3.0)
    a, b = sim.nodes
    false_failovers = len(sim.takes_by(1))
    suspicions = b.m.counters["suspicions"]
    with capsys.disabled():
        print(f"\n  loss {loss:.0%}, {seconds:.0f} s: {suspicions} suspicions, "
              f"{false_failovers} false failovers, {sim.overlaps} overlaps "
              f"({sim.overlap * 1000:.0f} ms in all), drops at B {b.ep.drops.as_dict()}")
    if loss <= 0.10:
        assert false_failovers == 0
        assert sim.overlaps == 0, "both held the VIP without a partition"
    else:
        # each false failover is a split brain healed at the next word (rank: vm01 keeps)
        assert false_failovers <= 5
        assert sim.overlaps <= false_failovers
        assert sim.overlap <= false_failovers * 0.5
    assert a.m.state is S.MASTER and a.holding


@pytest.mark.parametrize("loss", [0.0, 0.10])
def test_sim_detection_time_when_the_master_dies(loss: float,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    times: list[float] = []
    rng = random.Random(99)
    for trial in range(150):
        sim = Sim(seed=1000 + trial, loss=loss)
        sim.run(2.5)
        assert sim.nodes[0].m.state is S.MASTER
        death = 2.5 + rng.random()
        sim.run(death)
        sim.kill(0)
        sim.run(death + 2.0)
        takes = sim.takes_by(1, death)
        assert len(takes) == 1 and sim.overlaps == 0
        times.append(takes[0] - death)
    med = statistics.median(times)
    with capsys.disabled():
        print(f"\n  loss {loss:.0%}: detection-to-takeover median {med * 1000:.0f} ms, "
              f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
              f"({len(times)} trials)")
    assert med <= 0.2
    assert max(times) <= 0.25


def test_sim_partition_heals_to_one_holder() -> None:
    sim = Sim(seed=3, loss=0.0)
    sim.run(3.0)
    sim.cut = True
    sim.run(5.0)
    assert all(n.holding for n in sim.nodes)            # a real partition: both serve
    sim.cut = False
    sim.run(5.3)
    a, b = sim.nodes
    assert a.holding and not b.holding
    assert (a.m.state, b.m.state) == (S.MASTER, S.BACKUP)
    assert sim.overlap == pytest.approx(sim.partition_overlap)


def test_sim_graceful_failover_and_switchovers_never_overlap() -> None:
    sim = Sim(seed=5, loss=0.1,
              cfg_a=PairConfig(node="vm01", priority=150, preempt=True, preempt_delay=2.0,
                               min_healthy=1.0))
    sim.run(3.0)
    a, b = sim.nodes
    # A goes unhealthy: B takes at once (goodbye), no dead time
    sim.at(3.0, lambda: sim.deliver(0, LocalHealth(False, "apache down")))
    sim.run(3.05)
    assert b.holding and not a.holding and b.m.state is S.MASTER
    assert sim.takes_by(1)[0] - 3.0 < 0.01
    # A healthy again: BACKUP, then preempt pulls the role back after the delays
    sim.at(4.0, lambda: sim.deliver(0, LocalHealth(True)))
    sim.run(4.05)
    assert a.m.state is S.BACKUP
    sim.run(7.0)
    assert state_of(a.m) is S.MASTER and a.holding and not b.holding
    # operator moves it to B (offer from A), then pulls it back from A's side
    sim.at(8.0, lambda: sim.deliver(0, SwitchoverCommand()))
    sim.run(8.5)
    assert b.m.state is S.MASTER and b.holding and not a.holding
    sim.run(20.0)
    assert b.m.state is S.MASTER, "preempt must be held back after the operator's move"
    sim.at(20.0, lambda: sim.deliver(0, SwitchoverCommand()))
    sim.run(20.5)
    assert a.m.state is S.MASTER and a.holding and not b.holding
    assert sim.overlaps == 0
    # and a shutdown hands over at once
    sim.at(21.0, lambda: sim.deliver(0, Shutdown()))
    sim.run(21.05)
    assert b.holding and a.m.state is S.STOPPED and sim.overlaps == 0


def test_sim_paused_master_gives_way_on_resume() -> None:
    sim = Sim(seed=11, loss=0.0)
    sim.run(3.0)
    a, b = sim.nodes
    a.alive = False                                      # paused: no ticks, no packets
    sim.run(6.0)
    assert b.m.state is S.MASTER and b.holding
    a.alive = True
    sim.at(6.0, lambda: sim.deliver(0, ClockJump(3.0)))
    sim.run(6.1)
    assert a.m.state is S.BACKUP and not a.holding and b.holding
    # the pause window is the only overlap (a paused VM holds but cannot answer)
    assert sim.overlaps == 1 and 3.0 - 0.22 <= sim.overlap <= 3.0 - 0.1
