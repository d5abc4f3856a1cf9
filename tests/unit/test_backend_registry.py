"""Finding a backend class: built-ins, the entry-point group, ``module:Class``."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from checks import Options
from guardian.backends import (
    ENTRY_POINT_GROUP,
    Backend,
    CommandBackend,
    Controller,
    LsbBackend,
    SupervisordBackend,
    SystemdBackend,
    UnitStatus,
    UnknownBackendError,
    available_backends,
    load_backend_class,
)


class PluginBackend(Backend):
    """A third-party backend, named by module:Class."""

    name = "plugin"

    @classmethod
    def from_options(cls, opts: Options) -> PluginBackend:
        return cls()

    def controller(self, service: str, opts: Options) -> Controller:
        raise NotImplementedError


NotABackend = UnitStatus


def test_builtins() -> None:
    expected = {"supervisord": SupervisordBackend, "systemd": SystemdBackend,
                "lsb": LsbBackend, "command": CommandBackend}
    for name, cls in expected.items():
        assert load_backend_class(name) is cls
        assert cls.name == name
    assert set(expected) <= set(available_backends())


def test_entry_points_declare_the_builtins() -> None:
    declared = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if not declared:
        pytest.skip("guardian is not installed (no entry points)")
    assert declared["supervisord"] == "guardian.backends.supervisord:SupervisordBackend"
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in ("supervisord", "systemd", "lsb", "command"):
            assert ep.load() is load_backend_class(ep.name)


def test_module_class_path() -> None:
    assert load_backend_class(f"{__name__}:PluginBackend") is PluginBackend


def test_unknown_names_are_lookup_errors() -> None:
    with pytest.raises(LookupError, match=r"unknown backend 'upstart' \(known: command, lsb, "
                                          r"supervisord, systemd"):
        load_backend_class("upstart")
    with pytest.raises(UnknownBackendError, match="is not a subclass"):
        load_backend_class(f"{__name__}:NotABackend")
    with pytest.raises(UnknownBackendError, match="has no attribute"):
        load_backend_class(f"{__name__}:Nope")
    with pytest.raises(UnknownBackendError, match="cannot import"):
        load_backend_class("no_such_module_x:Thing")
