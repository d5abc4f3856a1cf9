"""Wiring: a HostdSpec -> drivers, state, journal, engine, verifier, server."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardian._metrics import Metrics
from ipfailover._wire import KeyRing

from ._alert import Alerter
from ._auth import Verifier
from ._config import HostdSpec
from ._drivers import Driver, build_driver
from ._engine import Clock, Engine
from ._server import HostdServer
from ._state import Journal, StateStore
from ._xsinput import RESCAN, XenstoreInput


@dataclass
class Hostd:
    spec: HostdSpec
    engine: Engine
    verifier: Verifier
    server: HostdServer
    journal: Journal
    metrics: Metrics
    #: the XenStore input while running (``spec.xenstore`` set)
    xs_input: XenstoreInput | None = None

    async def start(self, host: str, port: int, *,
                    xenstore_rescan: float = RESCAN) -> tuple[str, int]:
        """Serve: the HTTP endpoint on ``host:port``, and XenStore when configured.
        Returns the bound address."""
        bound = await self.server.start(host, port)
        if self.spec.xenstore:
            self.xs_input = XenstoreInput(self.engine, self.spec.xenstore,
                                          rescan=xenstore_rescan)
            await self.xs_input.start()
        return bound

    async def close(self) -> None:
        """Stop taking requests; wait for the actions in progress."""
        if self.xs_input is not None:
            await self.xs_input.close()
            self.xs_input = None
        await self.server.close()


def build(spec: HostdSpec, *, drivers: Mapping[str, Driver] | None = None,
          clock: Clock | None = None, poll_interval: float = 0.25) -> Hostd:
    """``drivers`` overrides build_driver() per VM name (tests, the lab)."""
    chosen: dict[str, Driver] = {}
    rings: dict[str, KeyRing] = {}
    for name, vm in spec.vms.items():
        chosen[name] = (drivers or {}).get(name) or build_driver(vm)
        rings[name] = vm.keys if vm.keys is not None else KeyRing.load(vm.key_file)
    from guardian import __version__

    metrics = Metrics(__version__)
    journal = CountingJournal(spec.journal_dir, metrics)
    alerter = (Alerter(spec.alert_command, timeout=spec.alert_timeout)
               if spec.alert_command else None)
    engine = Engine(spec.vms, spec.policy, chosen, StateStore(spec.state_dir), journal,
                    clock, poll_interval=poll_interval, alerter=alerter)
    verifier = Verifier(rings, wall=engine.clock.wall)

    def counts() -> None:
        merged = dict(engine.counters)
        if alerter is not None:
            merged.update(alerter.counters)
        metrics.hostd_counts(merged)

    metrics.on_scrape(counts)
    return Hostd(spec, engine, verifier, HostdServer(engine, verifier), journal, metrics)


class CountingJournal(Journal):
    """The decision journal, also counting decisions for Prometheus
    (``guardian_hostd_decisions_total{decision}``)."""

    def __init__(self, journal_dir: Path | str, metrics: Metrics) -> None:
        super().__init__(journal_dir)
        self.metrics = metrics

    def append(self, record: dict[str, Any]) -> None:
        super().append(record)
        self.metrics.hostd_decision(str(record.get("decision", "unknown")))
