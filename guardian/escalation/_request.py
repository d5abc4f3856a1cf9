"""What an escalation carries, and what dom0 answers.  Dependency-free."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ACTIONS = ("recreate", "fence-peer")


class EscalationError(Exception):
    """An attempt did not get an answer (network, timeout, a crashed program, a 5xx):
    transient, retried with backoff."""


class AnswerState(enum.Enum):
    """dom0's answer to one attempt (send or poll)."""

    SENT = "sent"                  # delivered, no answer yet (xenstore)
    ACCEPTED = "accepted"
    IN_PROGRESS = "in-progress"
    DONE = "done"
    FAILED = "failed"
    REFUSED = "refused"
    STALE = "stale"                # 409: made in an older incarnation of this VM
    REJECTED = "rejected"          # 400: malformed
    RETRY = "retry"                # 429: come back after ``retry_after``
    UNKNOWN = "unknown"            # 404 on poll: dom0 does not know the id; send again

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = {AnswerState.DONE, AnswerState.FAILED, AnswerState.REFUSED, AnswerState.STALE,
          AnswerState.REJECTED}


@dataclass(frozen=True)
class Answer:
    state: AnswerState
    detail: str = ""
    decision: str = ""
    retry_after: float | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], default: AnswerState) -> Answer:
        """An answer from a JSON object ``{"state", "detail", "decision", "retry_after"}``."""
        raw = data.get("state")
        try:
            state = AnswerState(raw) if raw is not None else default
        except ValueError:
            raise EscalationError(f"unknown answer state {raw!r}") from None
        retry = data.get("retry_after")
        return cls(state, str(data.get("detail") or ""), str(data.get("decision") or ""),
                   float(retry) if isinstance(retry, int | float) else None)


@dataclass(frozen=True)
class Reason:
    service: str
    verdicts: str = ""
    restarts: int = 0
    detail: str = ""


@dataclass(frozen=True)
class Request:
    """One escalation; its ``request_id`` stays the same across every attempt."""

    vm: str
    vm_uuid: str
    incarnation: int
    action: str
    reason: Reason
    peer: str | None = None
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r} is not one of {', '.join(ACTIONS)}")

    def body(self, sent_at: float) -> dict[str, Any]:
        """The wire form (``POST /v1/escalations``)."""
        return {
            "request_id": self.request_id,
            "vm": self.vm,
            "vm_uuid": self.vm_uuid,
            "incarnation": self.incarnation,
            "action": self.action,
            "peer": self.peer,
            "reason": {"service": self.reason.service, "verdicts": self.reason.verdicts,
                       "restarts": self.reason.restarts, "detail": self.reason.detail},
            "sent_at": sent_at,
        }

    @classmethod
    def from_body(cls, data: Mapping[str, Any]) -> Request:
        r = data["reason"]
        return cls(vm=str(data["vm"]), vm_uuid=str(data["vm_uuid"]),
                   incarnation=int(data["incarnation"]), action=str(data["action"]),
                   peer=None if data.get("peer") is None else str(data["peer"]),
                   request_id=str(data["request_id"]),
                   reason=Reason(str(r["service"]), str(r.get("verdicts", "")),
                                 int(r.get("restarts", 0)), str(r.get("detail", ""))))
