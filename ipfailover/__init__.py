"""Active/standby IP failover for guardian.

The VIP layer: a service address held on a kernel lease and moved between two VMs.
Every function works in the network namespace of the calling thread and is bounded in
time (blocking: call it from a worker thread)::

    from ipfailover import VipSpec, add_vip, announce, renew_vip, remove_vip

    spec = VipSpec.parse("192.0.2.100/24", "eth0", lifetime=3)
    add_vip(spec)                  # the kernel drops it by itself 3-4 s after the last renewal
    announce(spec, count=3, interval=0.1)   # gratuitous ARP / unsolicited NA
    renew_vip(spec)                # every lifetime/3 while master
    remove_vip(spec)               # on demotion

The VIP layer needs pyroute2 and scapy; it is imported on first use of one of its
names, so the pure parts of this package load without them. A daemon should touch it at
startup (``ipfailover.prepare(spec)`` builds the announcement frames too): the imports
take 0.2-0.4 s, which must not land on the first takeover.

The pair core is pure (no sockets, no clock): ``Endpoint`` seals and opens the
authenticated packets (``_wire``), ``PairMachine.transition(event, now)`` turns peer
messages, health and ticks into actions (``_machine``)::

    ep = Endpoint(KeyRing.load("/etc/guardian/failover.key"), "web", "vm01",
                  Generation("/var/lib/guardian").advance(floor=int(time.time())))
    pm = PairMachine(PairConfig(node="vm01", priority=150), time.monotonic())
    for action in pm.transition(PeerMessage(ep.open(packet)), time.monotonic()): ...
    # and a Tick() at pm.next_wakeup

The engine (``PairEngine``, asyncio) drives one group with real sockets and addresses:
``await PairEngine(GroupSettings(...)).run()``; guardiand runs one per
``[failover.groups.NAME]``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._machine import (
    Action,
    ClockJump,
    Fence,
    FenceResult,
    Input,
    LocalHealth,
    Notice,
    PairConfig,
    PairMachine,
    PeerMessage,
    PingResult,
    Reannounce,
    ReleaseVIPs,
    RenewVIPs,
    RunNotify,
    Send,
    SendGoodbye,
    SendHeartbeat,
    SendProbe,
    SendProbeAck,
    SendSwitchover,
    Shutdown,
    StateChange,
    SwitchoverCommand,
    SwitchoverOutcome,
    TakeVIPs,
    Tick,
)
from ._settings import DEFAULT_PORT, GroupSettings, PathSettings
from ._states import PairState, SwitchoverRole
from ._wire import (
    MAX_SIZE,
    Body,
    Drop,
    DropCounters,
    DropReason,
    Endpoint,
    Flags,
    Generation,
    GenerationError,
    KeyFileError,
    KeyRing,
    Message,
    MsgType,
    ReplayGuard,
    decode,
    encode,
)

if TYPE_CHECKING:
    from ._announce import (
        announce,
        arp_probe,
        converged,
        duplicate_holders,
        garp,
        ns_probe,
        prepare,
        unicast_announce,
        unsolicited_na,
    )
    from ._engine import EngineRefused, KernelVipOps, PairEngine, ServiceHooks, VipOps
    from ._preflight import Problem, ProblemKind, Severity, preflight, read_sysctl
    from ._vip import (
        InterfaceNotFound,
        LinkInfo,
        Neighbour,
        VipError,
        VipSpec,
        VipState,
        add_vip,
        has_vip,
        interface_mac,
        link_info,
        neighbours,
        recent_clients,
        remove_vip,
        renew_vip,
        vip_state,
        vips_present,
    )

_VIP_LAYER = {
    "._vip": (
        "InterfaceNotFound",
        "LinkInfo",
        "Neighbour",
        "VipError",
        "VipSpec",
        "VipState",
        "add_vip",
        "has_vip",
        "interface_mac",
        "link_info",
        "neighbours",
        "recent_clients",
        "remove_vip",
        "renew_vip",
        "vip_state",
        "vips_present",
    ),
    "._announce": (
        "announce",
        "arp_probe",
        "converged",
        "duplicate_holders",
        "garp",
        "ns_probe",
        "prepare",
        "unicast_announce",
        "unsolicited_na",
    ),
    "._preflight": ("Problem", "ProblemKind", "Severity", "preflight", "read_sysctl"),
    "._engine": ("EngineRefused", "KernelVipOps", "PairEngine", "ServiceHooks", "VipOps"),
}
_LAZY = {name: module for module, names in _VIP_LAYER.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    # the pair core: _wire, _states, _machine
    "MAX_SIZE",
    "Action",
    "Body",
    "ClockJump",
    "Drop",
    "DropCounters",
    "DropReason",
    "Endpoint",
    "Fence",
    "FenceResult",
    "Flags",
    "Generation",
    "GenerationError",
    "Input",
    "KeyFileError",
    "KeyRing",
    "LocalHealth",
    "Message",
    "MsgType",
    "Notice",
    "PairConfig",
    "PairMachine",
    "PairState",
    "PeerMessage",
    "PingResult",
    "Reannounce",
    "ReleaseVIPs",
    "RenewVIPs",
    "ReplayGuard",
    "RunNotify",
    "Send",
    "SendGoodbye",
    "SendHeartbeat",
    "SendProbe",
    "SendProbeAck",
    "SendSwitchover",
    "Shutdown",
    "StateChange",
    "SwitchoverCommand",
    "SwitchoverOutcome",
    "SwitchoverRole",
    "TakeVIPs",
    "Tick",
    "decode",
    "encode",
    # settings and the engine (asyncio; imports the VIP layer)
    "DEFAULT_PORT",
    "EngineRefused",
    "GroupSettings",
    "KernelVipOps",
    "PairEngine",
    "PathSettings",
    "ServiceHooks",
    "VipOps",
    # the VIP layer
    "InterfaceNotFound",
    "LinkInfo",
    "Neighbour",
    "Problem",
    "ProblemKind",
    "Severity",
    "VipError",
    "VipSpec",
    "VipState",
    "add_vip",
    "announce",
    "arp_probe",
    "converged",
    "duplicate_holders",
    "garp",
    "has_vip",
    "interface_mac",
    "link_info",
    "neighbours",
    "ns_probe",
    "preflight",
    "prepare",
    "read_sysctl",
    "recent_clients",
    "remove_vip",
    "renew_vip",
    "unicast_announce",
    "unsolicited_na",
    "vip_state",
    "vips_present",
]
