"""Helpers shared by the lab tests of guardian-hostd: hostd's server run on its own
event loop inside the ``dom0`` namespace. (The driver that recreates a lab VM is
``guardian.lab.LabDriver``, hostd's ``lab`` driver.)"""

from __future__ import annotations

import asyncio
import threading

from guardian.hostd import Hostd
from guardian.lab import Host


class HostdInDom0:
    """hostd's HTTP server on an event loop of its own, in a thread that lives in
    dom0's network namespace (a thread started from a dom0 thread stays there)."""

    def __init__(self, dom0: Host, hostd: Hostd, host: str, port: int) -> None:
        self.dom0 = dom0
        self.hostd = hostd
        self.host = host
        self.port = port
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._threads: list[threading.Thread] = []

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.hostd.server.start(self.host, self.port))
        self._ready.set()
        self.loop.run_forever()

    def start(self, timeout: float = 10.0) -> None:
        def in_dom0() -> None:
            t = threading.Thread(target=self._serve, name="hostd-dom0", daemon=True)
            t.start()
            self._threads.append(t)

        self.dom0.call(in_dom0)
        assert self._ready.wait(timeout), "hostd did not start in dom0"

    def stop(self) -> None:
        if self._ready.is_set():
            asyncio.run_coroutine_threadsafe(self.hostd.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        for t in self._threads:
            t.join(10)
        if not self.loop.is_running():
            self.loop.close()
        self.hostd.journal.close()
