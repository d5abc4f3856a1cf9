"""Helpers shared by the lab tests of guardian-hostd: a driver that recreates a lab
VM, and hostd's server run on its own event loop inside the ``dom0`` namespace."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from guardian.hostd import DomainState, Hostd
from guardian.lab import VM, Host


class LabVMDriver:
    """destroy() -> VM.destroy(); create() -> VM.boot(); state from VM.running.

    Lab operations (veth, namespaces) must run in the root network namespace, so
    they go to ``root_ns``, a worker thread started from the test's thread; hostd's
    own threads live in dom0's namespace."""

    def __init__(self, vm: VM, root_ns: ThreadPoolExecutor) -> None:
        self.vm = vm
        self.root_ns = root_ns
        self.calls: list[str] = []

    def _root(self, fn: Callable[[], Any]) -> Any:
        return self.root_ns.submit(fn).result(60)

    def state(self) -> DomainState:
        return DomainState.RUNNING if self.vm.running else DomainState.ABSENT

    def destroy(self) -> None:
        self.calls.append("destroy")
        self._root(self.vm.destroy)

    def create(self) -> None:
        self.calls.append("create")
        self._root(self.boot)

    def boot(self) -> None:
        """Runs in the root namespace; subclasses add to it."""
        self.vm.boot()


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
