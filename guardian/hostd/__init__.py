"""guardian-hostd: the dom0 side of escalation.

Authenticates escalation requests from guests (HMAC, per-VM keys, replay
protection), applies policy (stale incarnations, per-VM rate limits), drives the
toolstack (xl, libvirt, or commands) and journals every decision.
"""

from ._alert import Alerter
from ._app import Hostd, build
from ._auth import AuthError, NonceCache, Verifier, mac, sign
from ._config import HostdSpec, PolicySpec, VMSpec, load, parse
from ._drivers import (
    CommandDriver,
    DomainState,
    Driver,
    DriverError,
    LibvirtDriver,
    XlDriver,
    build_driver,
    parse_xl_list,
)
from ._engine import (
    Clock,
    Decision,
    Engine,
    Kind,
    Reply,
    Request,
    Snapshot,
    SystemClock,
    decide,
    history,
    next_allowed,
    parse_request,
)
from ._server import HostdServer
from ._state import Journal, StateStore, read_journal, read_maintenance, set_maintenance

__all__ = [
    "Alerter", "AuthError", "Clock", "CommandDriver", "Decision", "DomainState", "Driver",
    "DriverError", "Engine", "Hostd", "HostdServer", "HostdSpec", "Journal", "Kind",
    "LibvirtDriver", "NonceCache", "PolicySpec", "Reply", "Request", "Snapshot",
    "StateStore", "SystemClock", "VMSpec", "Verifier", "XlDriver", "build", "build_driver",
    "decide", "history", "load", "mac", "next_allowed", "parse", "parse_request",
    "parse_xl_list", "read_journal", "read_maintenance", "set_maintenance", "sign",
]
