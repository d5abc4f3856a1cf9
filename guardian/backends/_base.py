"""How guardian drives a guest's service manager.

A *backend* (one per service manager: supervisord, systemd, LSB init, command)
is configured once from its ``[backends.NAME]`` table.  For each service it
hands out a *controller* bound to one unit (a supervisord program, a systemd
unit, an init script).  Every call takes an absolute ``time.monotonic()``
deadline and raises ``BackendError`` with a readable message on failure.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

from checks import Options


class UnitState(enum.Enum):
    RUNNING = "running"
    STARTING = "starting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    EXITED = "exited"      # died on its own (crash or clean exit)
    FAILED = "failed"      # the manager gave up (supervisord FATAL, systemd failed)
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class UnitStatus:
    state: UnitState
    pid: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class UnitEvent:
    """A state change the manager told us about (e.g. a supervisord event)."""

    unit: str
    state: UnitState
    pid: int | None = None
    detail: str = ""


class BackendError(Exception):
    """A start/stop/restart/status call failed; the message says why."""


class Controller(abc.ABC):
    """Start/stop/restart/status of one unit."""

    unit: str
    #: Are the pids this controller reports in our own pid namespace?  (False for a
    #: remote service manager: then guardian does not watch them with a pidfd.)
    local_pids: bool = True

    @abc.abstractmethod
    async def start(self, deadline: float) -> None: ...

    @abc.abstractmethod
    async def stop(self, deadline: float) -> None: ...

    @abc.abstractmethod
    async def restart(self, deadline: float) -> None:
        """Bring the unit back: works whether it is running, stopped, exited or failed."""

    @abc.abstractmethod
    async def status(self, deadline: float) -> UnitStatus: ...

    def describe(self) -> str:
        return self.unit


class Backend(abc.ABC):
    name: ClassVar[str] = ""

    @classmethod
    @abc.abstractmethod
    def from_options(cls, opts: Options) -> Backend:
        """Build from the ``[backends.NAME]`` table (possibly empty); must not do I/O."""

    @abc.abstractmethod
    def controller(self, service: str, opts: Options) -> Controller:
        """Consume this backend's per-service keys from the service table
        (e.g. ``unit``) and return a controller; must not do I/O."""

    async def events(self) -> AsyncIterator[UnitEvent]:
        """Unit state changes pushed by the manager; default: none.

        Runs until cancelled; reconnects by itself on errors.
        """
        return
        yield  # pragma: no cover - makes this an async generator

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections, listeners, files."""
