"""The ``systemd`` backend: units driven through ``systemctl``.

Global, in ``[backends.systemd]``::

    systemctl = "/usr/bin/systemctl"    # optional: default "systemctl" (found on PATH)

Per service::

    [services.web]
    backend = "systemd"
    unit = "apache2.service"            # optional: default "<service>.service"

``start`` and ``restart`` first run ``systemctl reset-failed UNIT``: a unit
that hit systemd's start limit (``StartLimitBurst``) refuses to start until
its failed state is reset, and guardian's own budget and backoff take that
role.  ``systemctl`` waits for the start job (``Type=notify`` units until
they are ready); at the deadline it is killed, and systemd carries on with
the job on its own.  ``status`` reads ``systemctl show`` properties.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from checks import Options

from ._base import Backend, BackendError, Controller, UnitState, UnitStatus
from ._proc import CommandResult, run_command

#: What ``status`` asks for.
PROPERTIES = ("LoadState", "ActiveState", "SubState", "MainPID", "Result")

_ACTIVE_STATES: dict[str, UnitState] = {
    "active": UnitState.RUNNING,
    "reloading": UnitState.RUNNING,
    "refreshing": UnitState.RUNNING,
    "activating": UnitState.STARTING,
    "deactivating": UnitState.STOPPING,
    "inactive": UnitState.STOPPED,
    "failed": UnitState.FAILED,
}

#: Sub-states that say more than the active state does.
_SUB_STATES: dict[str, UnitState] = {
    # died, and systemd will start it again after RestartSec
    "auto-restart": UnitState.EXITED,
    "auto-restart-queued": UnitState.EXITED,
}

_ENV = {"SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "LANG": "C", "LC_ALL": "C"}


def parse_show(text: str) -> dict[str, str]:
    """``Key=Value`` lines of ``systemctl show`` -> dict (values may contain ``=``)."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and " " not in key:
            props[key] = value.strip()
    return props


def unit_status(unit: str, props: dict[str, str]) -> UnitStatus:
    """Translate ``systemctl show`` properties into a ``UnitStatus``."""
    load = props.get("LoadState", "")
    if load == "not-found":
        raise BackendError(f"systemd has no unit {unit} (LoadState=not-found)")
    if load in ("bad-setting", "error"):
        raise BackendError(f"systemd cannot load unit {unit} (LoadState={load}; "
                           f"see systemctl status {unit})")
    active = props.get("ActiveState", "")
    sub = props.get("SubState", "")
    result = props.get("Result", "")
    if not active:
        raise BackendError(f"systemctl show {unit} gave no ActiveState")
    state = _SUB_STATES.get(sub, _ACTIVE_STATES.get(active, UnitState.UNKNOWN))
    try:
        main_pid = int(props.get("MainPID", "0") or "0")
    except ValueError:
        main_pid = 0
    detail = f"{active} ({sub})" if sub else active
    if result and result != "success":
        detail += f", result: {result}"
    if load == "masked":
        detail += ", masked"
    return UnitStatus(state, main_pid if main_pid > 0 else None, detail)


class SystemdController(Controller):
    def __init__(self, systemctl: str, unit: str) -> None:
        self.systemctl = systemctl
        self.unit = unit

    def describe(self) -> str:
        return f"systemd:{self.unit}"

    async def _systemctl(self, args: Sequence[str], deadline: float) -> CommandResult:
        argv = (self.systemctl, "--no-ask-password", *args)
        return await run_command(argv, deadline, env=_ENV,
                                 what=f"systemctl {' '.join(args)}")

    async def _verb(self, verb: str, deadline: float) -> None:
        result = await self._systemctl((verb, self.unit), deadline)
        if not result.ok:
            # systemctl's first line says what failed, the last where to look
            raise BackendError(f"systemctl {verb} {self.unit} failed: "
                               f"{result.reason(whole=True)}")

    async def _reset_failed(self, deadline: float) -> None:
        # Fails harmlessly on a unit that is not loaded; start then says why.
        await self._systemctl(("reset-failed", self.unit), deadline)

    async def start(self, deadline: float) -> None:
        await self._reset_failed(deadline)
        await self._verb("start", deadline)

    async def stop(self, deadline: float) -> None:
        await self._verb("stop", deadline)

    async def restart(self, deadline: float) -> None:
        await self._reset_failed(deadline)
        await self._verb("restart", deadline)

    async def status(self, deadline: float) -> UnitStatus:
        args = ["show"]
        for prop in PROPERTIES:
            args += ["-p", prop]
        args.append(self.unit)
        result = await self._systemctl(args, deadline)
        if not result.ok:
            raise BackendError(f"systemctl show {self.unit} failed: {result.reason()}")
        return unit_status(self.unit, parse_show(result.stdout))


class SystemdBackend(Backend):
    """Units of the guest's systemd."""

    name: ClassVar[str] = "systemd"

    def __init__(self, systemctl: str = "systemctl") -> None:
        self.systemctl = systemctl

    @classmethod
    def from_options(cls, opts: Options) -> SystemdBackend:
        systemctl = opts.str("systemctl", "systemctl")
        if not systemctl:
            raise opts.error("systemctl", "must not be empty")
        return cls(systemctl)

    def controller(self, service: str, opts: Options) -> SystemdController:
        unit = opts.str("unit", f"{service}.service")
        if not unit or any(c.isspace() for c in unit) or unit.startswith("-"):
            raise opts.error("unit", f"{unit!r} is not a systemd unit name")
        return SystemdController(self.systemctl, unit)
