"""The durable outbox and the pump that drives it.

One JSON file per request under ``state_dir/outbox/``, replaced atomically
(temp file, fsync, rename, fsync of the directory) at every change of state.
States: ``pending`` (to send) -> ``sent`` (delivered, no answer) / ``accepted``
(dom0 took it; polled) -> ``done`` / ``failed`` / ``refused`` / ``stale`` /
``rejected`` (final).  A restart reloads the files: pending requests are sent
again under the same request id, sent/accepted ones are polled.  At most one
open request per service: a second incident while one is open adds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._durable import atomic_write
from ._channel import Channel
from ._request import Answer, AnswerState, EscalationError, Request

log = logging.getLogger("guardian.escalation")

PENDING, SENT, ACCEPTED = "pending", "sent", "accepted"
OPEN_STATES = (PENDING, SENT, ACCEPTED)
FINAL_STATES = ("done", "failed", "refused", "stale", "rejected")

#: finished requests are kept this long (seconds, wall clock) for inspection
KEEP_FINISHED = 7 * 86400.0
BACKOFF_MIN = 1.0
BACKOFF_MAX = 300.0
#: polling a delivered or accepted request: from POLL_MIN doubling to POLL_MAX
POLL_MIN = 0.25
POLL_MAX = 5.0
JITTER = 0.2


def backoff(attempt: int, rng: random.Random, *, base: float = BACKOFF_MIN,
            cap: float = BACKOFF_MAX, jitter: float = JITTER) -> float:
    """Delay before attempt ``attempt + 1`` (``attempt`` >= 1 failed so far):
    ``base * 2 ** (attempt - 1)``, spread by +/- ``jitter``, within [base, cap]."""
    raw = base * 2.0 ** max(0, min(attempt - 1, 30))
    spread = raw * rng.uniform(1.0 - jitter, 1.0 + jitter)
    return max(base, min(cap, spread))


@dataclass
class Entry:
    request: Request
    state: str = PENDING
    attempts: int = 0
    created: float = 0.0          # wall clock (survives restarts)
    updated: float = 0.0
    detail: str = ""
    decision: str = ""
    #: monotonic time of the next attempt (not persisted: due at once after a restart)
    next_at: float = 0.0
    #: attempts in the current state (not persisted): the backoff's exponent
    tries: int = 0

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES

    def to_json(self) -> dict[str, Any]:
        return {"request": self.request.body(self.created), "state": self.state,
                "attempts": self.attempts, "created": self.created,
                "updated": self.updated, "detail": self.detail, "decision": self.decision}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(Request.from_body(data["request"]), str(data["state"]),
                   int(data.get("attempts", 0)), float(data.get("created", 0.0)),
                   float(data.get("updated", 0.0)), str(data.get("detail", "")),
                   str(data.get("decision", "")))


class Outbox:
    """The request files.  Not thread-safe; used from the event loop only."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.entries: dict[str, Entry] = {}

    def load(self) -> list[Entry]:
        """Read every request file (creating the directory); returns the open ones."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.entries = {}
        for path in sorted(self.directory.glob("*.json")):
            try:
                entry = Entry.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("escalation outbox: %s unreadable, skipped: %s", path, exc)
                continue
            if not entry.open and entry.updated < time.time() - KEEP_FINISHED:
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            self.entries[entry.request.request_id] = entry
        for tmp in self.directory.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
        return self.open_entries()

    def open_entries(self) -> list[Entry]:
        return sorted((e for e in self.entries.values() if e.open), key=lambda e: e.created)

    def open_for(self, service: str) -> Entry | None:
        for e in self.entries.values():
            if e.open and e.request.reason.service == service:
                return e
        return None

    def add(self, request: Request) -> Entry | None:
        """Store a new pending request; None (and nothing stored) when the service
        already has an open one."""
        if self.open_for(request.reason.service) is not None:
            return None
        now = time.time()
        entry = Entry(request, PENDING, created=now, updated=now)
        self.save(entry)
        self.entries[request.request_id] = entry
        return entry

    def save(self, entry: Entry) -> None:
        """Write ``entry`` durably: temp file, fsync, rename, fsync the directory."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        entry.updated = time.time()
        atomic_write(self.directory / f"{entry.request.request_id}.json",
                     json.dumps(entry.to_json(), sort_keys=True).encode(), 0o600)


#: (entry, outcome, detail): outcome is sent / accepted / done / failed / refused /
#: stale / rejected / retry
EventHook = Callable[[Entry, str, str], None]


class Escalator:
    """Sends the outbox's open requests through ``channel`` until each has a final
    answer: backoff with jitter between attempts, polling once accepted."""

    def __init__(self, outbox: Outbox, channel: Channel, *,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, timeout: float = 10.0,
                 retry_max: float = BACKOFF_MAX, on_event: EventHook | None = None,
                 before_send: Callable[[], Awaitable[Any]] | None = None) -> None:
        self.outbox = outbox
        self.channel = channel
        self.clock = clock
        self.rng = rng or random.Random()
        self.timeout = timeout
        self.retry_max = retry_max
        self.on_event = on_event
        self.before_send = before_send
        self._wake: asyncio.Event | None = None
        for entry in self.outbox.load():
            entry.next_at = self.clock()
            log.info("escalation %s (%s, %s) resumed from the outbox: %s",
                     entry.request.request_id, entry.request.reason.service,
                     entry.request.action, entry.state)

    def _wakeup(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def submit(self, request: Request) -> Entry | None:
        entry = self.outbox.add(request)
        if entry is not None:
            entry.next_at = self.clock()
            self._wakeup().set()
        return entry

    def status(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [{
            "request_id": e.request.request_id,
            "service": e.request.reason.service,
            "action": e.request.action,
            "incarnation": e.request.incarnation,
            "state": e.state,
            "attempts": e.attempts,
            "detail": e.detail,
            "next_retry": round(max(0.0, e.next_at - now), 3),
        } for e in self.outbox.open_entries()]

    async def run(self) -> None:
        wake = self._wakeup()
        while True:
            wake.clear()
            now = self.clock()
            due = [e for e in self.outbox.open_entries() if e.next_at <= now]
            for entry in due:
                await self.step(entry)
            pending = [e.next_at for e in self.outbox.open_entries()]
            wait = None if not pending else max(0.0, min(pending) - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)

    async def step(self, entry: Entry) -> None:
        """One attempt for ``entry``: send it (pending) or poll it (sent/accepted)."""
        req = self.outbox.entries.get(entry.request.request_id, entry).request
        deadline = time.monotonic() + self.timeout
        sending = entry.state == PENDING
        entry.attempts += 1
        entry.tries += 1
        try:
            if sending:
                if self.before_send is not None:
                    await self.before_send()
                answer = await self.channel.send(req, deadline)
            else:
                answer = await self.channel.poll(req.request_id, deadline)
        except EscalationError as exc:
            self._retry(entry, f"{'send' if sending else 'poll'} failed: {exc}", None)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a channel bug must not end the pump
            log.exception("escalation %s: channel %s raised", req.request_id,
                          self.channel.describe())
            self._retry(entry, f"{type(exc).__name__}: {exc}", None)
            return
        self._apply(entry, answer, sending)

    def _retry(self, entry: Entry, detail: str, after: float | None) -> None:
        delay = backoff(entry.tries, self.rng, cap=self.retry_max)
        if after is not None:
            delay = max(delay, min(after, self.retry_max))
        entry.next_at = self.clock() + delay
        entry.detail = detail
        self.outbox.save(entry)
        log.warning("escalation %s (%s): %s; next attempt in %.1f s",
                    entry.request.request_id, entry.request.reason.service, detail, delay)
        self._event(entry, "retry", detail)

    def _apply(self, entry: Entry, answer: Answer, sending: bool) -> None:
        rid, service = entry.request.request_id, entry.request.reason.service
        st = answer.state
        entry.detail = answer.detail
        if answer.decision:
            entry.decision = answer.decision
        if st is AnswerState.RETRY:
            self._retry(entry, f"dom0 asks to retry later: {answer.detail}", answer.retry_after)
            return
        if st is AnswerState.UNKNOWN:
            entry.state = PENDING
            entry.tries = 0
            entry.next_at = self.clock()
            self.outbox.save(entry)
            log.warning("escalation %s (%s): dom0 does not know it; sending it again",
                        rid, service)
            return
        if st.final:
            entry.state = st.value
            self.outbox.save(entry)
            level = logging.INFO if st is AnswerState.DONE else logging.ERROR
            log.log(level, "escalation %s (%s, %s): %s: %s", rid, service,
                    entry.request.action, st.value, answer.detail or answer.decision)
            self._event(entry, st.value, answer.detail)
            return
        new = SENT if st is AnswerState.SENT else ACCEPTED
        changed = new != entry.state
        if changed:
            entry.tries = 0
        entry.state = new
        # an accepted action takes dom0 about a second to a minute: poll from 0.25 s,
        # doubling to 5 s (a fence-peer's answer gates a takeover)
        entry.next_at = self.clock() + backoff(max(1, entry.tries), self.rng, base=POLL_MIN,
                                                cap=min(POLL_MAX, self.retry_max))
        self.outbox.save(entry)
        if sending:
            log.warning("escalation sent: %s (%s, %s) via %s", rid, service,
                        entry.request.action, self.channel.describe())
            self._event(entry, "sent", answer.detail)
        if changed and new == ACCEPTED:
            log.warning("escalation %s (%s) accepted by dom0: %s", rid, service,
                        answer.detail or st.value)
            self._event(entry, "accepted", answer.detail)

    def _event(self, entry: Entry, outcome: str, detail: str) -> None:
        if self.on_event is not None:
            try:
                self.on_event(entry, outcome, detail)
            except Exception:  # noqa: BLE001 - a hook must not end the pump
                log.exception("escalation event hook failed")
