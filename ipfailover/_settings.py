"""What one failover group is configured with: plain, frozen data (no I/O, no imports of
the VIP layer), built by guardian's config loader or by hand.

Two ``GroupSettings`` that compare equal describe the same engine: guardian's reload
keeps a running engine whose settings did not change.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from ._machine import PairConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

#: Heartbeat's port (IANA "ha-cluster", 694/udp): the pair's UDP port by default.
DEFAULT_PORT = 694
DEFAULT_KEY_FILE = "/etc/guardian/failover.key"


@dataclass(frozen=True)
class PathSettings:
    """One heartbeat path: our address, the peer's, and optionally the interface the
    socket is bound to (SO_BINDTODEVICE), e.g. a dedicated back-to-back link."""

    local: IPAddress
    peer: IPAddress
    interface: str | None = None

    def __str__(self) -> str:
        dev = f" dev {self.interface}" if self.interface else ""
        return f"{self.local} -> {self.peer}{dev}"


@dataclass(frozen=True)
class GroupSettings:
    """One failover group (``[failover.groups.NAME]``) as the engine needs it."""

    group: str
    node: str
    peer: str
    vips: tuple[IPInterface, ...]
    paths: tuple[PathSettings, ...]
    interface: str = "eth0"
    priority: int = 100
    port: int = DEFAULT_PORT
    key_file: str = DEFAULT_KEY_FILE
    state_dir: str = "/var/lib/guardian"
    interval: float = 0.1
    lease: int = 3
    preempt: bool = False
    preempt_delay: float = 30.0
    min_healthy: float = 10.0
    init_dead: float = 2.0
    fence: Literal["none", "dom0"] = "none"
    #: ``fence = "dom0"``: the peer's name at dom0 (guardian-hostd's ``[vms.NAME]``;
    #: default the peer's node name) and how long to wait for dom0 to confirm its death
    fence_vm: str = ""
    fence_timeout: float = 15.0
    #: tracked services: their ``failover`` ladder rung makes this node FAULT
    services: tuple[str, ...] = ()
    #: services started on takeover (before the VIPs), stopped on release (after)
    cold: tuple[str, ...] = ()
    #: how long a takeover waits for the cold services to be up before adding the VIPs
    cold_timeout: float = 30.0
    ping: tuple[IPAddress, ...] = ()
    ping_interval: float = 1.0
    ping_timeout: float = 0.5
    notify: tuple[str, ...] = ()
    notify_timeout: float = 30.0
    announce_count: int = 3
    announce_interval: float = 0.1
    #: re-announce this often while master (0: never)
    announce_refresh: float = 10.0
    #: the master sends its recent clients of the VIPs (neighbour table) to the peer every
    #: ``announce_refresh``; at a takeover the new master tells them directly (unicast)
    unicast_clients: bool = True
    #: loss of carrier on ``interface`` counts as unhealthy (the VIPs cannot be served)
    track_interface: bool = True
    #: observers (a gateway, clients) asked after a takeover whether they map the VIPs
    #: to us (``_announce.converged``); re-announced with backoff until they do or
    #: ``verify_timeout`` has passed.  Empty: no verification.  guardian's config
    #: defaults it to the ping nodes.
    verify: tuple[IPAddress, ...] = ()
    verify_timeout: float = 1.0

    @property
    def renew_interval(self) -> float:
        """How often the master renews the VIPs' lease (well within ``lease``)."""
        return min(1.0, self.lease / 3)

    def pair_config(self) -> PairConfig:
        """The state machine's settings (raises ValueError naming the setting)."""
        return PairConfig(
            node=self.node,
            priority=self.priority,
            peer=self.peer,
            interval=self.interval,
            init_dead=self.init_dead,
            preempt=self.preempt,
            preempt_delay=self.preempt_delay,
            min_healthy=self.min_healthy,
            fence=self.fence,
            fence_timeout=self.fence_timeout,
            renew_interval=self.renew_interval,
            ping=bool(self.ping),
        )
