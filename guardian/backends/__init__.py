"""Service-manager backends: how guardian starts, stops and inspects a unit.

Public API::

    from guardian.backends import load_backend_class, BackendError, UnitState

    backend = load_backend_class("supervisord").from_options(Options({}))
    web = backend.controller("web", Options({"unit": "apache2"}))
    await web.restart(time.monotonic() + 5.0)
    status = await web.status(time.monotonic() + 1.0)

Built in: ``supervisord``, ``systemd``, ``lsb``, ``command``.  Third-party
backends are published in the ``guardian.backends`` entry-point group, or
named directly as ``package.module:Class``.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from checks._registry import import_object, load_entry_point

from ._base import Backend, BackendError, Controller, UnitEvent, UnitState, UnitStatus
from .command import CommandBackend
from .lsb import LsbBackend
from .systemd import SystemdBackend

if TYPE_CHECKING:
    from .supervisord import SupervisordBackend, listener_config_snippet

ENTRY_POINT_GROUP = "guardian.backends"

#: Built-in backends.  The supervisord backend is imported on first use: it needs
#: the ``supervisor`` package, which a guest without supervisord need not have.
_BUILTINS: dict[str, type[Backend] | str] = {
    "supervisord": "guardian.backends.supervisord:SupervisordBackend",
    "systemd": SystemdBackend,
    "lsb": LsbBackend,
    "command": CommandBackend,
}
_LAZY = {"SupervisordBackend", "listener_config_snippet"}
_NEEDS = {"supervisord": "the supervisor package (Debian: supervisor)"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import supervisord

        return getattr(supervisord, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _builtin(name: str) -> type[Backend]:
    entry = _BUILTINS[name]
    if isinstance(entry, str):
        try:
            entry = _import_path(entry)
        except UnknownBackendError as exc:
            raise UnknownBackendError(
                f"backend {name!r} needs {_NEEDS.get(name, 'a missing module')}: {exc}"
            ) from None
        _BUILTINS[name] = entry
    return entry


class UnknownBackendError(LookupError):
    """No backend of that name is built in, published, or importable."""


def _check_class(obj: object, what: str) -> type[Backend]:
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        raise UnknownBackendError(f"{what} is not a subclass of guardian.backends.Backend")
    return obj


def _import_path(path: str) -> type[Backend]:
    return _check_class(import_object(path, UnknownBackendError), repr(path))


def available_backends() -> dict[str, str]:
    """Every backend name known without importing plug-ins: name -> ``module:Class``."""
    found = {name: cls if isinstance(cls, str) else f"{cls.__module__}:{cls.__qualname__}"
             for name, cls in _BUILTINS.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def load_backend_class(name: str) -> type[Backend]:
    """Resolve ``name``: a built-in, an entry-point name, or ``pkg.mod:Class``.

    Raises ``UnknownBackendError`` (a ``LookupError``) with the known names.
    """
    if name in _BUILTINS:
        return _builtin(name)
    if ":" in name:
        return _import_path(name)
    obj = load_entry_point(ENTRY_POINT_GROUP, name, UnknownBackendError, "backend")
    if obj is not None:
        return _check_class(obj, f"entry point {name!r}")
    known = ", ".join(sorted(available_backends()))
    raise UnknownBackendError(f"unknown backend {name!r} (known: {known}; or module:Class)")


__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendError",
    "CommandBackend",
    "Controller",
    "LsbBackend",
    "SupervisordBackend",
    "SystemdBackend",
    "UnitEvent",
    "UnitState",
    "UnitStatus",
    "UnknownBackendError",
    "available_backends",
    "listener_config_snippet",
    "load_backend_class",
]
