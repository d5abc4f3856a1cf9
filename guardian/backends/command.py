"""The ``command`` backend: any service, driven by commands you give.

Per service::

    [services.web]
    backend = "command"
    start_command = "/usr/sbin/apachectl start"      # required
    stop_command = ["/usr/sbin/apachectl", "stop"]   # optional: default SIGTERM (SIGKILL
                                                     #   when slow) to the pidfile's pid
    restart_command = "/usr/sbin/apachectl restart"  # optional: default stop, then start
    status_command = "pgrep -x apache2"              # optional: exit 0 = running
    pidfile = "/run/apache2/apache2.pid"             # optional: the main pid

A command is a list of strings or a string split like a shell would (no shell
runs it; write ``["sh", "-c", "..."]`` for one).  Each runs in its own
session and is killed with its process group at the deadline; a non-zero
exit status is a ``BackendError`` carrying the last line of stderr.

Without ``status_command`` the state comes from ``pidfile`` (live pid:
running; stale pid: exited; no file: stopped); with neither it is unknown.
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

from checks import Options

from ._base import Backend, BackendError, Controller, UnitState, UnitStatus
from ._proc import (
    CommandResult,
    pid_alive,
    read_pidfile,
    run_command,
    terminate,
    to_command,
)

#: How long ``start`` waits for a daemonizing command's pidfile to name a live pid.
PIDFILE_WAIT = 5.0

class CommandController(Controller):
    def __init__(self, service: str, start: tuple[str, ...], stop: tuple[str, ...] | None,
                 restart: tuple[str, ...] | None, status: tuple[str, ...] | None,
                 pidfile: str | None) -> None:
        self.unit = service
        self.start_command = start
        self.stop_command = stop
        self.restart_command = restart
        self.status_command = status
        self.pidfile = pidfile

    def describe(self) -> str:
        return f"command:{self.unit}"

    async def _run(self, argv: tuple[str, ...], deadline: float, action: str) -> CommandResult:
        result = await run_command(argv, deadline, what=f"{action} {self.unit}")
        if not result.ok:
            raise BackendError(f"{action} {self.unit}: {argv[0]} failed: {result.reason()}")
        return result

    async def start(self, deadline: float) -> None:
        await self._run(self.start_command, deadline, "start")
        await self._settle_pidfile(deadline)

    async def _settle_pidfile(self, deadline: float) -> None:
        """A daemonizing start command may return before the daemon has written its
        pidfile: until it names a live process, the file still holds the dead pid of
        the previous run, which a status would take for a new crash.  Wait for it,
        for at most ``PIDFILE_WAIT`` seconds (then the status says what it finds)."""
        if self.pidfile is None:
            return
        limit = min(deadline, time.monotonic() + PIDFILE_WAIT)
        while time.monotonic() < limit:
            pid = read_pidfile(self.pidfile)
            if pid is not None and pid_alive(pid):
                return
            await asyncio.sleep(0.01)

    async def stop(self, deadline: float) -> None:
        if self.stop_command is not None:
            await self._run(self.stop_command, deadline, "stop")
            return
        if self.pidfile is None:
            raise BackendError(f"stop {self.unit}: no stop_command and no pidfile")
        pid = read_pidfile(self.pidfile)
        if pid is not None:
            try:
                await terminate(pid, deadline)
            except BackendError as exc:
                raise BackendError(f"stop {self.unit}: {exc}") from None

    async def restart(self, deadline: float) -> None:
        if self.restart_command is not None:
            await self._run(self.restart_command, deadline, "restart")
            await self._settle_pidfile(deadline)
            return
        # stop, then start whatever stop said: stopping a dead service often fails
        try:
            await self.stop(deadline)
        except BackendError as stop_error:
            try:
                await self.start(deadline)
            except BackendError as start_error:
                raise BackendError(f"restart {self.unit}: {start_error} "
                                   f"(after: {stop_error})") from None
            return
        await self.start(deadline)

    async def status(self, deadline: float) -> UnitStatus:
        pid = read_pidfile(self.pidfile) if self.pidfile else None
        if self.status_command is not None:
            result = await run_command(self.status_command, deadline,
                                       what=f"status {self.unit}")
            if result.ok:
                live = pid if pid is not None and pid_alive(pid) else None
                return UnitStatus(UnitState.RUNNING, live, "status command: running")
            return UnitStatus(UnitState.STOPPED, None, f"status command: {result.reason()}")
        if self.pidfile is None:
            return UnitStatus(UnitState.UNKNOWN, None, "no status_command and no pidfile")
        if pid is None:
            return UnitStatus(UnitState.STOPPED, None, f"no pid in {self.pidfile}")
        if pid_alive(pid):
            return UnitStatus(UnitState.RUNNING, pid, f"pid {pid} from {self.pidfile}")
        return UnitStatus(UnitState.EXITED, None,
                          f"pid {pid} from {self.pidfile} is not running")


class CommandBackend(Backend):
    """Services started and stopped by arbitrary commands."""

    name: ClassVar[str] = "command"

    @classmethod
    def from_options(cls, opts: Options) -> CommandBackend:
        return cls()

    def controller(self, service: str, opts: Options) -> CommandController:
        start = opts.convert("start_command", to_command)
        stop = opts.convert("stop_command", to_command, None)
        restart = opts.convert("restart_command", to_command, None)
        status = opts.convert("status_command", to_command, None)
        pidfile = opts.str("pidfile", None)
        if pidfile is not None and not pidfile.startswith("/"):
            raise opts.error("pidfile", f"{pidfile!r} is not an absolute path")
        return CommandController(service, start, stop, restart, status, pidfile)
