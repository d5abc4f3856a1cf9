"""States of the failover pair.  Dependency-free on purpose."""

from __future__ import annotations

import enum


class PairState(enum.Enum):
    """Where one node of the active/standby pair stands."""

    INIT = "init"  # just started (listening for ``init_dead``), or resyncing after a pause
    BACKUP = "backup"  # standby: healthy, watching the master, ready to take over
    MASTER = "master"  # active: holds the service addresses (VIPs)
    FAULT = "fault"  # unhealthy: never takes the VIPs, keeps talking to the peer
    STOPPED = "stopped"  # shut down: VIPs released, goodbye sent; the machine is inert


class SwitchoverRole(enum.Enum):
    """This node's part in a planned move of the VIPs (``guardian switchover``)."""

    OFFER = "offer"  # master: asked the standby to take over, waiting for READY
    GRANT = "grant"  # master: the standby asked for the role; releasing now
    PULL = "pull"  # standby: asked the master for the role, waiting for RELEASED
    ACCEPT = "accept"  # standby: said READY to the master's offer, waiting for RELEASED
    HANDOFF = "handoff"  # old master: released, waiting for the peer to become master
