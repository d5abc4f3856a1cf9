"""The Lab: one LAN switch, hosts and VMs, all named by the lab's id and removed by it."""

from __future__ import annotations

import atexit
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from types import TracebackType
from typing import Any

from guardian.xenstore import StandIn

from . import _live, _render
from ._errors import LabError, LabUnavailable
from ._host import Host
from ._netns import netns_add
from ._proc import run
from ._registry import DEFAULT_ROOT, create_lab_dir, teardown
from ._requirements import missing_requirements
from ._spec import SERVICES, Program, VMSpec, stock_programs
from ._vm import VM


class Lab:
    """A test lab: a LAN of network namespaces on this machine.

    Creating a Lab claims a fresh id (``g`` + 5 hex digits) and creates the switch
    namespace ``<id>-lan`` with bridge ``<id>-br``. Hosts and VMs added to it are
    namespaces ``<id>-<name>`` with ``eth0`` on that bridge. ``close()`` (or leaving the
    ``with`` block) removes all of it, by id, whatever happened; leftovers of a process
    that died without closing are removed by ``cleanup_stale()``.

    Not thread-safe: drive a Lab from one thread (probes may run in others).
    """

    def __init__(self, *, root: Path = DEFAULT_ROOT) -> None:
        missing = missing_requirements(vms=False)
        if missing:
            raise LabUnavailable(missing)
        self.root = root
        self.id, self.dir = create_lab_dir(root)
        self.hosts: dict[str, Host] = {}
        self._procs: list[subprocess.Popen[Any]] = []
        self._exim_config: str | None = None
        self._xenstore: StandIn | None = None
        self._closed = False
        atexit.register(self._atexit)
        _live.register(self)
        try:
            netns_add(self.lan_netns)
            run(
                ["ip", "-n", self.lan_netns, "-batch", "-"],
                input=(
                    "link set lo up\n"
                    f"link add {self.bridge} type bridge mcast_snooping 0\n"
                    f"link set {self.bridge} up\n"
                ),
            )
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<Lab {self.id} hosts={list(self.hosts)}{' closed' if self._closed else ''}>"

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def lan_netns(self) -> str:
        """The switch namespace (holds the bridge and every host's switch port)."""
        return f"{self.id}-lan"

    @property
    def bridge(self) -> str:
        return f"{self.id}-br"

    @property
    def closed(self) -> bool:
        return self._closed

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __iter__(self) -> Iterator[Host]:
        return iter(list(self.hosts.values()))

    @property
    def vms(self) -> list[VM]:
        return [h for h in self.hosts.values() if isinstance(h, VM)]

    # -- building ----------------------------------------------------------------------

    def _claim(self, name: str, ip: str) -> None:
        if self._closed:
            raise LabError(f"lab {self.id} is closed")
        if name in self.hosts:
            raise LabError(f"lab {self.id}: host {name!r} exists")
        for h in self.hosts.values():
            if h.ip == ip:
                raise LabError(f"lab {self.id}: {ip} is {h.name}'s address")

    def host(self, name: str, ip: str, *, ip6: str | None = None) -> Host:
        """Add a plain host (e.g. ``client`` 192.0.2.10, ``dom0`` 192.0.2.2)."""
        host = Host(self, name, ip, ip6)
        self._claim(host.name, host.ip)
        self.hosts[host.name] = host
        try:
            host._plug()
        except BaseException:
            del self.hosts[host.name]
            try:
                host._unplug()
            except LabError:
                pass
            raise
        return host

    def vm(
        self,
        name: str,
        ip: str,
        *,
        ip6: str | None = None,
        autorestart: bool | Mapping[str, bool] = True,
        startsecs: int | Mapping[str, int] = 1,
        services: tuple[str, ...] = SERVICES,
        extra_programs: tuple[Program, ...] = (),
        boot: bool = True,
        uuid: str | None = None,
    ) -> VM:
        """Add a VM running supervisord with the stock ``services``; ``autorestart``
        and ``startsecs`` for all of them or per program name. ``extra_programs`` adds
        supervisord programs/event listeners (e.g. guardiand). Boots it unless ``boot``
        is False (then ``vm.boot()``, or ``lab.boot()`` to boot several at once).
        ``uuid``: the VM's UUID (default: derived from the lab id and ``name``). For
        full control build a VMSpec and use ``add_vm()``."""
        spec = VMSpec(
            name,
            ip,
            ip6,
            programs=stock_programs(
                autorestart=autorestart, startsecs=startsecs, services=services
            ),
            extra_programs=extra_programs,
            uuid=uuid,
        )
        return self.add_vm(spec, boot=boot)

    def add_vm(self, spec: VMSpec, *, boot: bool = True) -> VM:
        missing = missing_requirements(vms=True)
        if missing:
            raise LabUnavailable(missing)
        vm = VM(self, spec)
        self._claim(vm.name, vm.ip)
        self.hosts[vm.name] = vm
        if boot:
            try:
                vm.boot()
            except BaseException:
                del self.hosts[vm.name]  # boot() cleaned up; the name may be used again
                raise
        return vm

    def boot(
        self, vms: Iterable[VM] | None = None, *, ready: bool = True, timeout: float = 30.0
    ) -> dict[str, dict[str, float]]:
        """Boot the given VMs (default: every VM not running) concurrently, and with
        ``ready`` wait for their services. Returns ``wait_ready()``'s timings per VM."""
        todo = [vm for vm in (self.vms if vms is None else vms) if not vm.running]
        if not todo:
            return {}
        self.exim_config()  # made once, before the threads
        deadline = time.monotonic() + timeout

        def one(vm: VM) -> dict[str, float]:
            vm.boot(timeout=timeout)
            if not ready:
                return {}
            return vm.wait_ready(timeout=max(1.0, deadline - time.monotonic()))

        with ThreadPoolExecutor(max_workers=len(todo), thread_name_prefix="boot") as pool:
            futures = {vm.name: pool.submit(one, vm) for vm in todo}
            # Every boot runs to its end (each has a deadline) before we look at errors.
            wait(futures.values())
        return {name: fut.result() for name, fut in futures.items()}

    def exim_config(self) -> str:
        """Debian's exim config generated by update-exim4.conf from a copy of
        /etc/exim4 with the lab's settings (local delivery only, listen everywhere).
        Made once per lab; each VM prepends its own macros."""
        if self._exim_config is None:
            work = self.dir / "exim4"
            run(["cp", "-a", "/etc/exim4", str(work)])
            conf = work / "update-exim4.conf.conf"
            conf.write_text(_render.update_exim_settings(conf.read_text()))
            out = self.dir / "exim4.config.autogenerated"
            run(["update-exim4.conf", "-d", str(work), "-o", str(out)], timeout=30)
            self._exim_config = out.read_text()
        return self._exim_config

    # -- XenStore ----------------------------------------------------------------------

    def xenstore(self) -> StandIn:
        """Turn on the lab's XenStore (opt-in; idempotent): a stand-in xenstored
        (``guardian.xenstore.StandIn``) in ``<lab dir>/xenstore``, serving dom0 on its
        ``socket`` (for guardian-hostd in the ``dom0`` host: ``[hostd] xenstore``).

        From then on, every ``VM.boot()`` gives the VM a new domain (the next domid,
        the VM's ``uuid``; libxl's layout) and ``VM.destroy()`` releases it, as Xen's
        toolstack does. The VM's processes (its supervisord's programs, ``vm.run``,
        ``Guardiand``) get ``XENSTORED_PATH=<dir>/<name>.sock``, which inside the VM
        is that domain's socket and the directory's only entry. VMs already running
        get a domain at their next boot. Stopped by ``close()``."""
        if self._closed:
            raise LabError(f"lab {self.id} is closed")
        if self._xenstore is None:
            self._xenstore = StandIn(self.dir / "xenstore").start()
        return self._xenstore

    @property
    def xenstore_server(self) -> StandIn | None:
        """The lab's stand-in xenstored if ``xenstore()`` turned it on, else None."""
        return self._xenstore

    def _track(self, proc: subprocess.Popen[Any]) -> None:
        self._reap()
        self._procs.append(proc)

    def _reap(self) -> None:
        """Collect the exit status of finished commands started by ``popen``."""
        self._procs = [p for p in self._procs if p.poll() is None]

    # -- teardown ----------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything this lab created: kill the processes in its namespaces,
        delete the namespaces, remove /run/guardian-lab/<id>. Idempotent. Does it all
        even after an error, then raises LabError listing what failed."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._atexit)
        _live.unregister(self)
        errors: list[str] = []
        for vm in self.vms:
            try:
                vm.destroy()
            except LabError as exc:
                errors.append(f"{vm.name}: {exc}")
        if self._xenstore is not None:
            self._xenstore.close()
        errors += teardown(self.id, root=self.root)
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                errors.append(f"process {proc.pid} not reaped")
        self._procs.clear()
        if errors:
            raise LabError(f"lab {self.id}: cleanup errors:\n" + "\n".join(errors))

    def _atexit(self) -> None:
        try:
            self.close()
        except LabError:
            pass
