"""Verdicts: the one data type every probe returns.

A failing service is data (``Status.CRITICAL``), not an exception. ``UNKNOWN``
means the probe itself could not run (bad options, a local resource error): it
says nothing about the service and never restarts it on its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Status(enum.Enum):
    """A probe's verdict, ordered from best to worst for ``worst()``."""

    OK = "OK"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"
    UNKNOWN = "UNKNOWN"

    @property
    def exit_code(self) -> int:
        """The Nagios / Monitoring-Plugins exit code for this verdict."""
        return _EXIT_CODES[self]

    @classmethod
    def from_exit_code(cls, code: int) -> Status:
        """Map a plugin exit code; anything outside 0..3 is UNKNOWN."""
        for status, value in _EXIT_CODES.items():
            if value == code:
                return status
        return cls.UNKNOWN

    @property
    def severity(self) -> int:
        """Rank used to combine verdicts: OK < WARNING < UNKNOWN < CRITICAL."""
        return _SEVERITY[self]


_EXIT_CODES = {Status.OK: 0, Status.WARNING: 1, Status.CRITICAL: 2, Status.UNKNOWN: 3}
_SEVERITY = {Status.OK: 0, Status.WARNING: 1, Status.UNKNOWN: 2, Status.CRITICAL: 3}


@dataclass(frozen=True)
class CheckResult:
    """What one run of one probe found.

    ``detail`` is one human line; ``perfdata`` holds Nagios perfdata items
    (``label=value[UOM];warn;crit;min;max``); ``transcript`` holds a short,
    secret-free record of the protocol exchange (status line, answer section,
    SMTP dialogue).  ``started`` is a ``time.monotonic()`` stamp.
    """

    status: Status
    detail: str
    duration: float = 0.0
    started: float = 0.0
    perfdata: tuple[str, ...] = ()
    transcript: tuple[str, ...] = field(default=(), compare=False)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def nagios_line(self, kind: str) -> str:
        """Format as the first line of a Nagios plugin's output."""
        line = f"{kind.upper()} {self.status.value} - {self.detail}"
        perf = list(self.perfdata) + [f"time={self.duration:.6f}s"]
        return f"{line} | {' '.join(perf)}"


def worst(statuses: list[Status]) -> Status:
    """The most severe verdict in ``statuses`` (OK for an empty list)."""
    if not statuses:
        return Status.OK
    return max(statuses, key=lambda s: s.severity)
