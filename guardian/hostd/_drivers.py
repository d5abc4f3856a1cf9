"""Drivers: how hostd sees and acts on a domain (xl, libvirt, pacemaker, a command, the lab).

A driver has three blocking methods, called from a worker thread:

* ``state()`` -> DomainState (RUNNING, PAUSED, SHUT, CRASHED, DYING, ABSENT, UNKNOWN);
* ``destroy()`` — hard power-off; must not fail on an already absent domain;
* ``create()`` — start a new instance.

and may have a fourth, ``recreate()``: a *managed restart*, for drivers whose cluster
manager owns restarts (Pacemaker). The engine then calls it instead of destroy ->
confirm death -> create; it returns only once the old instance was stopped (confirmed
by the manager) and the new one started, and raises DriverError otherwise.

Failures raise DriverError with the command and its output. "Unknown" and "the
toolstack does not answer" are never "dead": a driver that cannot tell raises
DriverError or returns UNKNOWN, and the engine then never creates a second instance.
Identity is the VM's UUID: a domain of the configured name with another UUID is
never destroyed (DriverError).

Drivers are classes found by name (entry-point group ``guardian.hypervisors``, the
built-ins below, or ``module:Class``), built with ``from_spec(vm)``. Their ``KEYS`` are
the driver-specific ``[vms.NAME]`` keys they use, ``REQUIRED`` those they need.
"""

from __future__ import annotations

import enum
import json
import subprocess
import threading
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

from checks._registry import import_object, load_entry_point

from ._config import VMSpec

ENTRY_POINT_GROUP = "guardian.hypervisors"

#: Built-in drivers (also published as entry points; these work without the package
#: metadata, e.g. from a source tree on PYTHONPATH).
_BUILTINS = {
    "xl": "guardian.hostd._drivers:XlDriver",
    "libvirt": "guardian.hostd._drivers:LibvirtDriver",
    "command": "guardian.hostd._drivers:CommandDriver",
    "pacemaker": "guardian.hostd._pacemaker:PacemakerDriver",
    "lab": "guardian.lab._hostd_driver:LabDriver",
}


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


class UnknownDriverError(LookupError):
    """No driver of that name is built in, published, or importable."""


@runtime_checkable
class Driver(Protocol):
    def state(self) -> DomainState: ...

    def destroy(self) -> None: ...

    def create(self) -> None: ...


def _run(argv: Sequence[str], timeout: float,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False, env=env)
    except subprocess.TimeoutExpired:
        raise DriverError(f"{' '.join(argv)}: no answer in {timeout:g}s") from None
    except OSError as exc:
        raise DriverError(f"{' '.join(argv)}: {exc.strerror}") from None


def _fail(argv: Sequence[str], proc: subprocess.CompletedProcess[str]) -> DriverError:
    out = (proc.stderr.strip() or proc.stdout.strip())[-400:]
    return DriverError(f"{' '.join(argv)}: exit {proc.returncode}: {out}")


def _same_uuid(a: str, b: str) -> bool:
    return a.replace("-", "").strip().lower() == b.replace("-", "").strip().lower()


# -- xl ---------------------------------------------------------------------------------

_XL_GONE = ("invalid domain identifier", "not found")


class XlDriver:
    """Xen's ``xl``: ``xl list -l DOMAIN`` (JSON: domid, name, uuid) checks identity,
    the state comes from that JSON when it carries one, else from ``xl list DOMAIN``'s
    flags; ``xl destroy DOMID`` (the domid whose UUID was checked, so a domain created
    meanwhile under the same name is not hit); ``xl create CONFIG``.

    A domain of that name with another UUID: DriverError, never destroyed. A dying
    domain may be missing from ``xl list -l`` (its config cannot be read any more):
    then the flags of plain ``xl list`` decide, and a domain that shows as running
    there but cannot be identified is UNKNOWN.
    """

    KEYS: ClassVar[frozenset[str]] = frozenset({"config", "xl"})
    REQUIRED: ClassVar[frozenset[str]] = frozenset({"config"})

    def __init__(self, domain: str, config: str, *, uuid: str | None = None,
                 xl: str = "xl", timeout: float = 60.0) -> None:
        self.domain = domain
        self.config = config
        self.uuid = uuid
        self.xl = xl
        self.timeout = timeout

    @classmethod
    def from_spec(cls, vm: VMSpec) -> XlDriver:
        if vm.config is None:
            raise DriverError(f"vms.{vm.name}.config: required by driver xl")
        return cls(vm.domain, vm.config, uuid=vm.uuid, xl=vm.xl or "xl",
                   timeout=vm.command_timeout)

    def _list_long(self) -> dict[str, Any] | None:
        """This domain's entry of ``xl list -l`` (None: not listed); checks the UUID."""
        argv = [self.xl, "list", "-l", self.domain]
        proc = _run(argv, self.timeout)
        if proc.returncode != 0:
            text = (proc.stderr + proc.stdout).lower()
            if any(g in text for g in _XL_GONE):
                return None
            raise _fail(argv, proc)
        try:
            data = json.loads(proc.stdout or "[]")
        except ValueError:
            raise DriverError(f"{' '.join(argv)}: output is not JSON (set "
                              "output_format=\"json\" in /etc/xen/xl.conf)") from None
        entries = data if isinstance(data, list) else [data]
        for entry in entries:
            if isinstance(entry, dict) and xl_entry_name(entry) == self.domain:
                uuid = xl_entry_uuid(entry)
                if self.uuid is not None:
                    if uuid is None:
                        raise DriverError(f"{' '.join(argv)}: no uuid in its output")
                    if not _same_uuid(uuid, self.uuid):
                        raise DriverError(
                            f"xl domain {self.domain!r} has uuid {uuid}, not the configured "
                            f"{self.uuid}: another domain under that name; not touched")
                return entry
        return None

    def _list_flags(self) -> DomainState:
        argv = [self.xl, "list", self.domain]
        proc = _run(argv, self.timeout)
        if proc.returncode != 0:
            text = (proc.stderr + proc.stdout).lower()
            if any(g in text for g in _XL_GONE):
                return DomainState.ABSENT
            raise _fail(argv, proc)
        return parse_xl_list(proc.stdout, self.domain)

    def state(self) -> DomainState:
        entry = self._list_long()
        flags = self._list_flags()
        if entry is None:
            if flags in (DomainState.RUNNING, DomainState.PAUSED):
                return DomainState.UNKNOWN  # listed, but its identity cannot be checked
            return flags
        own = xl_entry_state(entry)
        return own if own is not None else flags

    def destroy(self) -> None:
        entry = self._list_long()
        if entry is None:
            if self._list_flags() in (DomainState.RUNNING, DomainState.PAUSED):
                raise DriverError(f"xl domain {self.domain!r}: listed but not identifiable "
                                  "by xl list -l; not destroyed")
            target = self.domain  # absent or on its way out: destroying it is harmless
        else:
            domid = entry.get("domid")
            target = str(domid) if isinstance(domid, int) else self.domain
        argv = [self.xl, "destroy", target]
        proc = _run(argv, self.timeout)
        if proc.returncode != 0:
            if "invalid domain identifier" in (proc.stderr + proc.stdout).lower():
                return  # already gone
            raise _fail(argv, proc)

    def create(self) -> None:
        argv = [self.xl, "create", self.config]
        proc = _run(argv, self.timeout)
        if proc.returncode != 0:
            raise _fail(argv, proc)


def _cinfo(entry: dict[str, Any]) -> dict[str, Any]:
    config = entry.get("config")
    cinfo = config.get("c_info") if isinstance(config, dict) else None
    return cinfo if isinstance(cinfo, dict) else {}


def xl_entry_name(entry: dict[str, Any]) -> str | None:
    """``config.c_info.name`` of an ``xl list -l`` entry (or a top-level ``name``)."""
    name = _cinfo(entry).get("name", entry.get("name"))
    return name if isinstance(name, str) else None


def xl_entry_uuid(entry: dict[str, Any]) -> str | None:
    """``config.c_info.uuid`` of an ``xl list -l`` entry (or a top-level ``uuid``)."""
    uuid = _cinfo(entry).get("uuid", entry.get("uuid"))
    return uuid if isinstance(uuid, str) else None


def xl_entry_state(entry: dict[str, Any]) -> DomainState | None:
    """The state an ``xl list -l`` entry carries, if any: a ``state`` flags string
    (``r-----``) or libxl_dominfo booleans under ``info``/``dominfo``."""
    flags = entry.get("state")
    if isinstance(flags, str):
        return _flags_state(flags)
    info = entry.get("info", entry.get("dominfo"))
    if isinstance(info, dict) and any(k in info for k in ("running", "blocked", "dying")):
        if info.get("dying"):
            return DomainState.DYING
        if info.get("shutdown"):
            reason = info.get("shutdown_reason")
            return DomainState.CRASHED if reason in (3, "crash") else DomainState.SHUT
        if info.get("paused"):
            return DomainState.PAUSED
        return DomainState.RUNNING
    return None


def _flags_state(flags: str) -> DomainState:
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


def parse_xl_list(text: str, domain: str) -> DomainState:
    """The state of ``domain`` in ``xl list`` output (Name ID Mem VCPUs State Time)."""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 5 and words[0] == domain:
            return _flags_state(words[4])
    return DomainState.ABSENT


# -- command ----------------------------------------------------------------------------


class CommandDriver:
    """Three argv templates; ``{domain}``, ``{vm}`` and ``{uuid}`` are replaced in every
    word.

    The state command prints one of the DomainState values (first word of stdout).
    """

    KEYS: ClassVar[frozenset[str]] = frozenset(
        {"destroy_command", "create_command", "state_command"})
    REQUIRED: ClassVar[frozenset[str]] = KEYS

    def __init__(self, vm: str, domain: str, destroy: Sequence[str], create: Sequence[str],
                 state: Sequence[str], *, timeout: float = 60.0, uuid: str = "") -> None:
        self.vm = vm
        self.domain = domain
        self.uuid = uuid
        self._destroy = tuple(destroy)
        self._create = tuple(create)
        self._state = tuple(state)
        self.timeout = timeout

    @classmethod
    def from_spec(cls, vm: VMSpec) -> CommandDriver:
        return cls(vm.name, vm.domain, vm.destroy_command, vm.create_command,
                   vm.state_command, timeout=vm.command_timeout, uuid=vm.uuid)

    def _argv(self, template: Sequence[str]) -> list[str]:
        return [w.replace("{domain}", self.domain).replace("{vm}", self.vm)
                .replace("{uuid}", self.uuid) for w in template]

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


# -- libvirt ----------------------------------------------------------------------------


class LibvirtDriver:
    """python3-libvirt (Debian's package; not on PyPI's index for this project).

    One connection per driver, opened on first use and reopened after a failure. The
    domain is looked up by UUID (``lookupByUUIDString``) when a uuid is configured; a
    domain of the configured name with another UUID is an error, never destroyed.
    A connection failure is a DriverError (the engine: UNKNOWN, never dead).
    """

    KEYS: ClassVar[frozenset[str]] = frozenset({"uri"})
    REQUIRED: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, domain: str, uri: str | None = None, *,
                 uuid: str | None = None) -> None:
        try:
            import libvirt  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise DriverError("driver libvirt needs python3-libvirt (not installed)") from None
        self._libvirt: Any = libvirt
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no stderr noise
        self.domain = domain
        self.uri = uri
        self.uuid = uuid
        self._conn: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, vm: VMSpec) -> LibvirtDriver:
        return cls(vm.domain, vm.uri, uuid=vm.uuid)

    def _what(self) -> str:
        return f"libvirt {self.uri or '(default uri)'} {self.domain}"

    def _error(self, exc: Exception, doing: str) -> DriverError:
        """Drop the connection (reopened next time) unless the error was about the
        domain itself."""
        lv = self._libvirt
        code = getattr(exc, "get_error_code", lambda: None)()
        if code not in (lv.VIR_ERR_NO_DOMAIN, lv.VIR_ERR_OPERATION_INVALID):
            self._close()
        return DriverError(f"{self._what()}: {doing}: {exc}")

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except self._libvirt.libvirtError:
                pass

    def close(self) -> None:
        with self._lock:
            self._close()

    def _connection(self) -> Any:
        lv = self._libvirt
        if self._conn is not None:
            try:
                if self._conn.isAlive():
                    return self._conn
            except lv.libvirtError:
                pass
            self._close()
        try:
            self._conn = lv.open(self.uri)
        except lv.libvirtError as exc:
            raise DriverError(f"{self._what()}: cannot connect: {exc}") from None
        return self._conn

    def _lookup(self) -> Any:
        """The domain (None: not defined); DriverError on a UUID mismatch."""
        lv = self._libvirt
        conn = self._connection()
        if self.uuid:
            try:
                return conn.lookupByUUIDString(self.uuid)
            except lv.libvirtError as exc:
                if exc.get_error_code() != lv.VIR_ERR_NO_DOMAIN:
                    raise self._error(exc, "lookup by uuid") from None
        try:
            dom = conn.lookupByName(self.domain)
        except lv.libvirtError as exc:
            if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                return None
            raise self._error(exc, "lookup") from None
        if self.uuid:  # found by name only: another domain under that name
            raise DriverError(f"{self._what()}: has uuid {dom.UUIDString()}, not the "
                              f"configured {self.uuid}; not touched")
        return dom

    def state(self) -> DomainState:
        lv = self._libvirt
        with self._lock:
            dom = self._lookup()
            if dom is None:
                return DomainState.ABSENT
            try:
                code = dom.state()[0]
            except lv.libvirtError as exc:
                if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                    return DomainState.ABSENT  # undefined meanwhile (transient, destroyed)
                raise self._error(exc, "state") from None
        return {
            lv.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
            lv.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
            lv.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
            lv.VIR_DOMAIN_PMSUSPENDED: DomainState.PAUSED,
            lv.VIR_DOMAIN_SHUTDOWN: DomainState.DYING,  # being shut down: not dead yet
            lv.VIR_DOMAIN_SHUTOFF: DomainState.SHUT,
            lv.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
        }.get(code, DomainState.UNKNOWN)

    def destroy(self) -> None:
        lv = self._libvirt
        with self._lock:
            dom = self._lookup()
            if dom is None:
                return
            try:
                if dom.isActive():
                    dom.destroy()
            except lv.libvirtError as exc:
                if exc.get_error_code() in (lv.VIR_ERR_NO_DOMAIN,
                                            lv.VIR_ERR_OPERATION_INVALID):
                    return  # gone or shut off meanwhile
                raise self._error(exc, "destroy") from None

    def create(self) -> None:
        lv = self._libvirt
        with self._lock:
            dom = self._lookup()
            if dom is None:
                raise DriverError(f"{self._what()}: not defined, cannot create")
            try:
                dom.create()
            except lv.libvirtError as exc:
                raise self._error(exc, "create") from None


# -- finding drivers --------------------------------------------------------------------


def available_drivers() -> dict[str, str]:
    """Every driver name known without importing it: name -> ``module:Class``."""
    found = dict(_BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def _check(obj: object, what: str) -> type[Any]:
    if not (isinstance(obj, type) and callable(getattr(obj, "from_spec", None))
            and all(callable(getattr(obj, m, None)) for m in ("state", "destroy", "create"))):
        raise UnknownDriverError(
            f"{what} is not a driver class (from_spec(), state(), destroy(), create())")
    return obj


def load_driver_class(name: str) -> type[Any]:
    """Resolve ``name``: a built-in, a ``guardian.hypervisors`` entry point, or
    ``pkg.mod:Class``. Raises UnknownDriverError listing the known names."""
    if ":" in name:
        return _check(import_object(name, UnknownDriverError), repr(name))
    if name in _BUILTINS:
        return _check(import_object(_BUILTINS[name], UnknownDriverError), repr(name))
    obj = load_entry_point(ENTRY_POINT_GROUP, name, UnknownDriverError, "driver")
    if obj is not None:
        return _check(obj, f"entry point {name!r}")
    known = ", ".join(sorted(available_drivers()))
    raise UnknownDriverError(f"unknown driver {name!r} (known: {known}; or module:Class)")


def driver_keys(cls: type[Any]) -> tuple[frozenset[str], frozenset[str]]:
    """(keys used, keys required) of a driver class (none if it declares none)."""
    keys: frozenset[str] = frozenset(getattr(cls, "KEYS", ()))
    required: frozenset[str] = frozenset(getattr(cls, "REQUIRED", ()))
    return keys, required


def build_driver(vm: VMSpec) -> Driver:
    try:
        cls = load_driver_class(vm.driver)
    except UnknownDriverError as exc:
        raise DriverError(f"vms.{vm.name}.driver: {exc}") from None
    driver: Driver = cls.from_spec(vm)
    return driver
