"""Drivers: how hostd sees and acts on a domain (xl, libvirt, a command, or Python).

A driver has three blocking methods, called from a worker thread:

* ``state()`` -> DomainState (RUNNING, PAUSED, SHUT, CRASHED, DYING, ABSENT, UNKNOWN);
* ``destroy()`` — hard power-off; must not fail on an already absent domain;
* ``create()`` — start a new instance.

Failures raise DriverError with the command and its output.
"""

from __future__ import annotations

import enum
import subprocess
from collections.abc import Sequence
from typing import Any, Protocol

from ._config import VMSpec


class DomainState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUT = "shut"
    CRASHED = "crashed"
    DYING = "dying"
    ABSENT = "absent"
    UNKNOWN = "unknown"

    @property
    def dead(self) -> bool:
        """Confirmed dead: nothing of it runs and a create cannot make a second one."""
        return self in (DomainState.SHUT, DomainState.ABSENT)


class DriverError(Exception):
    pass


class Driver(Protocol):
    def state(self) -> DomainState: ...

    def destroy(self) -> None: ...

    def create(self) -> None: ...


def _run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise DriverError(f"{' '.join(argv)}: no answer in {timeout:g}s") from None
    except OSError as exc:
        raise DriverError(f"{' '.join(argv)}: {exc.strerror}") from None


def _fail(argv: Sequence[str], proc: subprocess.CompletedProcess[str]) -> DriverError:
    out = (proc.stderr.strip() or proc.stdout.strip())[-400:]
    return DriverError(f"{' '.join(argv)}: exit {proc.returncode}: {out}")


class XlDriver:
    """``xl list DOMAIN`` / ``xl destroy DOMAIN`` / ``xl create CONFIG``."""

    def __init__(self, domain: str, config: str, *, xl: str = "xl",
                 timeout: float = 60.0) -> None:
        self.domain = domain
        self.config = config
        self.xl = xl
        self.timeout = timeout

    def state(self) -> DomainState:
        argv = [self.xl, "list", self.domain]
        proc = _run(argv, self.timeout)
        if proc.returncode != 0:
            text = proc.stderr + proc.stdout
            if "invalid domain identifier" in text or "not found" in text.lower():
                return DomainState.ABSENT
            raise _fail(argv, proc)
        return parse_xl_list(proc.stdout, self.domain)

    def destroy(self) -> None:
        argv = [self.xl, "destroy", self.domain]
        proc = _run(argv, self.timeout)
        if proc.returncode != 0:
            text = proc.stderr + proc.stdout
            if "invalid domain identifier" in text:
                return  # already gone
            raise _fail(argv, proc)

    def create(self) -> None:
        argv = [self.xl, "create", self.config]
        proc = _run(argv, self.timeout)
        if proc.returncode != 0:
            raise _fail(argv, proc)


def parse_xl_list(text: str, domain: str) -> DomainState:
    """The state of ``domain`` in ``xl list`` output (Name ID Mem VCPUs State Time)."""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 5 and words[0] == domain:
            flags = words[4]
            if "d" in flags:
                return DomainState.DYING
            if "c" in flags:
                return DomainState.CRASHED
            if "s" in flags:
                return DomainState.SHUT
            if "p" in flags:
                return DomainState.PAUSED
            if "r" in flags or "b" in flags or set(flags) <= {"-"}:
                return DomainState.RUNNING
            return DomainState.UNKNOWN
    return DomainState.ABSENT


class CommandDriver:
    """Three argv templates; ``{domain}`` and ``{vm}`` are replaced in every word.

    The state command prints one of the DomainState values (first word of stdout).
    """

    def __init__(self, vm: str, domain: str, destroy: Sequence[str], create: Sequence[str],
                 state: Sequence[str], *, timeout: float = 60.0) -> None:
        self.vm = vm
        self.domain = domain
        self._destroy = tuple(destroy)
        self._create = tuple(create)
        self._state = tuple(state)
        self.timeout = timeout

    def _argv(self, template: Sequence[str]) -> list[str]:
        return [w.replace("{domain}", self.domain).replace("{vm}", self.vm) for w in template]

    def _call(self, template: Sequence[str]) -> str:
        argv = self._argv(template)
        proc = _run(argv, self.timeout)
        if proc.returncode != 0:
            raise _fail(argv, proc)
        return proc.stdout

    def state(self) -> DomainState:
        out = self._call(self._state).split()
        word = out[0].lower() if out else ""
        try:
            return DomainState(word)
        except ValueError:
            return DomainState.UNKNOWN

    def destroy(self) -> None:
        self._call(self._destroy)

    def create(self) -> None:
        self._call(self._create)


class LibvirtDriver:
    """python3-libvirt: ``lookupByName(domain)``, ``.state()``, ``.destroy()``, ``.create()``."""

    def __init__(self, domain: str, uri: str | None = None) -> None:
        try:
            import libvirt  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise DriverError("driver libvirt needs python3-libvirt (not installed)") from None
        self._libvirt: Any = libvirt
        self.domain = domain
        self.uri = uri

    def _lookup(self) -> Any:
        lv = self._libvirt
        try:
            conn = lv.open(self.uri)
            return conn.lookupByName(self.domain)
        except lv.libvirtError as exc:
            if getattr(exc, "get_error_code", lambda: None)() == lv.VIR_ERR_NO_DOMAIN:
                return None
            raise DriverError(f"libvirt {self.domain}: {exc}") from None

    def state(self) -> DomainState:
        lv = self._libvirt
        dom = self._lookup()
        if dom is None:
            return DomainState.ABSENT
        try:
            code = dom.state()[0]
        except lv.libvirtError as exc:
            raise DriverError(f"libvirt {self.domain}: state: {exc}") from None
        return {
            lv.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
            lv.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
            lv.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
            lv.VIR_DOMAIN_SHUTDOWN: DomainState.DYING,  # being shut down: not dead yet
            lv.VIR_DOMAIN_SHUTOFF: DomainState.SHUT,
            lv.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
        }.get(code, DomainState.UNKNOWN)

    def destroy(self) -> None:
        lv = self._libvirt
        dom = self._lookup()
        if dom is None:
            return
        try:
            if dom.isActive():
                dom.destroy()
        except lv.libvirtError as exc:
            raise DriverError(f"libvirt {self.domain}: destroy: {exc}") from None

    def create(self) -> None:
        lv = self._libvirt
        dom = self._lookup()
        if dom is None:
            raise DriverError(f"libvirt {self.domain}: not defined, cannot create")
        try:
            dom.create()
        except lv.libvirtError as exc:
            raise DriverError(f"libvirt {self.domain}: create: {exc}") from None


def build_driver(vm: VMSpec) -> Driver:
    if vm.driver == "xl":
        assert vm.config is not None
        return XlDriver(vm.domain, vm.config, timeout=vm.command_timeout)
    if vm.driver == "libvirt":
        return LibvirtDriver(vm.domain, vm.uri)
    return CommandDriver(vm.name, vm.domain, vm.destroy_command, vm.create_command,
                         vm.state_command, timeout=vm.command_timeout)
