"""Incident timelines: what happened, when, and how long each phase took.

An incident runs from the first failing observation to recovery.  The trackers here
turn what the state machines already say (their inputs and their actions) into
journal records (``_journal``), keep the incident id, and at recovery compute the
phases and feed them to the metrics (``_metrics``).  Reading is for
``guardian events``: ``load_events`` + ``render_events``.

Record kinds
------------
=====================  ===================================================================
verdict                a probe verdict (the first failing one; later only on a change)
unit_down              the service manager or a pidfd says the process is gone
threshold              the machine decided the service is down (fall reached, unit dead):
                       left UP/FAILING/STARTING/RECOVERING for BACKOFF, RESTARTING,
                       EXHAUSTED or BLOCKED; for a pair: the peer declared dead
restart_issued         guardian asked the backend to restart (attempt/budget)
restart_done           ... and it did (detail: unit, time, new pid)
restart_failed         ... and it could not
ladder                 a ladder rung ran (action: failover, escalate, exec, alert)
escalation_<outcome>   escalation to dom0: sent, accepted, refused, failed
state                  any other state change (service or pair), in or out of an incident
deps                   required services went down or came back (inside an incident)
would_do               observe mode: what the ladder would have done (the first one of an
                       incident is its ``threshold``)
suspect                pair: the peer went quiet; probing it
fence                  pair: asked dom0 to fence the peer
takeover               pair: the machine decided to take the VIPs
vip_taken              pair: the VIPs are configured
vip_released           pair: the VIPs were removed
announce               pair: the first gratuitous ARP / NA round of a takeover (or a
                       re-announcement)
converged              pair: a neighbour was shown to map the VIP to us
notice                 pair: split brain, clock jump, fence failure, switchover, ...
recovered              the end of the incident: serving again
closed                 the end of an incident that did not end in a recovery (the peer
                       came back before a takeover, the pair stopped)
resumed                guardian restarted while the incident was open; it goes on
journal                a journal file's header (rotation)
=====================  ===================================================================

Phases
------
Four boundaries split an incident; missing ones fall on the next one present, so the
phases always add up to the total::

    start ──detect──▶ threshold ──decide──▶ first restart_issued / ladder / takeover
          ──act──▶ last restart_done / restart_failed / vip_taken
          ──serving──▶ serving again

*start* is the incident's first record (the first failing verdict or unit-down; for a
pair, the suspicion).  *Serving again* is the first OK verdict of the run of OKs that
brought the service UP (``serving_t_ms`` in the ``recovered`` record), so the ``rise``
confirmation is not outage; it is reported apart as ``confirm``.  For a pair it is the
first announcement after the VIPs were configured, or the convergence proof when the
engine checks convergence.  Times within one boot come from ``t_ms`` (monotonic);
a record from another boot (a recreated VM) is placed by its wall time.
"""

from __future__ import annotations

import datetime as dt
import json as jsonlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checks import Status, parse_duration
from ipfailover._machine import (
    Action as PairAction,
)
from ipfailover._machine import (
    Fence,
    Notice,
    Reannounce,
    ReleaseVIPs,
    SwitchoverOutcome,
    TakeVIPs,
)
from ipfailover._machine import (
    StateChange as PairStateChange,
)
from ipfailover._states import PairState

from ._journal import DEFAULT_NAME, Journal, ReadStats, Record, read_journal
from ._machine import (
    Action,
    DepsChanged,
    Input,
    Restart,
    RestartFinished,
    RunStep,
    StateChange,
    UnitDown,
    Verdict,
    WouldDo,
)
from ._states import ServiceState

if TYPE_CHECKING:
    from ._metrics import Metrics

S = ServiceState

THRESHOLD_KINDS = frozenset({"threshold"})
DECIDED_KINDS = frozenset({"restart_issued", "ladder", "takeover"})
ACTED_KINDS = frozenset({"restart_done", "restart_failed", "vip_taken"})
CLOSE_KINDS = frozenset({"recovered", "closed"})
#: kept in memory while an incident is open (first of each, last of ACTED_KINDS)
MARK_KINDS = THRESHOLD_KINDS | DECIDED_KINDS | ACTED_KINDS | {"announce", "converged"}
#: leaving a healthy-looking state for one of these is the threshold
DOWN_STATES = frozenset({S.BACKOFF, S.RESTARTING, S.EXHAUSTED, S.BLOCKED})

DEFAULT_RESUME_WINDOW = 600.0
#: a pair notice of one kind is journaled at most this often (seconds)
NOTICE_INTERVAL = 10.0


# ============================================================ phases


@dataclass(frozen=True)
class Phases:
    """Durations in seconds.  ``detect + decide + act + serving == total``;
    ``confirm`` (serving again -> UP confirmed) is not part of the total;
    ``open``: the incident has not ended (the phases run to its last record)."""

    detect: float
    decide: float
    act: float
    serving: float
    total: float
    confirm: float
    open: bool

    def as_dict(self) -> dict[str, Any]:
        return {"detect": self.detect, "decide": self.decide, "act": self.act,
                "serving": self.serving, "total": self.total, "confirm": self.confirm,
                "open": self.open}


def _rel_us(rec: Record, first: Record, key: str = "t_ms") -> int:
    """Microseconds from ``first`` to ``rec`` (its ``key`` time, by default ``t_ms``):
    by the monotonic clock within one boot, by wall time across boots."""
    t_ms = float(rec.get("t_ms", 0.0))
    value_ms = float(rec.get(key, t_ms))
    if rec.get("boot") == first.get("boot"):
        return round((value_ms - float(first.get("t_ms", 0.0))) * 1000.0)
    wall = float(rec.get("wall", 0.0)) + (value_ms - t_ms) / 1000.0
    return round((wall - float(first.get("wall", 0.0))) * 1e6)


def phases(records: Sequence[Record]) -> Phases:
    """The phases of one incident from its records, in order (see the module doc)."""
    recs = [r for r in records if r.get("kind") != "journal"]
    if not recs:
        return Phases(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, True)
    first = recs[0]
    threshold = decided = acted = None
    close: Record | None = None
    last = 0
    for r in recs:
        kind = r.get("kind")
        t = _rel_us(r, first)
        last = max(last, t)
        if kind in CLOSE_KINDS:
            close = r
            break
        if kind in THRESHOLD_KINDS and threshold is None:
            threshold = t
        elif kind in DECIDED_KINDS and decided is None:
            decided = t
        elif kind in ACTED_KINDS:
            acted = t
    confirm = 0
    if close is not None:
        closed_at = _rel_us(close, first)
        end = _rel_us(close, first, "serving_t_ms") if "serving_t_ms" in close else closed_at
        end = max(0, min(end, closed_at))
        confirm = closed_at - end
    else:
        end = last
    b3 = acted if acted is not None else end
    b2 = decided if decided is not None else b3
    b1 = threshold if threshold is not None else b2
    b1 = min(max(0, b1), end)
    b2 = min(max(b1, b2), end)
    b3 = min(max(b2, b3), end)
    return Phases(detect=b1 / 1e6, decide=(b2 - b1) / 1e6, act=(b3 - b2) / 1e6,
                  serving=(end - b3) / 1e6, total=end / 1e6, confirm=confirm / 1e6,
                  open=close is None)


# ============================================================ trackers


class IncidentTracker:
    """One subject's incidents (a service, or a failover group): open, step, close.

    The subclasses know their state machine; this base knows the journal."""

    subject_key = "service"

    def __init__(self, name: str, journal: Journal, metrics: Metrics | None = None) -> None:
        self.name = name
        self.journal = journal
        self.metrics = metrics
        self.incident: int | None = None
        self.incidents = 0          # opened by this tracker
        self.last_phases: Phases | None = None
        self._marks: list[Record] = []

    @property
    def open_now(self) -> bool:
        return self.incident is not None

    def record(self, now: float, kind: str, reason: str, **extra: Any) -> Record:
        """A journal record for this subject (in the open incident, if any)."""
        subject = {self.subject_key: self.name}
        rec = self.journal.append(kind, reason, now=now, incident=self.incident,
                                  **subject, **extra)
        if self.incident is not None:
            self._mark(rec)
        return rec

    def _mark(self, rec: Record) -> None:
        kind = rec.get("kind")
        if not self._marks:
            self._marks.append(rec)          # the start
        elif kind in ACTED_KINDS:
            self._marks = [self._marks[0]] + [m for m in self._marks[1:]
                                              if m.get("kind") not in ACTED_KINDS]
            self._marks.append(rec)
        elif kind in MARK_KINDS and not any(m.get("kind") == kind for m in self._marks[1:]):
            self._marks.append(rec)

    def open(self, now: float, kind: str, reason: str, **extra: Any) -> int:
        """Start an incident with its first record; returns its id."""
        if self.incident is not None:
            self.record(now, kind, reason, **extra)
            return self.incident
        self.incident = self.journal.new_incident()
        self.incidents += 1
        self._marks = []
        self.record(now, kind, reason, **extra)
        return self.incident

    def close(self, now: float, reason: str, *, kind: str = "recovered",
              serving_at: float | None = None, **extra: Any) -> Phases | None:
        """End the open incident (``serving_at``: when it was serving again, if
        before ``now``); returns its phases, None when none was open."""
        if self.incident is None:
            return None
        if serving_at is not None:
            extra["serving_t_ms"] = round(min(serving_at, now) * 1000.0, 3)
        rec = self.record(now, kind, reason, **extra)
        result = phases([*self._marks, rec])
        self.last_phases = result
        self.incident = None
        self._marks = []
        self.journal.sync()
        self._closed(result, rec)
        return result

    def _closed(self, result: Phases, rec: Record) -> None:
        """For the subclasses: the incident ended."""

    def resume(self, records: Sequence[Record], now: float, why: str) -> None:
        """Go on with an incident found open in the journal (``open_incidents``)."""
        if not records or self.incident is not None:
            return
        inc = records[0].get("incident")
        if not isinstance(inc, int):
            return
        self.incident = inc
        self._marks = []
        for r in records:
            self._mark(r)
        self.record(now, "resumed", why)

    def stopping(self, now: float) -> None:
        """The daemon stops: say so in an open incident (it may be resumed)."""
        if self.incident is not None:
            self.record(now, "state", "guardian stopping; the incident is still open")


class ServiceTracker(IncidentTracker):
    """A service's incidents, fed from ``ServiceRunner._drive``::

        before = self.machine.state
        actions = self.machine.transition(item, now)
        tracker.feed(item, before, actions, now)

    Records the verdicts that matter (the first failing one, then changes per
    check), the threshold, restarts and their results, ladder rungs, other state
    changes; closes at UP.  With ``metrics``: state, restarts, rungs, phases."""

    subject_key = "service"

    def __init__(self, name: str, journal: Journal, metrics: Metrics | None = None) -> None:
        super().__init__(name, journal, metrics)
        self._threshold_seen = False
        self._last_status: dict[str, str] = {}
        self._streak: dict[str, float | None] = {}   # first OK of the current run of OKs
        self._pending: tuple[float, str, str, dict[str, Any]] | None = None

    # ---------------------------------------------------------------- feed
    def feed(self, item: Input, before: ServiceState, actions: Sequence[Action],
             now: float) -> None:
        if isinstance(item, Verdict):
            self._verdict(item, before, now)
        elif isinstance(item, UnitDown):
            self._unit_down(item, before, now)
        elif isinstance(item, RestartFinished):
            self._restart_finished(item, now)
        elif isinstance(item, DepsChanged) and self.incident is not None:
            down = ", ".join(item.down)
            self.record(now, "deps", f"required service(s) down: {down}" if down
                        else "required services back", down=list(item.down))
        for a in actions:
            self._action(a, now)

    def escalation(self, now: float, outcome: str, detail: str = "", **extra: Any) -> None:
        """An escalation to dom0 was sent / accepted / refused / failed."""
        self.record(now, f"escalation_{outcome}", detail, **extra)
        if self.metrics is not None:
            self.metrics.escalation(outcome)
        if outcome == "sent":
            self.journal.sync()

    # ---------------------------------------------------------------- inputs
    def _verdict(self, v: Verdict, before: ServiceState, now: float) -> None:
        status = v.status.value
        ok = v.status in (Status.OK, Status.WARNING)
        failing = v.status is Status.CRITICAL
        if ok:
            if self._streak.get(v.check) is None:
                self._streak[v.check] = now
        elif failing:
            self._streak[v.check] = None
        reason = f"{status} {v.check}: {v.detail}"
        extra: dict[str, Any] = {"check": v.check, "status": status}
        if self.incident is not None:
            if self._last_status.get(v.check) != status:
                self._last_status[v.check] = status
                self.record(now, "verdict", reason, **extra)
        elif failing:
            if before is S.UP:
                self._last_status[v.check] = status
                self.open(now, "verdict", reason, **extra)
            elif self._pending is None:
                self._pending = (now, "verdict", reason, extra)
        elif ok and self._pending is not None and all(
                t is not None for t in self._streak.values()):
            self._pending = None      # it passed again before anything was decided

    def _unit_down(self, u: UnitDown, before: ServiceState, now: float) -> None:
        for check in self._streak:
            self._streak[check] = None
        if self.incident is not None:
            self.record(now, "unit_down", u.detail)
        elif before in (S.UP, S.FAILING):
            self.open(now, "unit_down", u.detail)
        elif self._pending is None:
            self._pending = (now, "unit_down", u.detail, {})

    def _restart_finished(self, r: RestartFinished, now: float) -> None:
        for check in self._streak:        # the machine starts counting afresh
            self._streak[check] = None
        self._last_status.clear()
        self.record(now, "restart_done" if r.ok else "restart_failed", r.detail)
        if self.metrics is not None:
            self.metrics.restart(self.name, r.ok)

    # ---------------------------------------------------------------- actions
    def _ensure_open(self, now: float, kind: str, reason: str, **extra: Any) -> bool:
        """Open (with the remembered first failure, if any); True if this record
        was the opening one."""
        if self.incident is not None:
            return False
        if self._pending is not None:
            t, pkind, preason, pextra = self._pending
            self._pending = None
            if pkind == "verdict":
                self._last_status[str(pextra["check"])] = str(pextra["status"])
            self.open(t, pkind, preason, **pextra)
            return False
        self.open(now, kind, reason, **extra)
        return True

    def _action(self, a: Action, now: float) -> None:
        if isinstance(a, StateChange):
            self._state_change(a, now)
        elif isinstance(a, Restart):
            reason = f"attempt {a.attempt}/{a.budget}: {a.reason}"
            extra = {"attempt": a.attempt, "budget": a.budget}
            if not self._ensure_open(now, "restart_issued", reason, **extra):
                self.record(now, "restart_issued", reason, **extra)
        elif isinstance(a, RunStep):
            action = a.step.action.value
            self.record(now, "ladder", f"{action}: {a.reason}", action=action)
            if self.metrics is not None:
                self.metrics.ladder(self.name, action)
        elif isinstance(a, WouldDo):
            reason = f"observe mode, would {a.what}: {a.reason}"
            if not self._threshold_seen:
                self._threshold_seen = True
                if not self._ensure_open(now, "threshold", reason, would=a.what):
                    self.record(now, "threshold", reason, would=a.what)
            else:
                self.record(now, "would_do", reason, would=a.what)

    def _state_change(self, a: StateChange, now: float) -> None:
        old, new = a.old, a.new
        if self.metrics is not None:
            self.metrics.state(self.name, new.value)
        text = f"{old.value} -> {new.value}: {a.reason}"
        fields = {"old": old.value, "new": new.value}
        if new is S.UP:
            self._pending = None
            if self.incident is not None:
                serving = None
                if self._streak and all(t is not None for t in self._streak.values()):
                    serving = max(t for t in self._streak.values() if t is not None)
                self.close(now, text, serving_at=serving, **fields)
            else:
                self.record(now, "state", text, **fields)
            return
        if new in DOWN_STATES and not self._threshold_seen:
            self._threshold_seen = True
            if not self._ensure_open(now, "threshold", text, **fields):
                self.record(now, "threshold", text, **fields)
            return
        if new is S.RESTARTING or (new is S.RECOVERING and old is S.RESTARTING):
            return   # restart_issued / restart_done say it
        if new is S.FAILING and self._ensure_open(now, "state", text, **fields):
            return
        self.record(now, "state", text, **fields)

    def _closed(self, result: Phases, rec: Record) -> None:
        self._threshold_seen = False
        self._last_status.clear()
        if self.metrics is not None:
            self.metrics.incident_phases(self.name, result)

    def resume(self, records: Sequence[Record], now: float, why: str) -> None:
        super().resume(records, now, why)
        if self.incident is not None:
            self._threshold_seen = any(r.get("kind") == "threshold" for r in records)


class PairTracker(IncidentTracker):
    """A failover group's takeovers, fed from the pair engine::

        actions = m.transition(item, now)      # PairEngine._deliver
        tracker.feed(actions, now)
        ...
        tracker.vips_configured(t)             # PairEngine._do_take, VIPs added
        tracker.announced(t)                   # ... first GARP/NA round sent
        tracker.converged(t, ok)               # only if the engine checks convergence

    An incident opens when the peer is declared dead while this node is BACKUP or
    FAULT (back-dated to the suspicion), or at a takeover from BACKUP or FAULT
    without one (the master reported FAULT; a switchover).  It closes at the first
    announcement of the takeover (``convergence=False``), or when convergence is
    confirmed or given up (``convergence=True``); it ends as ``closed`` if the peer
    comes back before a takeover, the VIPs are released, or the pair stops.  Role
    changes, releases and notices are recorded too, inside an incident or not.
    With ``metrics``: the role gauge and the failover phase histograms."""

    subject_key = "group"

    def __init__(self, name: str, journal: Journal, metrics: Metrics | None = None, *,
                 convergence: bool = False) -> None:
        super().__init__(name, journal, metrics)
        self.convergence = convergence
        self._suspect: tuple[float, str] | None = None
        self._took = False
        self._announce_due = False
        self._announced_at: float | None = None
        self._notice_at: dict[str, float] = {}
        self.role: PairState | None = None

    def feed(self, actions: Iterable[PairAction], now: float) -> None:
        for a in actions:
            if isinstance(a, Notice):
                self._notice(a, now)
            elif isinstance(a, PairStateChange):
                self.role = a.new
                if self.metrics is not None:
                    self.metrics.pair_role(self.name, a.new.value)
                self.record(now, "state", f"{a.old.value} -> {a.new.value}: {a.reason}",
                            old=a.old.value, new=a.new.value)
                if a.new is PairState.STOPPED:
                    self.close(now, "the pair stopped", kind="closed")
            elif isinstance(a, TakeVIPs):
                if self.incident is None and self.role in (PairState.BACKUP, PairState.FAULT):
                    self.open(now, "takeover", a.reason)   # e.g. the master said FAULT
                else:
                    self.record(now, "takeover", a.reason)
                self._took = self.incident is not None
                self._announce_due = True
            elif isinstance(a, ReleaseVIPs):
                self._announce_due = False
                self.record(now, "vip_released", a.reason)
                if self.incident is not None:
                    self.close(now, f"released the VIPs: {a.reason}", kind="closed")
            elif isinstance(a, Reannounce):
                self.record(now, "announce", f"re-announce: {a.reason}")
            elif isinstance(a, Fence):
                self.record(now, "fence", a.reason, peer=a.peer)
            elif isinstance(a, SwitchoverOutcome):
                self.record(now, "notice", f"switchover {'done' if a.ok else 'ended'}: "
                            f"{a.detail}", notice="switchover", ok=a.ok)

    def _notice(self, a: Notice, now: float) -> None:
        if a.kind == "suspect" and self.incident is None and self._suspect is None:
            self._suspect = (now, a.detail)
        if a.kind in ("peer-alive", "peer", "peer-restarted"):
            self._suspect = None
            if self.incident is not None and not self._took:
                self.close(now, f"peer back before a takeover: {a.detail}", kind="closed")
        if a.kind == "suspect":
            pass
        elif a.kind == "peer-dead" and self.incident is None and self.role not in (
                PairState.BACKUP, PairState.FAULT):
            # master: the standby died; init: nobody there at start.  Worth a line,
            # not an outage.
            self._suspect = None
            self.record(now, "notice", f"{a.kind}: {a.detail}", notice=a.kind)
        elif a.kind == "peer-dead":
            if self.incident is None:
                if self._suspect is not None:
                    self.open(self._suspect[0], "suspect", self._suspect[1])
                else:
                    self.open(now, "threshold", a.detail)
                    self._suspect = None
                    return
            self._suspect = None
            self.record(now, "threshold", a.detail)
        else:
            if a.kind == "peer-alive":
                return    # follows every suspicion at packet loss: too common to journal
            last = self._notice_at.get(a.kind)
            if last is not None and now - last < NOTICE_INTERVAL:
                return    # e.g. foreign-node comes with every packet of a stray node
            self._notice_at[a.kind] = now
            self.record(now, "notice", f"{a.kind}: {a.detail}", notice=a.kind)

    def vips_configured(self, now: float, detail: str = "VIPs configured") -> None:
        self.record(now, "vip_taken", detail)

    def announced(self, now: float, detail: str = "first announcement sent") -> None:
        """The first announcement round of a takeover (later rounds are ignored)."""
        if not self._announce_due:
            return
        self._announce_due = False
        self._announced_at = now
        self.record(now, "announce", detail)
        if self.incident is not None and not self.convergence:
            self.close(now, "serving: VIPs configured and announced", serving_at=now)

    def converged(self, now: float, ok: bool, detail: str = "") -> None:
        self.record(now, "converged", detail or ("neighbours map the VIPs to us" if ok
                                                  else "convergence not shown"), ok=ok)
        if self.incident is not None and self.convergence:
            serving = now if ok else self._announced_at
            self.close(now, "serving: convergence " + ("confirmed" if ok else "not shown"),
                       serving_at=serving)

    def close(self, now: float, reason: str, *, kind: str = "recovered",
              serving_at: float | None = None, **extra: Any) -> Phases | None:
        marks = list(self._marks)
        result = super().close(now, reason, kind=kind, serving_at=serving_at, **extra)
        self._took = False
        if result is not None and self.metrics is not None and marks:
            self._failover_metrics(marks)
        return result

    def _failover_metrics(self, marks: list[Record]) -> None:
        assert self.metrics is not None
        first = marks[0]
        at: dict[str, int] = {}
        for m in marks:
            kind = str(m.get("kind"))
            if kind == "converged" and not m.get("ok"):
                continue
            at.setdefault(kind, _rel_us(m, first))
        dead = at.get("threshold")
        if dead is None:
            return
        self.metrics.failover_phase(self.name, "detection", dead / 1e6)
        for kind, phase in (("vip_taken", "vip_configured"), ("announce", "first_announcement"),
                            ("converged", "convergence")):
            if kind in at and at[kind] >= dead:
                self.metrics.failover_phase(self.name, phase, (at[kind] - dead) / 1e6)


# ============================================================ the daemon's view


def open_incidents(records: Iterable[Record], *, now_wall: float,
                   max_age: float = DEFAULT_RESUME_WINDOW) -> dict[tuple[str, str], list[Record]]:
    """Incidents without an end whose last record is at most ``max_age`` seconds old,
    by ``("service", name)`` / ``("group", name)`` (the latest one per subject)."""
    by_id: dict[int, list[Record]] = {}
    ended: set[int] = set()
    for r in records:
        inc = r.get("incident")
        if not isinstance(inc, int):
            continue
        by_id.setdefault(inc, []).append(r)
        if r.get("kind") in CLOSE_KINDS:
            ended.add(inc)
    out: dict[tuple[str, str], list[Record]] = {}
    for inc in sorted(by_id):
        if inc in ended:
            continue
        recs = by_id[inc]
        first, last = recs[0], recs[-1]
        if now_wall - float(last.get("wall", 0.0)) > max_age:
            continue
        for key in ("service", "group"):
            if isinstance(first.get(key), str):
                out[(key, first[key])] = recs
                break
    return out


class Timeline:
    """The daemon's trackers over one journal: ``service(name)``, ``group(name)``.

    At construction it reads the journal once for incidents left open by an earlier
    run (a daemon restart, a VM recreated by dom0) within ``resume_window`` seconds,
    and the tracker of that subject resumes it."""

    def __init__(self, journal: Journal, metrics: Metrics | None = None, *,
                 resume_window: float = DEFAULT_RESUME_WINDOW) -> None:
        self.journal = journal
        self.metrics = metrics
        self.services: dict[str, ServiceTracker] = {}
        self.groups: dict[str, PairTracker] = {}
        self._resumable = open_incidents(journal.read(), now_wall=journal.wall_clock(),
                                         max_age=resume_window)

    def _resume(self, tracker: IncidentTracker, key: tuple[str, str]) -> None:
        records = self._resumable.pop(key, None)
        if not records:
            return
        same_boot = records[-1].get("boot") == self.journal.boot
        tracker.resume(records, self.journal.clock(),
                       "guardian restarted; the incident goes on" if same_boot
                       else "guardian started after a reboot; the incident goes on")

    def service(self, name: str) -> ServiceTracker:
        tracker = self.services.get(name)
        if tracker is None:
            tracker = self.services[name] = ServiceTracker(name, self.journal, self.metrics)
            self._resume(tracker, ("service", name))
        return tracker

    def group(self, name: str, *, convergence: bool = False) -> PairTracker:
        tracker = self.groups.get(name)
        if tracker is None:
            tracker = self.groups[name] = PairTracker(name, self.journal, self.metrics,
                                                      convergence=convergence)
            self._resume(tracker, ("group", name))
        return tracker

    def close(self, now: float | None = None) -> None:
        """At shutdown: note open incidents, fsync and close the journal."""
        t = self.journal.clock() if now is None else now
        for tracker in [*self.services.values(), *self.groups.values()]:
            tracker.stopping(t)
        self.journal.close()


# ============================================================ reading: guardian events


@dataclass
class Incident:
    id: int
    records: list[Record]

    @property
    def subject(self) -> tuple[str, str]:
        first = self.records[0]
        for key in ("service", "group"):
            if isinstance(first.get(key), str):
                return key, first[key]
        return "service", "?"

    @property
    def start_wall(self) -> float:
        return float(self.records[0].get("wall", 0.0))

    def phases(self) -> Phases:
        return phases(self.records)

    def as_dict(self) -> dict[str, Any]:
        key, name = self.subject
        p = self.phases()
        return {"incident": self.id, key: name, "start": self.start_wall, "open": p.open,
                "phases": p.as_dict(), "records": self.records}


def split_incidents(records: Iterable[Record]) -> tuple[list[Incident], list[Record]]:
    """Incidents (ordered by their start) and the records outside any incident;
    journal headers are left out."""
    by_id: dict[int, Incident] = {}
    other: list[Record] = []
    for r in records:
        if r.get("kind") == "journal":
            continue
        inc = r.get("incident")
        if isinstance(inc, int):
            by_id.setdefault(inc, Incident(inc, [])).records.append(r)
        else:
            other.append(r)
    incidents = sorted(by_id.values(), key=lambda i: (i.start_wall, i.id))
    return incidents, other


def load_events(directory: str | Path, since: float | None = None,
                service: str | None = None, *, name: str = DEFAULT_NAME,
                stats: ReadStats | None = None) -> list[Record]:
    """What ``guardian events`` shows: records of ``service`` (a service or group)
    at or after ``since``, plus the whole of every incident that has a record then
    (an incident that began before ``since`` is shown from its start)."""
    records = list(read_journal(directory, None, service, name=name, stats=stats))
    if since is None:
        return records
    keep_ids = {r["incident"] for r in records
                if isinstance(r.get("incident"), int) and float(r.get("wall", 0.0)) >= since}
    return [r for r in records
            if (r.get("incident") in keep_ids) or (not isinstance(r.get("incident"), int)
                                                   and float(r.get("wall", 0.0)) >= since)]


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: a duration ago ("10m", "2h", "1d", "90"), a local date and time
    ("2024-05-01 12:00", "2024-05-01T12:00:00+02:00") or a unix time; -> unix time."""
    now = time.time() if now is None else now
    t = text.strip()
    try:
        value = float(t)
    except ValueError:
        value = None
    if value is not None and value >= 1e9:
        return value
    try:
        return now - parse_duration(t)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(t).timestamp()
    except ValueError:
        raise ValueError(f"--since {text!r}: give a time ago (\"10m\", \"2h\", \"1d\"), a date "
                         "and time (\"2024-05-01 12:00\") or a unix time") from None


def _wall(ts: float) -> str:
    t = time.localtime(ts)
    return time.strftime("%Y-%m-%d %H:%M:%S", t) + f".{int(round(ts * 1000)) % 1000:03d}"


def _secs(s: float) -> str:
    return f"{s:.3f} s"


def format_phases(p: Phases) -> str:
    line = (f"detect {_secs(p.detect)} -> decide {_secs(p.decide)} -> act {_secs(p.act)} "
            f"-> serving again {_secs(p.serving)} = {_secs(p.total)}")
    if p.open:
        return line + " so far (still open)"
    if p.confirm > 0:
        line += f"; up confirmed {_secs(p.confirm)} later"
    return line


def format_timeline(records: Sequence[Record]) -> str:
    """One incident, readable::

        incident #7  service apache2  2024-05-01 12:00:00.123  recovered after 0.132 s
             +0.000 s  unit_down       supervisord:apache2: process 4242 exited
             ...
          phases: detect 0.000 s -> decide 0.000 s -> act 0.031 s -> serving again ...
    """
    recs = [r for r in records if r.get("kind") != "journal"]
    if not recs:
        return ""
    first = recs[0]
    inc = Incident(int(first.get("incident", 0) or 0), recs)
    key, name = inc.subject
    p = phases(recs)
    end = "still open" if p.open else (
        f"{recs[-1].get('kind')} after {_secs(p.total)}")
    lines = [f"incident #{inc.id}  {key} {name}  {_wall(inc.start_wall)}  {end}"]
    boot = first.get("boot")
    for r in recs:
        rel = _rel_us(r, first) / 1e6
        mark = " (after a reboot)" if r.get("boot") != boot else ""
        lines.append(f"  {rel:+9.3f} s  {str(r.get('kind', '?')):<18} "
                     f"{r.get('reason', '')}{mark}")
    lines.append(f"  phases: {format_phases(p)}")
    return "\n".join(lines)


def format_event(r: Record) -> str:
    subject = r.get("service") or r.get("group") or "-"
    return f"{_wall(float(r.get('wall', 0.0)))}  {subject}  {r.get('kind', '?')}  " \
           f"{r.get('reason', '')}"


def render_events(records: Iterable[Record], as_json: bool = False) -> str:
    """``guardian events`` output: incidents as timelines with their phases, other
    records as single lines, in time order; or one JSON document."""
    incidents, other = split_incidents(records)
    if as_json:
        return jsonlib.dumps({"incidents": [i.as_dict() for i in incidents], "events": other},
                             indent=2, ensure_ascii=False)
    blocks: list[tuple[float, str]] = [(i.start_wall, format_timeline(i.records))
                                       for i in incidents]
    blocks += [(float(r.get("wall", 0.0)), format_event(r)) for r in other]
    blocks.sort(key=lambda b: b[0])
    if not blocks:
        return "no events recorded"
    out: list[str] = []
    prev_multi = False
    for _, text in blocks:
        multi = "\n" in text
        if out and (multi or prev_multi):
            out.append("")
        out.append(text)
        prev_multi = multi
    return "\n".join(out)


def events_command(directory: str | Path, since: str | None = None,
                   service: str | None = None, as_json: bool = False) -> str:
    """``guardian events [--since T] [--service S] [--json]`` in one call: the text
    to print.  Raises ``ValueError`` for a bad ``--since`` (say it, exit 2)."""
    since_ts = parse_since(since) if since is not None else None
    stats = ReadStats()
    records = load_events(directory, since_ts, service, stats=stats)
    out = render_events(records, as_json=as_json)
    if stats.torn and not as_json:
        out += f"\n({stats.torn} damaged journal line(s) skipped)"
    return out
