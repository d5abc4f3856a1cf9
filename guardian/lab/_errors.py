"""The lab's exception tree: everything the lab raises is a :class:`LabError`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class LabError(Exception):
    """Base class of every error raised by :mod:`guardian.lab`."""


class LabUnavailable(LabError):
    """The machine cannot run the lab (not root, no ``ip netns``, a package missing)."""

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__("lab unavailable: " + "; ".join(self.reasons))


class LabTimeout(LabError):
    """Something did not happen within its deadline.

    ``details`` maps what was waited for to the last thing observed about it.
    """

    def __init__(self, message: str, details: Mapping[str, str] | None = None) -> None:
        self.details = dict(details or {})
        text = message
        if self.details:
            text += "\n" + "\n".join(f"  {k}: {v}" for k, v in self.details.items())
        super().__init__(text)


class CommandError(LabError):
    """A command exited with a non-zero status."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command {' '.join(self.argv)!r} exited with {returncode}: "
            f"{(stderr or stdout).strip()[-2000:]}"
        )


class SupervisorError(LabError):
    """supervisord answered an XML-RPC call with a fault, or could not be reached."""

    def __init__(self, method: str, message: str, fault_code: int | None = None) -> None:
        self.method = method
        self.fault_code = fault_code
        self.fault_string = message
        code = f" (fault {fault_code})" if fault_code is not None else ""
        super().__init__(f"supervisord {method}{code}: {message}")
