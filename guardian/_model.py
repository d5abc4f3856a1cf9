"""Frozen configuration objects.  Built by ``guardian.config`` from TOML, or by
hand when guardian is used as a library."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checks import Check
from ipfailover._settings import DEFAULT_KEY_FILE, DEFAULT_PORT, GroupSettings

from ._states import LadderAction, Mode


@dataclass(frozen=True)
class CheckSpec:
    """One probe of a service: the built check plus how often to run it."""

    name: str
    check: Check = field(compare=False)
    interval: float = 1.0
    timeout: float = 1.0
    mode: Mode = Mode.ACT
    # canonical form of the options, so reloads can tell changed checks apart
    fingerprint: str = ""

    @staticmethod
    def fingerprint_of(options: Mapping[str, Any]) -> str:
        return json.dumps(options, sort_keys=True, default=str)


@dataclass(frozen=True)
class RestartPolicy:
    """At most ``budget`` restarts within ``window`` seconds.

    The first restart of an incident is immediate; the k-th waits
    ``min(backoff_max, backoff * factor ** (k - 1))`` seconds, spread by
    +/- ``jitter`` (a fraction).  ``timeout`` bounds one restart call.
    """

    budget: int = 3
    window: float = 300.0
    backoff: float = 1.0
    factor: float = 2.0
    backoff_max: float = 30.0
    jitter: float = 0.1
    timeout: float = 15.0
    exhausted_retry: float = 60.0   # 0: no slow retries after the ladder

    def delay(self, k: int) -> float:
        """Base delay (before jitter) for the restart number ``k`` (0-based) of an incident."""
        if k <= 0:
            return 0.0
        return float(min(self.backoff_max, self.backoff * self.factor ** (k - 1)))


@dataclass(frozen=True)
class LadderStep:
    action: LadderAction
    command: tuple[str, ...] = ()
    timeout: float = 30.0


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    backend: str
    controller_options: Mapping[str, Any] = field(default_factory=dict, compare=False)
    checks: tuple[CheckSpec, ...] = ()
    rise: int = 2
    fall: int = 2
    start_grace: float = 10.0
    requires: tuple[str, ...] = ()
    restart: RestartPolicy = RestartPolicy()
    ladder: tuple[LadderStep, ...] = (LadderStep(LadderAction.ALERT),)
    healthy_reset: float = 600.0
    mode: Mode = Mode.ACT
    watch_pid: bool = True
    source: str = ""
    fingerprint: str = ""


@dataclass(frozen=True)
class FailoverSpec:
    """``[failover]``: this node, the key file, the UDP port, and the groups (each a
    VIP set moved between this node and one peer; see ``ipfailover.GroupSettings``)."""

    node: str
    key_file: str = DEFAULT_KEY_FILE
    port: int = DEFAULT_PORT
    groups: Mapping[str, GroupSettings] = field(default_factory=dict)

    def tracking(self, service: str) -> list[GroupSettings]:
        """The groups whose health follows ``service`` (its ``failover`` rung)."""
        return [g for g in self.groups.values() if service in g.services]

    def cold_group(self, service: str) -> GroupSettings | None:
        """The group that starts ``service`` on takeover, if any."""
        for g in self.groups.values():
            if service in g.cold:
                return g
        return None


@dataclass(frozen=True)
class EscalationSpec:
    """``[escalation]``: how this guest asks dom0 to act (``guardian.escalation``).

    ``channel`` is ``http``, ``exec``, ``xenstore``, a ``guardian.escalations`` entry
    point, or ``module:Class``; the channel-specific keys (``url``, ``key_file``,
    ``command``, ``answer_path``, ``xenstore_client``) are used by the channel that
    needs them.
    """

    channel: str
    vm: str
    vm_uuid: str = ""
    url: str = ""
    key_file: str = ""
    command: tuple[str, ...] = ()
    #: xenstore: dom0's answer, relative to /local/domain/<domid> (dom0 owns it, the
    #: guest may only read it)
    answer_path: str = "guardian/answer/{request_id}"
    incarnation_file: str = "/run/guardian/incarnation"
    #: xenstore: "wire" (speak the protocol; no tools needed) or "tools" (xenstore-*)
    xenstore_client: str = "wire"
    timeout: float = 10.0        # one attempt (send or poll)
    retry_max: float = 300.0     # backoff cap between attempts
    source: str = ""


@dataclass(frozen=True)
class WatchdogSpec:
    """``[watchdog]``: the dead-man switch (``guardian._deadman``)."""

    device: str = "/dev/watchdog"
    timeout: float = 30.0
    interval: float = 0.0
    critical: tuple[str, ...] = ()
    critical_grace: float = 300.0
    disarm_on_stop: bool = True
    source: str = ""

    @property
    def period(self) -> float:
        if self.interval > 0:
            return self.interval
        return max(0.1, (self.timeout or 30.0) / 3)


@dataclass(frozen=True)
class GuardianSpec:
    control_socket: Path = Path("/run/guardian/control.sock")
    state_dir: Path = Path("/var/lib/guardian")
    log_level: str = "info"
    log_target: str = "stderr"
    alert_command: tuple[str, ...] = ()
    hook_timeout: float = 30.0
    metrics_listen: str = ""            # "" off; "127.0.0.1:9817"; "unix:/run/.../metrics.sock"
    metrics_allow_remote: bool = False
    backends: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    services: Mapping[str, ServiceSpec] = field(default_factory=dict)
    failover: FailoverSpec | None = None
    escalation: EscalationSpec | None = None
    watchdog: WatchdogSpec | None = None
    sources: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def start_order(self) -> list[str]:
        """Services sorted so that every service comes after what it requires."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            for dep in self.services[name].requires:
                if dep in self.services:
                    visit(dep)
            order.append(name)

        for name in sorted(self.services):
            visit(name)
        return order
