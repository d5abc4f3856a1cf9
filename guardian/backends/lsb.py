"""The ``lsb`` backend: System V / LSB init scripts.

Per service::

    [services.dns]
    backend = "lsb"
    unit = "named"                        # optional: default the service name
    script = "/etc/init.d/named"          # optional: default /etc/init.d/<unit>
    pidfile = "/run/named/named.pid"      # optional: to report the main pid

``start``, ``stop`` and ``restart`` run ``SCRIPT start|stop|restart`` (an LSB
script must accept ``restart`` on a stopped service; if the script says it
does not implement it, exit status 3, guardian runs stop and start).
``status`` maps the LSB status exit codes: 0 running, 1 dead but the pidfile
exists, 2 dead but the lock file exists, 3 not running, 4 unknown.

On a systemd machine Debian's ``init-functions`` hand the call over to
``systemctl``; use the ``systemd`` backend there.
"""

from __future__ import annotations

import os
from typing import ClassVar

from checks import Options

from ._base import Backend, BackendError, Controller, UnitState, UnitStatus
from ._proc import CommandResult, pid_alive, read_pidfile, run_command

#: LSB exit statuses of ``status``.
_STATUS_CODES: dict[int, tuple[UnitState, str]] = {
    0: (UnitState.RUNNING, "running"),
    1: (UnitState.EXITED, "dead, pid file exists"),
    2: (UnitState.EXITED, "dead, lock file exists"),
    3: (UnitState.STOPPED, "not running"),
    4: (UnitState.UNKNOWN, "status unknown"),
}

#: LSB exit statuses of the other actions (for messages).
_ACTION_CODES = {
    1: "generic or unspecified error",
    2: "invalid or excess arguments",
    3: "unimplemented feature",
    4: "user had insufficient privilege",
    5: "program is not installed",
    6: "program is not configured",
    7: "program is not running",
}

_UNIMPLEMENTED = 3
_LSB_ENV = {"LANG": "C", "LC_ALL": "C"}


class LsbController(Controller):
    def __init__(self, unit: str, script: str, pidfile: str | None) -> None:
        self.unit = unit
        self.script = script
        self.pidfile = pidfile

    def describe(self) -> str:
        return f"lsb:{self.script}"

    async def _action(self, action: str, deadline: float) -> CommandResult:
        return await run_command((self.script, action), deadline, env=_LSB_ENV,
                                 what=f"{self.script} {action}")

    def _fail(self, action: str, result: CommandResult) -> BackendError:
        meaning = _ACTION_CODES.get(result.returncode)
        extra = f" ({meaning})" if meaning else ""
        return BackendError(f"{self.script} {action} failed: {result.reason()}{extra}")

    async def start(self, deadline: float) -> None:
        result = await self._action("start", deadline)
        if not result.ok:
            raise self._fail("start", result)

    async def stop(self, deadline: float) -> None:
        result = await self._action("stop", deadline)
        # LSB: stopping a stopped service is a success; some scripts say 7
        if not result.ok and result.returncode != 7:
            raise self._fail("stop", result)

    async def restart(self, deadline: float) -> None:
        result = await self._action("restart", deadline)
        if result.ok:
            return
        if result.returncode != _UNIMPLEMENTED:
            raise self._fail("restart", result)
        await self.stop(deadline)
        await self.start(deadline)

    async def status(self, deadline: float) -> UnitStatus:
        result = await self._action("status", deadline)
        state, meaning = _STATUS_CODES.get(
            result.returncode, (UnitState.UNKNOWN, f"unexpected status {result.returncode}"))
        detail = f"{self.script} status: {meaning}"
        pid: int | None = None
        if self.pidfile is not None and state is UnitState.RUNNING:
            candidate = read_pidfile(self.pidfile)
            if candidate is not None and pid_alive(candidate):
                pid = candidate
        return UnitStatus(state, pid, detail)


class LsbBackend(Backend):
    """Services managed by LSB init scripts in ``/etc/init.d``."""

    name: ClassVar[str] = "lsb"

    def __init__(self, script_dir: str = "/etc/init.d") -> None:
        self.script_dir = script_dir

    @classmethod
    def from_options(cls, opts: Options) -> LsbBackend:
        script_dir = opts.str("script_dir", "/etc/init.d")
        if not script_dir.startswith("/"):
            raise opts.error("script_dir", f"{script_dir!r} is not an absolute path")
        return cls(script_dir)

    def controller(self, service: str, opts: Options) -> LsbController:
        unit = opts.str("unit", service)
        if not unit or "/" in unit:
            raise opts.error("unit", f"{unit!r} is not an init script name (use script = PATH)")
        script = opts.str("script", os.path.join(self.script_dir, unit))
        if not script.startswith("/"):
            raise opts.error("script", f"{script!r} is not an absolute path")
        pidfile = opts.str("pidfile", None)
        if pidfile is not None and not pidfile.startswith("/"):
            raise opts.error("pidfile", f"{pidfile!r} is not an absolute path")
        return LsbController(unit, script, pidfile)
