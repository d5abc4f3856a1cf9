"""guardian-hostd's ``lab`` driver: a lab VM torn down (all its processes, its
namespaces) and booted again from its definition — what the lab tests and the demo
use in place of ``xl destroy`` / ``xl create``::

    [vms.vm01]
    driver = "lab"
    domain = "vm01"     # the lab VM's name, in a Lab alive in this process

Lab operations (veth pairs, namespaces) must run in the root network namespace, while
hostd's threads may live in another one (the lab's ``dom0``); they go to ``root_ns``,
an executor whose worker lives in the root network namespace (by default one that
enters the namespace of this process' main thread).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, ClassVar

from guardian.hostd._drivers import DomainState, DriverError

from ._errors import LabError
from ._live import live_labs
from ._netns import netns_executor, netns_inode
from ._proc import pids_in_namespaces
from ._vm import VM

if TYPE_CHECKING:
    from guardian.hostd._config import VMSpec as HostdVMSpec

#: How long one lab operation (destroy, boot) may take in the root namespace.
LAB_OP_TIMEOUT = 60.0


def find_vm(name: str) -> VM:
    """The VM called ``name`` in the Labs alive in this process (``<lab id>-<name>``
    picks one lab when several have such a VM)."""
    found = []
    for lab in live_labs():
        for vm in lab.vms:
            if name in (vm.name, f"{lab.id}-{vm.name}"):
                found.append(vm)
    if not found:
        raise DriverError(f"lab: no VM {name!r} in a lab alive in this process")
    if len(found) > 1:
        raise DriverError(f"lab: VM {name!r} is in several labs "
                          f"({', '.join(vm.lab.id for vm in found)}); use <lab id>-{name}")
    return found[0]


def root_ns_executor() -> Executor:
    """An executor whose one worker lives in this process' main thread's (the root)
    network namespace."""
    return netns_executor(f"/proc/{os.getpid()}/ns/net")


class LabDriver:
    """destroy() -> ``VM.destroy()``; create() -> ``VM.boot()``; state() from the VM's
    real processes: RUNNING (its holder alive), CRASHED (holder gone, not destroyed),
    DYING (processes left in its namespace), else ABSENT."""

    KEYS: ClassVar[frozenset[str]] = frozenset()
    REQUIRED: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, vm: VM, root_ns: Executor | None = None) -> None:
        self.vm = vm
        self._own_pool = root_ns is None
        self.root_ns = root_ns if root_ns is not None else root_ns_executor()
        self.calls: list[str] = []

    def close(self) -> None:
        """Stop the root-namespace worker if this driver started it."""
        if self._own_pool:
            self.root_ns.shutdown(wait=False)

    @classmethod
    def from_spec(cls, vm: HostdVMSpec) -> LabDriver:
        return cls(find_vm(vm.domain))

    def _root(self, fn: Callable[[], Any]) -> Any:
        try:
            return self.root_ns.submit(fn).result(LAB_OP_TIMEOUT)
        except TimeoutError:
            raise DriverError(f"lab {self.vm.name}: no answer in {LAB_OP_TIMEOUT:g}s") from None
        except LabError as exc:
            raise DriverError(f"lab {self.vm.name}: {exc}") from None

    def state(self) -> DomainState:
        vm = self.vm
        if vm.running:
            return DomainState.RUNNING
        if vm._holder is not None:  # died by itself: not destroyed, not reaped
            return DomainState.CRASHED
        ino = netns_inode(vm.netns)
        if ino is not None and pids_in_namespaces(net={ino}):
            return DomainState.DYING
        return DomainState.ABSENT

    def destroy(self) -> None:
        self.calls.append("destroy")
        self._root(self.vm.destroy)

    def create(self) -> None:
        self.calls.append("create")
        self._root(self.boot)

    def boot(self) -> None:
        """Runs in the root namespace; subclasses add to it."""
        self.vm.boot()
