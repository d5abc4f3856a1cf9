"""Finding a check class by name: built-ins, the ``guardian.checks`` entry-point
group, or an explicit ``module:Class`` path."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ._base import Check

ENTRY_POINT_GROUP = "guardian.checks"

_BUILTINS = {
    "http": "checks.http:HttpCheck",
    "dns": "checks.dns:DnsCheck",
    "smtp": "checks.smtp:SmtpCheck",
    "tcp": "checks.tcp:TcpCheck",
    "exec": "checks.exec:ExecCheck",
}


class UnknownCheckError(LookupError):
    """No check of that name is built in, published, or importable."""


def import_object(path: str, error: type[Exception]) -> object:
    """The object a ``module:attr.attr`` path names; ``error(message)`` if none."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise error(f"{path!r} is not of the form module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"cannot import {module_name!r}: {exc}") from None
    obj: object = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise error(f"{module_name!r} has no attribute {attr!r}")
    return obj


def _import_path(path: str) -> type[Check]:
    obj = import_object(path, UnknownCheckError)
    if not (isinstance(obj, type) and issubclass(obj, Check)):
        raise UnknownCheckError(f"{path!r} is not a subclass of checks.Check")
    return obj


def load_entry_point(group: str, name: str, error: type[Exception],
                     what: str) -> object | None:
    """The object the entry point ``name`` of ``group`` names (None: there is none);
    ``error`` when it fails to load (a broken plug-in is a config error)."""
    for ep in entry_points(group=group):
        if ep.name == name:
            try:
                obj: object = ep.load()
            except Exception as exc:  # noqa: BLE001 - handed on as a config error
                raise error(f"{what} plug-in {name!r} failed to load: {exc}") from None
            return obj
    return None


def available_checks() -> dict[str, str]:
    """Every check name known without importing it: name -> ``module:Class``."""
    found = dict(_BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def load_check_class(name: str) -> type[Check]:
    """Resolve ``name`` (``http``, an entry-point name, or ``pkg.mod:Class``)."""
    if ":" in name:
        return _import_path(name)
    if name in _BUILTINS:
        return _import_path(_BUILTINS[name])
    obj = load_entry_point(ENTRY_POINT_GROUP, name, UnknownCheckError, "check")
    if obj is not None:
        if not (isinstance(obj, type) and issubclass(obj, Check)):
            raise UnknownCheckError(f"entry point {name!r} is not a checks.Check subclass")
        return obj
    known = ", ".join(sorted(available_checks()))
    raise UnknownCheckError(f"unknown check type {name!r} (known: {known}; or module:Class)")
