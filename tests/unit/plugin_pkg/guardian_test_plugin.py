"""A third-party guardian check: answers with a configured verdict."""

from __future__ import annotations

from checks import Check, CheckResult, Options, Status

_NAMES = tuple(status.value for status in Status)


class ConstantCheck(Check):
    """Always returns ``status`` with ``message`` (for testing plug-in loading)."""

    kind = "test-constant"

    def __init__(self, status: Status, message: str) -> None:
        self.status = status
        self.message = message

    @classmethod
    def from_options(cls, opts: Options) -> ConstantCheck:
        return cls(Status(opts.choice("status", _NAMES, "OK")),
                   opts.str("message", "constant verdict"))

    def describe(self) -> str:
        return f"constant {self.status.value}"

    async def probe(self, deadline: float) -> CheckResult:
        return CheckResult(self.status, f"{self.describe()}: {self.message}",
                           perfdata=("answer=42;;;0",))
