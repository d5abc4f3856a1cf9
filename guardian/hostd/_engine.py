"""The decision engine: what to do with an authenticated escalation request.

``decide()`` is pure (state snapshot and clock in, Decision out) and is what the
scenario tables test; ``Engine`` applies decisions to the persistent state, journals
them, and ``Engine.execute()`` carries out an accepted action (blocking: run it in a
worker thread).

Order of the checks for a POST:

1. malformed body -> 400; body ``vm``/``vm_uuid`` not the sender's -> 401;
2. request id already known -> its current state (never a second action);
3. incarnation older than the VM's current one -> 409 ``stale incarnation``;
4. fence-peer naming an unknown VM or the sender itself -> 202 ``refused`` (kept);
5. an action already running on the target, ``min_interval`` not over, or
   ``max_per_day`` reached -> 429 with ``retry_after`` (not kept: the same id may
   be sent again later);
6. otherwise accept (202 ``accepted``) and run the action.

recreate: destroy -> confirm death (state SHUT or ABSENT within ``confirm_timeout``;
otherwise ``failed`` and no create) -> incarnation += 1, persisted -> create -> done.
fence-peer: destroy the peer -> confirm death -> peer incarnation += 1 -> done.
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

from ._config import PolicySpec, VMSpec
from ._drivers import DomainState, Driver, DriverError
from ._state import DAY, Journal, StateStore

ACTIONS = ("recreate", "fence-peer")
_UUID_RE = re.compile(r"^[0-9a-fA-F-]{8,64}$")
RUNNING_STATES = ("accepted", "in-progress")


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
    target = req.target
    for r in snap.requests.values():
        if r.get("target") == target and r.get("state") in RUNNING_STATES:
            return Decision(Kind.RATE_LIMITED, f"an action on {target} is running",
                            policy.confirm_timeout)
    history = sorted(t for t in snap.actions.get(target, []) if t > now - DAY)
    wait = 0.0
    why = ""
    if history and now - history[-1] < policy.min_interval:
        wait = history[-1] + policy.min_interval - now
        why = f"last action on {target} {now - history[-1]:.0f}s ago (min_interval)"
    if len(history) >= policy.max_per_day:
        day_wait = history[-policy.max_per_day] + DAY - now
        if day_wait > wait:
            wait = day_wait
            why = f"{len(history)} actions on {target} in 24h (max_per_day)"
    if wait > 0:
        return Decision(Kind.RATE_LIMITED, why, wait)
    return Decision(Kind.ACCEPT, f"{req.action} {target}")


class Engine:
    def __init__(self, vms: Mapping[str, VMSpec], policy: PolicySpec,
                 drivers: Mapping[str, Driver], store: StateStore, journal: Journal,
                 clock: Clock | None = None, *, poll_interval: float = 0.25) -> None:
        self.vms = dict(vms)
        self.policy = policy
        self.drivers = dict(drivers)
        self.store = store
        self.journal = journal
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {}
        self._recover()

    def _recover(self) -> None:
        """Actions that were running when hostd stopped are not resumed: failed."""
        changed = False
        for rid, r in self.store.requests.items():
            if r.get("state") in RUNNING_STATES:
                r["state"] = "failed"
                r["detail"] = "guardian-hostd restarted during the action; not resumed"
                self._journal("interrupted", r, rid)
                changed = True
        if changed:
            self.store.save()

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _journal(self, decision: str, r: Mapping[str, Any], rid: str, **extra: Any) -> None:
        rec = {"wall": self.clock.wall(), "decision": decision, "request_id": rid,
               "vm": r.get("sender"), "target": r.get("target"), "action": r.get("action"),
               "reason": r.get("reason"), "outcome": r.get("state"),
               "detail": r.get("detail")}
        rec.update(extra)
        self.journal.append(rec)

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
            self.count("identity_mismatch")
            self.journal.append({"wall": self.clock.wall(), "decision": "identity-mismatch",
                                 "vm": sender, "claimed_vm": req.vm, "claimed_uuid": req.vm_uuid,
                                 "request_id": req.request_id, "outcome": "unauthorized"})
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
                self._journal("rate-limited", {**base, "state": "refused", "detail": d.detail},
                              req.request_id, retry_after=retry)
                return Reply(429, {"error": f"rate limited: {d.detail}",
                                   "retry_after": retry}), None
            if d.kind is Kind.REFUSED:
                r = {**base, "state": "refused", "detail": d.detail,
                     "decision": f"refused: {d.detail}"}
                self.store.requests[req.request_id] = r
                self.store.save()
                self._journal("refused", r, req.request_id)
                return Reply(202, self._view(req.request_id, r)), None
            r = {**base, "state": "accepted", "detail": "queued",
                 "decision": f"{req.action} {req.target}",
                 "incarnation": self.store.incarnation(req.target)}
            self.store.requests[req.request_id] = r
            self.store.add_action(req.target, now)
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
        """Carry out an accepted request (blocking)."""
        r = self._update(rid, state="in-progress", detail="destroying")
        target = str(r["target"])
        driver = self.drivers[target]
        t0 = self.clock.monotonic()
        timings: dict[str, float] = {}
        try:
            driver.destroy()
            timings["destroy_s"] = round(self.clock.monotonic() - t0, 3)
            last = self._confirm_death(driver)
            timings["confirm_s"] = round(self.clock.monotonic() - t0, 3)
            if not last.dead:
                self._finish(rid, "failed", f"death of {target} not confirmed within "
                             f"{self.policy.confirm_timeout:g}s (last state {last.value}); "
                             "not created again", timings)
                return
            with self._lock:
                inc = self.store.incarnation(target) + 1
                self.store.vm(target)["incarnation"] = inc
                self.store.requests[rid].update(incarnation=inc)
                self.store.save()
            if r["action"] == "fence-peer":
                self._finish(rid, "done", f"{target} destroyed, death confirmed", timings)
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
