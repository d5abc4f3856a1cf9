"""The decision engine: what to do with an authenticated escalation request.

``decide()`` is pure (state snapshot and clock in, Decision out) and is what the
scenario tables test; ``Engine`` applies decisions to the persistent state, journals
them, and ``Engine.execute()`` carries out an accepted action (blocking: run it in a
worker thread).

Order of the checks for a POST:

1. malformed body -> 400; body ``vm``/``vm_uuid`` not the sender's -> 401;
2. request id already known -> its current state (never a second action);
3. incarnation older than the VM's current one -> 409 ``stale incarnation``;
4. fence-peer naming the sender itself, an unknown VM, or any VM but the sender's
   configured ``peer`` -> 202 ``refused`` (kept);
5. the target VM in maintenance mode -> 202 ``refused`` (kept; decision
   ``maintenance``);
6. an action already running on the target, the backoff interval not over, or
   ``max_actions`` in the ``window`` reached -> 429 with ``retry_after`` (not kept:
   the same id may be sent again later);
7. otherwise accept (202 ``accepted``) and run the action.

The rate limit (``history()``, ``next_allowed()``): the actions on the target in
the last ``window`` count, unless nothing was escalated about it (no accepted or
rate-limited request) for ``healthy_reset`` since its last action: then its history
is forgotten.  With ``n`` actions counted, the next one needs ``max_actions > n``
and ``min_interval * 2**(n-1)`` (at most ``window``) since the last one.

Every refusal (stale, rate-limited, refused, conflict, maintenance, identity
mismatch) and every failed or interrupted action is journaled and handed to the
alert hook (``_alert.Alerter``), which never blocks.

recreate: destroy -> confirm death (state SHUT or ABSENT within ``confirm_timeout``;
otherwise ``failed`` and no create) -> incarnation += 1, persisted -> create -> done.
fence-peer: destroy the peer -> confirm death -> peer incarnation += 1 -> done.

Each step's ``phase`` is persisted before the step runs, so an action that was running
when hostd stopped (a crash, SIGKILL, a reboot of dom0) is **resumed** by the next
hostd (``resumable()``; the server starts them), never done twice:

* ``destroying`` (or not started): destroy again -- destroying a dead domain is a
  no-op -- and go on; the incarnation has not moved yet;
* ``creating`` (death confirmed, incarnation already + 1): if the domain runs, the
  create happened: done; if it is dead, create it; if its state is unknown, ``failed``
  and an alert -- never a second instance;
* ``destroyed`` (fence-peer): done;
* ``restarting`` (a driver-managed restart, Pacemaker): not repeated; ``failed`` and
  an alert (decision ``interrupted``).
"""

from __future__ import annotations

import enum
import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._alert import Alerter
from ._config import PolicySpec, VMSpec
from ._drivers import DomainState, Driver, DriverError
from ._state import Journal, StateStore, read_maintenance

ACTIONS = ("recreate", "fence-peer")
_UUID_RE = re.compile(r"^[0-9a-fA-F-]{8,64}$")
RUNNING_STATES = ("accepted", "in-progress")
#: journal decisions that go to the alert hook (besides failed/interrupted actions)
ALERT_DECISIONS = frozenset({"stale", "rate-limited", "refused", "conflict", "maintenance",
                             "identity-mismatch", "interrupted"})


class Clock(Protocol):
    def wall(self) -> float: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]


class BadRequest(ValueError):
    pass


@dataclass(frozen=True)
class Request:
    request_id: str
    vm: str
    vm_uuid: str
    incarnation: int
    action: str
    peer: str | None
    reason: dict[str, Any]
    sent_at: float

    @property
    def target(self) -> str:
        return self.peer if self.action == "fence-peer" and self.peer else self.vm


def parse_request(body: bytes) -> Request:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("body is not a JSON object")

    def get(key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
        if key not in data or (optional and data[key] is None):
            if optional:
                return None
            raise BadRequest(f"missing {key!r}")
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise BadRequest(f"{key!r} has the wrong type")
        return value

    rid = get("request_id", str)
    if not _UUID_RE.match(rid):
        raise BadRequest("request_id is not a uuid")
    action = get("action", str)
    if action not in ACTIONS:
        raise BadRequest(f"action must be one of {', '.join(ACTIONS)}")
    peer = get("peer", str, optional=True)
    if action == "fence-peer" and not peer:
        raise BadRequest("fence-peer needs 'peer'")
    reason = get("reason", dict)
    incarnation = get("incarnation", int)
    if incarnation < 0:
        raise BadRequest("incarnation is negative")
    return Request(request_id=rid, vm=get("vm", str), vm_uuid=get("vm_uuid", str),
                   incarnation=incarnation, action=action, peer=peer,
                   reason={str(k): v for k, v in reason.items()},
                   sent_at=float(get("sent_at", (int, float))))


class Kind(enum.Enum):
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    STALE = "stale"
    REFUSED = "refused"
    MAINTENANCE = "maintenance"
    RATE_LIMITED = "rate-limited"
    ACCEPT = "accept"


@dataclass(frozen=True)
class Decision:
    kind: Kind
    detail: str = ""
    retry_after: float = 0.0


@dataclass
class Snapshot:
    """What decide() needs to know about the world."""

    vms: frozenset[str]
    incarnations: Mapping[str, int]
    actions: Mapping[str, list[float]]  # wall times of accepted actions, per target VM
    requests: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: wall time of the last accepted or rate-limited escalation, per target VM
    last_requests: Mapping[str, float] = field(default_factory=dict)
    #: VMs in maintenance mode -> {"reason", "since"}
    maintenance: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: each VM's configured pair partner (``[vms.NAME] peer``): the only VM it may fence
    peers: Mapping[str, str | None] = field(default_factory=dict)


def history(actions: list[float], last_request: float | None, policy: PolicySpec,
            now: float) -> list[float]:
    """The actions on one VM that count against the policy, oldest first."""
    h = sorted(t for t in actions if t > now - policy.window)
    if h and policy.healthy_reset > 0:
        quiet_since = max(h[-1], last_request if last_request is not None else h[-1])
        if now - quiet_since >= policy.healthy_reset:
            return []  # healthy long enough: start afresh
    return h


def backoff(n: int, policy: PolicySpec) -> float:
    """The interval needed after the last of ``n`` (>= 1) counted actions."""
    return float(min(policy.min_interval * 2 ** min(max(n - 1, 0), 40), policy.window))


def next_allowed(hist: list[float], policy: PolicySpec, now: float) -> tuple[float, str]:
    """(seconds to wait, why) before the next action on a VM with history ``hist``."""
    if not hist:
        return 0.0, ""
    n = len(hist)
    gap = backoff(n, policy)
    wait = hist[-1] + gap - now
    why = (f"last action {now - hist[-1]:.0f}s ago, {n} in the window: "
           f"{gap:.0f}s needed (min_interval, doubled per action)")
    if n >= policy.max_actions:
        win_wait = hist[-policy.max_actions] + policy.window - now
        if win_wait > wait:
            wait = win_wait
            why = f"{n} actions in {policy.window:.0f}s (max_actions {policy.max_actions})"
    return max(0.0, wait), why


def decide(req: Request, sender: str, snap: Snapshot, policy: PolicySpec,
           now: float) -> Decision:
    known = snap.requests.get(req.request_id)
    if known is not None:
        if known.get("sender") != sender:
            return Decision(Kind.CONFLICT, "request id used by another VM")
        return Decision(Kind.DUPLICATE, "request id seen before")
    current = snap.incarnations.get(sender, 0)
    if req.incarnation < current:
        return Decision(Kind.STALE,
                        f"incarnation {req.incarnation} is older than current {current}")
    if req.action == "fence-peer":
        if req.peer == sender:
            return Decision(Kind.REFUSED, "a VM cannot fence itself (use recreate)")
        if req.peer not in snap.vms:
            return Decision(Kind.REFUSED, f"peer {req.peer!r} is not a configured VM")
        paired = snap.peers.get(sender)
        if paired != req.peer:
            return Decision(Kind.REFUSED, f"{sender} may fence only its configured peer ("
                            + (repr(paired) if paired else "none configured: [vms."
                               f"{sender}] peer") + f"), not {req.peer!r}")
    target = req.target
    maint = snap.maintenance.get(target)
    if maint is not None:
        why = f"{target} is in maintenance mode"
        if maint.get("reason"):
            why += f" ({maint['reason']})"
        return Decision(Kind.MAINTENANCE, why)
    for r in snap.requests.values():
        if r.get("target") == target and r.get("state") in RUNNING_STATES:
            return Decision(Kind.RATE_LIMITED, f"an action on {target} is running",
                            policy.confirm_timeout)
    hist = history(list(snap.actions.get(target, [])), snap.last_requests.get(target),
                   policy, now)
    wait, why = next_allowed(hist, policy, now)
    if wait > 0:
        return Decision(Kind.RATE_LIMITED, f"{target}: {why}", wait)
    return Decision(Kind.ACCEPT, f"{req.action} {target}")


class Engine:
    def __init__(self, vms: Mapping[str, VMSpec], policy: PolicySpec,
                 drivers: Mapping[str, Driver], store: StateStore, journal: Journal,
                 clock: Clock | None = None, *, poll_interval: float = 0.25,
                 alerter: Alerter | None = None) -> None:
        self.vms = dict(vms)
        self.policy = policy
        self.drivers = dict(drivers)
        self.store = store
        self.journal = journal
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.poll_interval = poll_interval
        self.alerter = alerter
        if alerter is not None and alerter.on_failure is None:
            alerter.on_failure = self._alert_failed
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.counters: dict[str, int] = {}
        #: actions a stopped hostd left running, to execute again (``resumable()``)
        self._resume: list[str] = []
        self._recover()

    def _recover(self) -> None:
        """Actions that were running when hostd stopped: resumed from their phase
        (``resumable()``), except a driver-managed restart, which is not repeated."""
        changed = False
        for rid, r in self.store.requests.items():
            if r.get("state") not in RUNNING_STATES:
                continue
            if r.get("phase") == "restarting":
                r["state"] = "failed"
                r["detail"] = ("guardian-hostd restarted during a restart managed by the "
                               "driver; not repeated")
                self._journal("interrupted", r, rid)
                changed = True
                continue
            self._resume.append(rid)
            self._journal("resumed", r, rid, phase=r.get("phase", "queued"))
        if changed:
            self.store.save()

    def resumable(self) -> list[str]:
        """Request ids to ``execute()`` again (once): actions a stopped hostd left
        running.  Each carries on from its persisted phase."""
        out, self._resume = self._resume, []
        return out

    def count(self, name: str) -> None:
        with self._count_lock:
            self.counters[name] = self.counters.get(name, 0) + 1

    def _journal(self, decision: str, r: Mapping[str, Any], rid: str, **extra: Any) -> None:
        rec = {"wall": self.clock.wall(), "decision": decision, "request_id": rid,
               "vm": r.get("sender"), "target": r.get("target"), "action": r.get("action"),
               "reason": r.get("reason"), "outcome": r.get("state"),
               "detail": r.get("detail")}
        rec.update(extra)
        self._record(rec)

    def _record(self, rec: dict[str, Any]) -> None:
        """Journal ``rec``; refusals and failed actions also go to the alert hook."""
        self.journal.append(rec)
        decision = str(rec.get("decision", ""))
        if decision in ALERT_DECISIONS:
            self.count(decision.replace("-", "_"))
            self._alert(decision, rec)
        elif decision == "finished" and rec.get("outcome") == "failed":
            self._alert("failed", rec)

    def _alert(self, event: str, rec: Mapping[str, Any]) -> None:
        if self.alerter is None:
            return
        target = rec.get("target")
        vm = target if target in self.vms else (rec.get("vm") or "")  # not an unknown peer
        self.alerter.alert({**rec, "event": event, "vm": vm, "sender": rec.get("vm")})

    def _alert_failed(self, event: Mapping[str, Any], why: str) -> None:
        self.count("alert_failures")
        self.journal.append({"wall": self.clock.wall(), "decision": "alert-failed",
                             "vm": event.get("vm"), "event": event.get("event"),
                             "request_id": event.get("request_id"), "detail": why})

    @staticmethod
    def _view(rid: str, r: Mapping[str, Any]) -> dict[str, Any]:
        return {"request_id": rid, "state": r["state"], "detail": r.get("detail", ""),
                "decision": r.get("decision", ""), "incarnation": r.get("incarnation")}

    def snapshot(self) -> Snapshot:
        return Snapshot(
            vms=frozenset(self.vms),
            incarnations={n: self.store.incarnation(n) for n in self.vms},
            actions={n: self.store.actions(n) for n in self.vms},
            requests=self.store.requests,
            last_requests={n: t for n in self.vms
                           if (t := self.store.last_request(n)) is not None},
            maintenance=read_maintenance(self.store.dir),
            peers={n: vm.peer for n, vm in self.vms.items()},
        )

    def submit(self, sender: str, body: bytes) -> tuple[Reply, str | None]:
        """Decide on a POST; returns the reply and the request id to execute, if any."""
        try:
            req = parse_request(body)
        except BadRequest as exc:
            self.count("bad_requests")
            return Reply(400, {"error": str(exc)}), None
        spec = self.vms[sender]
        if req.vm != sender or req.vm_uuid != spec.uuid:
            self._record({"wall": self.clock.wall(), "decision": "identity-mismatch",
                          "vm": sender, "claimed_vm": req.vm, "claimed_uuid": req.vm_uuid,
                          "request_id": req.request_id, "outcome": "unauthorized",
                          "detail": f"body names {req.vm!r} ({req.vm_uuid!r})"})
            return Reply(401, {"error": "vm does not match the key"}), None
        with self._lock:
            now = self.clock.wall()
            d = decide(req, sender, self.snapshot(), self.policy, now)
            base = {"sender": sender, "target": req.target, "action": req.action,
                    "reason": req.reason, "incarnation_sent": req.incarnation,
                    "received": now}
            if d.kind is Kind.DUPLICATE:
                r = self.store.requests[req.request_id]
                return Reply(202, self._view(req.request_id, r)), None
            if d.kind is Kind.CONFLICT:
                self._journal("conflict", {**base, "state": "refused", "detail": d.detail},
                              req.request_id)
                return Reply(409, {"error": d.detail}), None
            if d.kind is Kind.STALE:
                self._journal("stale", {**base, "state": "refused", "detail": d.detail},
                              req.request_id)
                return Reply(409, {"error": "stale incarnation", "detail": d.detail}), None
            if d.kind is Kind.RATE_LIMITED:
                retry = max(1, int(d.retry_after + 0.999))
                self.store.note_request(req.target, now)  # not healthy: keep its history
                self.store.save()
                self._journal("rate-limited", {**base, "state": "refused", "detail": d.detail},
                              req.request_id, retry_after=retry)
                return Reply(429, {"error": f"rate limited: {d.detail}",
                                   "retry_after": retry}), None
            if d.kind in (Kind.REFUSED, Kind.MAINTENANCE):
                r = {**base, "state": "refused", "detail": d.detail,
                     "decision": f"refused: {d.detail}"}
                self.store.requests[req.request_id] = r
                self.store.save()
                self._journal("refused" if d.kind is Kind.REFUSED else "maintenance", r,
                              req.request_id)
                return Reply(202, self._view(req.request_id, r)), None
            r = {**base, "state": "accepted", "detail": "queued",
                 "decision": f"{req.action} {req.target}",
                 "incarnation": self.store.incarnation(req.target)}
            self.store.requests[req.request_id] = r
            counted = history(self.store.actions(req.target),
                              self.store.last_request(req.target), self.policy, now)
            self.store.set_actions(req.target, counted + [now])  # forgotten ones dropped
            self.store.note_request(req.target, now)
            self.store.save()
            self._journal("accepted", r, req.request_id)
            return Reply(202, self._view(req.request_id, r)), req.request_id

    def status(self, sender: str, request_id: str) -> Reply:
        with self._lock:
            r = self.store.requests.get(request_id)
            if r is None or r.get("sender") != sender:
                return Reply(404, {"error": "unknown request id"})
            return Reply(200, self._view(request_id, r))

    def _update(self, rid: str, **changes: Any) -> dict[str, Any]:
        with self._lock:
            r = self.store.requests[rid]
            r.update(changes)
            self.store.save()
            return dict(r)

    def execute(self, rid: str) -> None:
        """Carry out an accepted request (blocking), or resume one from its phase."""
        with self._lock:
            phase = str(self.store.requests[rid].get("phase", ""))
        r = self._update(rid, state="in-progress")
        target = str(r["target"])
        driver = self.drivers[target]
        t0 = self.clock.monotonic()
        timings: dict[str, float] = {}
        try:
            managed = getattr(driver, "recreate", None)
            if r["action"] == "recreate" and callable(managed):
                # a managed restart (Pacemaker): the cluster confirms the stop, then
                # starts it; a new incarnation only once that returned
                self._update(rid, phase="restarting",
                             detail="restarting (managed by the driver)")
                managed()
                timings["recreate_s"] = round(self.clock.monotonic() - t0, 3)
                inc = self._next_incarnation(rid, target, "done")
                self._finish(rid, "done", f"{target} restarted by its manager as "
                             f"incarnation {inc}", timings)
                return
            if phase == "destroyed":
                self._finish(rid, "done", f"{target} destroyed, death confirmed "
                             "(resumed after a guardian-hostd restart)", timings)
                return
            if phase == "creating":
                inc = int(r.get("incarnation") or self.store.incarnation(target))
                try:
                    now_state = driver.state()
                except DriverError:
                    now_state = DomainState.UNKNOWN
                if now_state in (DomainState.RUNNING, DomainState.PAUSED):
                    self._finish(rid, "done", f"{target} found running as incarnation "
                                 f"{inc} (resumed after a guardian-hostd restart)", timings)
                    return
                if not now_state.dead:
                    self._finish(rid, "failed", f"resumed after a guardian-hostd restart: "
                                 f"{target} is {now_state.value}, neither running nor "
                                 "confirmed dead; not created (never two instances)",
                                 timings)
                    return
            else:
                self._update(rid, phase="destroying", detail="destroying")
                driver.destroy()
                timings["destroy_s"] = round(self.clock.monotonic() - t0, 3)
                last = self._confirm_death(driver)
                timings["confirm_s"] = round(self.clock.monotonic() - t0, 3)
                if not last.dead:
                    self._finish(rid, "failed", f"death of {target} not confirmed within "
                                 f"{self.policy.confirm_timeout:g}s (last state "
                                 f"{last.value}); not created again", timings)
                    return
                inc = self._next_incarnation(
                    rid, target, "destroyed" if r["action"] == "fence-peer" else "creating")
                if r["action"] == "fence-peer":
                    self._finish(rid, "done", f"{target} destroyed, death confirmed",
                                 timings)
                    return
            self._update(rid, detail="creating")
            driver.create()
            timings["create_s"] = round(self.clock.monotonic() - t0, 3)
            self._finish(rid, "done", f"{target} recreated as incarnation {inc}", timings)
        except DriverError as exc:
            timings["failed_at_s"] = round(self.clock.monotonic() - t0, 3)
            self._finish(rid, "failed", str(exc), timings)
        except Exception as exc:  # noqa: BLE001 - a bug must not leave it in-progress
            self._finish(rid, "failed", f"internal error: {exc!r}", timings)

    def _next_incarnation(self, rid: str, target: str, phase: str) -> int:
        """The target's incarnation + 1 and the request's next phase, in one save."""
        with self._lock:
            inc = self.store.incarnation(target) + 1
            self.store.vm(target)["incarnation"] = inc
            self.store.requests[rid].update(incarnation=inc, phase=phase)
            self.store.save()
        return inc

    def _confirm_death(self, driver: Driver) -> DomainState:
        deadline = self.clock.monotonic() + self.policy.confirm_timeout
        last = DomainState.UNKNOWN
        while True:
            try:
                last = driver.state()
            except DriverError:
                last = DomainState.UNKNOWN
            if last.dead or self.clock.monotonic() >= deadline:
                return last
            self.clock.sleep(min(self.poll_interval,
                                 max(0.0, deadline - self.clock.monotonic())))

    def _finish(self, rid: str, state: str, detail: str, timings: dict[str, float]) -> None:
        r = self._update(rid, state=state, detail=detail, finished=self.clock.wall())
        self._journal("finished", r, rid, timings=timings)
        self.count(f"actions_{state}")
