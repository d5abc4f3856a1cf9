"""A lab VM: a network namespace plus a private mount and UTS namespace, running
supervisord with Debian's stock apache2, named and exim4."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import time
import uuid as uuidlib
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.exception

from . import _probes, _render
from ._errors import LabError, LabTimeout, SupervisorError
from ._host import Host
from ._netns import netns_delete, netns_executor, netns_inode, netns_path
from ._proc import DEFAULT_TIMEOUT, ProcessRef, ns_inode, pids_in_namespaces, run, signal_all
from ._registry import HolderRecord, kill_vm_processes, write_holder
from ._spec import APACHE_WRAPPER, DEFAULT_TMPFS, WRONG_ADDRESS, VMSpec
from ._supervisor import RUNNING, ProcessInfo, Supervisor

if TYPE_CHECKING:
    from ._lab import Lab

#: Directories of the host that each VM gets as its own copy (bind-mounted from the
#: VM's generated tree under /run/guardian-lab/<id>/<vm>/root/).
PRIVATE_DIRS = (
    "/etc/apache2",
    "/etc/bind",
    "/etc/supervisor",
    "/etc/guardian",
    "/var/www/html",
    "/var/lib/exim4",
)
#: Single files each VM gets its own version of (when the host has them).
PRIVATE_FILES = ("/etc/hosts", "/etc/hostname", "/etc/mailname", "/etc/resolv.conf")

#: Namespace of the UUIDs derived for lab VMs (``VM.uuid``).
LAB_UUID_NAMESPACE = uuidlib.UUID("5d2b7a0c-3f1e-4c6a-9b1d-67a0e2c1f9a4")

#: What a failed probe may raise (anything else is a bug and propagates).
PROBE_ERRORS = (OSError, dns.exception.DNSException, LabError, ValueError, _probes.ProbeError)


class VM(Host):
    """A lab VM. Built by ``Lab.vm()`` / ``Lab.add_vm()``; ``boot()`` and ``destroy()``
    simulate what Xen's ``xl create`` / ``xl destroy`` do to a real one.

    Every process of the VM shares the holder process' namespaces: commands enter them
    with ``nsenter -t <holder> -m -n -u``. There is no PID namespace: pids seen by
    supervisord inside the VM are host pids, so ``os.kill`` works from the host.
    """

    def __init__(self, lab: Lab, spec: VMSpec) -> None:
        super().__init__(lab, spec.name, spec.ip, spec.ip6)
        self.spec = spec
        #: How many times this VM has been booted (1 after the first boot).
        self.incarnation = 0
        self._holder: HolderRecord | None = None
        self._holder_proc: subprocess.Popen[bytes] | None = None
        self._zone_serial = 0
        #: The address the test zone's ``www`` record currently holds.
        self.zone_address = spec.www_address
        #: The VM's current domain in the lab's stand-in xenstored (``Lab.xenstore()``),
        #: None when it has none (not running, or booted without the lab xenstore).
        self.domid: int | None = None

    # -- identity and state ------------------------------------------------------------

    @property
    def uuid(self) -> str:
        """The VM's UUID (the same for every boot, as a Xen VM's): ``spec.uuid``, else
        derived from the lab's id and the VM's name."""
        if self.spec.uuid is not None:
            return self.spec.uuid
        return str(uuidlib.uuid5(LAB_UUID_NAMESPACE, f"{self.lab.id}/{self.name}"))

    @property
    def xenstore_path(self) -> str | None:
        """``$XENSTORED_PATH`` of the VM's processes: its own domain's socket of the
        lab's stand-in xenstored, at the same path inside the VM as on the host
        (``<dir>/<name>.sock``); None when the VM has no domain."""
        xs = self.lab.xenstore_server
        if self.domid is None or xs is None:
            return None
        return str(xs.name_socket(self.name))

    @property
    def env(self) -> dict[str, str]:
        """The environment of commands run in the VM: ``VM_ENV``, plus
        ``XENSTORED_PATH`` when the VM has a XenStore domain."""
        env = dict(_render.VM_ENV)
        path = self.xenstore_path
        if path is not None:
            env["XENSTORED_PATH"] = path
        return env

    @property
    def vmdir(self) -> Path:
        """Host directory with this VM's generated files (and holder.log, setup.sh)."""
        return self.lab.dir / self.name

    @property
    def staged_root(self) -> Path:
        """Host path of the tree bind-mounted into the VM (``PRIVATE_DIRS``/``FILES``)."""
        return self.vmdir / "root"

    @property
    def running(self) -> bool:
        return self._holder is not None and self._holder.alive()

    @property
    def holder_pid(self) -> int:
        """The pid whose namespaces are the VM's. Raises if the VM is not running."""
        if self._holder is None:
            raise LabError(f"VM {self.name} is not running (destroyed or never booted)")
        if not self._holder.alive():
            raise LabError(f"VM {self.name}: holder process {self._holder.ref.pid} is gone")
        return self._holder.ref.pid

    @property
    def supervisor(self) -> Supervisor:
        """XML-RPC client of the VM's supervisord (through /proc/<holder>/root)."""
        return Supervisor(f"/proc/{self.holder_pid}/root{_render.SUPERVISOR_SOCKET}")

    # -- boot / destroy ----------------------------------------------------------------

    def boot(self, *, timeout: float = 20.0) -> None:
        """Create the VM from its spec: fresh files, namespaces, holder, supervisord
        (which starts the programs; use ``wait_ready()`` to wait for the services).

        With the lab's xenstore on (``Lab.xenstore()``), the VM gets a new domain in
        it first (a new domid, the VM's ``uuid``), as Xen's toolstack does."""
        if self._holder is not None:
            raise LabError(f"VM {self.name} is already running; destroy() it first")
        deadline = time.monotonic() + timeout
        self.incarnation += 1
        try:
            binds = self._stage()
            self._plug()
            xs = self._create_domain()
            self._start_holder(binds, deadline, xs)
            self._start_supervisord(deadline)
        except BaseException:
            try:
                self.destroy()
            except LabError:
                pass
            raise

    def destroy(self, *, timeout: float = 10.0) -> None:
        """Kill every process of the VM (all pids in its network namespace or its mount
        namespace, the holder last) and delete its network namespace. Its generated
        files stay on the host for post-mortem until the next ``boot()``."""
        nets = set()
        ino = netns_inode(self.netns)
        if ino is not None:
            nets.add(ino)
        if self._holder is not None and self._holder.alive():
            nets.add(self._holder.net)  # pinned by the live holder: no reused inode
        holders = [self._holder] if self._holder is not None else []
        try:
            kill_vm_processes(nets=nets, holders=holders, timeout=timeout)
        finally:
            self._release_domain()
        if self._holder_proc is not None:
            try:
                self._holder_proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                raise LabTimeout(f"VM {self.name}: holder not reaped") from exc
            if self._holder_proc.stdout is not None:
                self._holder_proc.stdout.close()
            self._holder_proc = None
        self._holder = None
        self.lab._reap()
        (self.vmdir / "holder.json").unlink(missing_ok=True)
        self._cut_port()
        netns_delete(self.netns)

    def _create_domain(self) -> _render.XenstoreMount | None:
        """A new domain for this boot in the lab's xenstore, if it is on."""
        xs = self.lab.xenstore_server
        if xs is None:
            return None
        self._release_domain()
        self.domid = xs.create_domain(self.name, self.uuid)
        return _render.XenstoreMount(
            str(xs.directory), self.name, xs.domain_socket(self.domid).name
        )

    def _release_domain(self) -> None:
        """``xl destroy``'s last step: the domain leaves XenStore (@releaseDomain)."""
        xs = self.lab.xenstore_server
        if self.domid is not None and xs is not None:
            xs.destroy_domain(self.domid)
        self.domid = None

    def _stage(self) -> list[tuple[str, str]]:
        """Generate the VM's private copies; returns (source, target) bind mounts."""
        spec = self.spec
        if self.vmdir.exists():
            shutil.rmtree(self.vmdir)
        root = self.staged_root
        for d in ("etc", "var/www", "var/lib"):
            (root / d).mkdir(parents=True)
        run(["cp", "-a", "/etc/apache2", "/etc/bind", str(root / "etc")])
        run(["cp", "-a", "/var/lib/exim4", str(root / "var/lib")])
        if os.path.isdir("/etc/guardian"):
            run(["cp", "-a", "/etc/guardian", str(root / "etc")])
        else:
            (root / "etc/guardian").mkdir()

        exim_conf = root / "var/lib/exim4/config.autogenerated"
        exim_conf.write_text(_render.exim_macros(spec) + self.lab.exim_config())

        sup = root / "etc/supervisor"
        (sup / "conf.d").mkdir(parents=True)
        (sup / "lab").mkdir()
        (sup / "supervisord.conf").write_text(_render.supervisord_conf(spec, self.incarnation))
        wrapper = root / APACHE_WRAPPER.lstrip("/")
        wrapper.write_text(_render.apache_wrapper())
        wrapper.chmod(0o755)

        www = root / "var/www/html"
        www.mkdir()
        (www / "index.html").write_text(_render.index_html(spec))

        apache = root / "etc/apache2"
        (apache / "conf-available/guardian-lab.conf").write_text(_render.apache_lab_conf(spec))
        link = apache / "conf-enabled/guardian-lab.conf"
        link.unlink(missing_ok=True)
        link.symlink_to("../conf-available/guardian-lab.conf")

        bind = root / "etc/bind"
        (bind / "named.conf.options").write_text(_render.named_options())
        (bind / "named.conf.local").write_text(_render.named_local(spec))
        self._write_zone(spec.www_address)

        (root / "etc/hosts").write_text(_render.hosts_file(spec))
        (root / "etc/hostname").write_text(spec.name + "\n")
        (root / "etc/mailname").write_text(spec.fqdn + "\n")
        (root / "etc/resolv.conf").write_text(_render.resolv_conf())

        binds = []
        for d in PRIVATE_DIRS:
            os.makedirs(d, exist_ok=True)  # mount point (e.g. /etc/guardian) on the host
            binds.append((f"{root}{d}", d))
        for f in PRIVATE_FILES:
            if os.path.isfile(f):
                binds.append((f"{root}{f}", f))
        return binds

    def _tmpfs_paths(self) -> list[str]:
        out = []
        for path in self.spec.tmpfs:
            if os.path.islink(path):
                continue  # /var/run, /var/lock -> /run: already private
            if not os.path.isdir(path):
                if path not in DEFAULT_TMPFS:
                    raise LabError(f"VM {self.name}: tmpfs mount point {path} is no directory")
                os.makedirs(path)  # a known mount point (/var/lib/guardian) on the host
            out.append(path)
        return out

    def _start_holder(
        self,
        binds: Sequence[tuple[str, str]],
        deadline: float,
        xenstore: _render.XenstoreMount | None = None,
    ) -> None:
        script = _render.setup_script(
            self.spec,
            incarnation=self.incarnation,
            binds=binds,
            tmpfs=self._tmpfs_paths(),
            xenstore=xenstore,
        )
        (self.vmdir / "setup.sh").write_text(script)
        argv = [
            "ip", "netns", "exec", self.netns,
            "unshare", "--mount", "--uts", "--propagation", "private", "--",
            "/bin/sh", "-c", script,
        ]  # fmt: skip
        with open(self.vmdir / "holder.log", "wb") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=dict(_render.VM_ENV),
                start_new_session=True,
            )
        self._holder_proc = proc
        assert proc.stdout is not None
        out = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"READY\n" not in out:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise LabTimeout(f"VM {self.name}: setup did not finish", self._holder_log())
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    proc.wait(timeout=5)
                    raise LabError(
                        f"VM {self.name}: setup failed (exit {proc.returncode}): "
                        + (self.vmdir / "holder.log").read_text(errors="replace")[-2000:]
                    )
                out += chunk
        ref = ProcessRef.of(proc.pid)
        mnt = ns_inode(proc.pid, "mnt")
        net = ns_inode(proc.pid, "net")
        if ref is None or mnt is None or net is None:
            raise LabError(f"VM {self.name}: holder {proc.pid} vanished")
        self._holder = HolderRecord(self.name, ref, mnt, net)
        write_holder(self.vmdir, self._holder)

    def _holder_log(self) -> dict[str, str]:
        try:
            return {"holder.log": (self.vmdir / "holder.log").read_text(errors="replace")[-2000:]}
        except OSError:
            return {}

    def _start_supervisord(self, deadline: float) -> None:
        argv = self.command([self.spec.supervisord, "-c", _render.SUPERVISOR_CONF])
        with open(self.vmdir / "supervisord.out", "wb") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=self.env
            )
        try:
            rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.wait()
            raise LabTimeout(f"VM {self.name}: supervisord did not daemonize") from exc
        if rc != 0:
            raise LabError(
                f"VM {self.name}: supervisord exited {rc}: "
                + (self.vmdir / "supervisord.out").read_text(errors="replace")[-2000:]
            )
        last = ""
        while time.monotonic() < deadline:
            try:
                if self.supervisor.state() == RUNNING:
                    return
            except SupervisorError as exc:
                last = str(exc)
            time.sleep(0.01)
        raise LabTimeout(f"VM {self.name}: supervisord not RUNNING", {"last": last})

    # -- commands ----------------------------------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside the VM (all its namespaces)."""
        return ["nsenter", "-t", str(self.holder_pid), "-m", "-n", "-u", "--", *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the VM, with the VM's clean environment (``env``
        property) unless ``env``."""
        return run(
            self.command(argv),
            check=check,
            timeout=timeout,
            input=input,
            env=self.env if env is None else env,
        )

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside the VM (``subprocess.Popen`` keywords)."""
        kwargs.setdefault("env", self.env)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.command(argv), **kwargs)
        self.lab._track(proc)
        return proc

    def pids(self) -> list[int]:
        """Every live process of the VM (network or mount namespace), the holder too."""
        if self._holder is None:
            return []
        return pids_in_namespaces(net={self._holder.net}, mnt={self._holder.mnt})

    def read_file(self, path: str, *, timeout: float = 5.0) -> str:
        """A file's text as the VM sees it (e.g. a log in the VM's /var/log)."""
        return self.run(["cat", "--", path], timeout=timeout).stdout

    def write_file(self, path: str, text: str, *, mode: int | None = None) -> None:
        """Write a file as the VM sees it (into its tmpfs or private copies)."""
        script = 'cat > "$1"' + (f' && chmod {mode:o} "$1"' if mode is not None else "")
        self.run(["sh", "-c", script, "sh", path], input=text)

    def remove_file(self, path: str) -> None:
        self.run(["rm", "-f", "--", path])

    def log(self, program: str) -> str:
        """The supervisord log (stdout+stderr) of ``program``; "" if none yet."""
        proc = self.run(
            ["cat", f"{_render.SUPERVISOR_LOG_DIR}/{program}.log"], check=False, timeout=5
        )
        return proc.stdout

    def debug_report(self, tail: int = 20) -> str:
        """Process states and log tails, for a failing test's message."""
        dom = "" if self.domid is None else f" domain {self.domid}"
        lines = [f"== VM {self.name} incarnation {self.incarnation}{dom}"]
        if not self.running:
            return lines[0] + ": not running"
        try:
            for info in self.supervisor.all_process_info():
                lines.append(
                    f"  {info.name}: {info.statename} pid={info.pid} {info.description}"
                    f" {info.spawnerr}".rstrip()
                )
        except LabError as exc:
            lines.append(f"  supervisord: {exc}")
        logs = ["supervisord", *(p.name for p in self.spec.all_programs)]
        for name in logs:
            text = self.log(name).splitlines()[-tail:]
            lines.append(f"-- {name}.log (last {tail} lines)")
            lines += [f"   {t}" for t in text]
        return "\n".join(lines)

    # -- supervisord -------------------------------------------------------------------

    def supervisorctl(
        self, *args: str, check: bool = False, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """``supervisorctl ARGS`` inside the VM (its exit status is often non-zero)."""
        return self.run(
            ["/usr/bin/supervisorctl", "-c", _render.SUPERVISOR_CONF, *args],
            check=check,
            timeout=timeout,
        )

    def process(self, program: str) -> ProcessInfo:
        return self.supervisor.process_info(program)

    def state(self, program: str) -> str:
        """supervisord's state name of ``program`` (RUNNING, BACKOFF, FATAL, ...)."""
        return self.process(program).statename

    def pid(self, program: str) -> int | None:
        """The main pid of ``program`` (a host pid), None when it is not running."""
        return self.process(program).pid or None

    def signal(self, program: str, sig: int, *, group: bool = False) -> int:
        """Send ``sig`` (e.g. signal.SIGKILL, SIGSTOP, SIGCONT) to the program's main
        pid directly, not through supervisord; returns that pid.

        ``group``: signal its whole process group instead (supervisord makes each
        program a group leader): e.g. apache2's parent *and* workers, a crash that
        leaves no orphaned worker serving on.

        Mind supervisord's states: a program killed while STARTING (before its
        ``startsecs``) goes to BACKOFF and is retried even with autorestart=false;
        ``wait_running()`` first to inject a crash of a running service.
        """
        pid = self.pid(program)
        if pid is None:
            raise LabError(f"VM {self.name}: {program} has no pid ({self.state(program)})")
        if group:
            pgid = os.getpgid(pid)
            if pgid != pid:
                raise LabError(f"VM {self.name}: {program} ({pid}) leads no process group")
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
        return pid

    def restart(self, program: str) -> None:
        """Stop ``program`` (if running) and start it without waiting for the result."""
        sup = self.supervisor
        try:
            sup.stop(program, True)
        except SupervisorError as exc:
            if exc.fault_code != 70:  # NOT_RUNNING
                raise
        sup.start(program, False)

    def wait_state(
        self, program: str, states: Collection[str], *, timeout: float = 10.0
    ) -> ProcessInfo:
        """Poll supervisord until ``program`` is in one of ``states``."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.process(program)
            if info.statename in states:
                return info
            if time.monotonic() > deadline:
                raise LabTimeout(
                    f"VM {self.name}: {program} not in {sorted(states)} after {timeout:g} s",
                    {program: f"{info.statename} {info.spawnerr}".strip()},
                )
            time.sleep(0.01)

    def wait_running(
        self, programs: Collection[str] | None = None, *, timeout: float = 10.0
    ) -> None:
        """Wait until supervisord reports every program (default: all) RUNNING, i.e.
        up for its ``startsecs``."""
        names = [p.name for p in self.spec.all_programs] if programs is None else programs
        deadline = time.monotonic() + timeout
        for name in names:
            self.wait_state(name, {RUNNING}, timeout=max(0.0, deadline - time.monotonic()))

    def wait_pid_change(self, program: str, old_pid: int, *, timeout: float = 10.0) -> int:
        """Poll until ``program`` is RUNNING with a pid other than ``old_pid``."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.process(program)
            if info.statename == RUNNING and info.pid not in (0, old_pid):
                return info.pid
            if time.monotonic() > deadline:
                raise LabTimeout(
                    f"VM {self.name}: {program} not restarted after {timeout:g} s",
                    {program: f"{info.statename} pid={info.pid} {info.spawnerr}".strip()},
                )
            time.sleep(0.01)

    # -- readiness -----------------------------------------------------------------------

    def probes(self) -> dict[str, Callable[[], None]]:
        """The readiness probe of each stock service, to run inside a lab namespace:
        apache2 answers 200, named answers the test zone, exim4 greets with 220."""
        spec = self.spec

        def apache2() -> None:
            resp = _probes.http_get(spec.ip, timeout=1.0)
            if resp.status != 200:
                raise _probes.ProbeError(f"HTTP {resp.status}")

        def named() -> None:
            if not _probes.dns_query(spec.ip, f"www.{spec.zone}", timeout=0.25):
                raise _probes.ProbeError("empty answer")

        def exim4() -> None:
            banner = _probes.smtp_banner(spec.ip, timeout=1.0)
            if not banner.startswith("220"):
                raise _probes.ProbeError(f"banner {banner!r}")

        return {"apache2": apache2, "named": named, "exim4": exim4}

    def wait_ready(
        self, timeout: float = 15.0, services: Collection[str] | None = None
    ) -> dict[str, float]:
        """Wait until every stock service answers on the VM's address (probed from
        inside the VM's network namespace). Returns seconds until each was ready."""
        wanted = list(self.spec.services if services is None else services)
        probes = self.probes()
        unknown = [s for s in wanted if s not in probes]
        if unknown:
            raise ValueError(f"no readiness probe for {unknown}")
        t0 = time.monotonic()
        deadline = t0 + timeout
        last: dict[str, str] = {s: "not probed" for s in wanted}

        def poll(service: str) -> float | None:
            # Each service has its own loop: a slow failing probe (a UDP query to a
            # port nobody listens on yet waits for its timeout) delays no other.
            while True:
                try:
                    probes[service]()
                    return time.monotonic() - t0
                except PROBE_ERRORS as exc:
                    last[service] = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.01)

        executor = netns_executor(netns_path(self.netns), max_workers=max(1, len(wanted)))
        try:
            futures = {s: executor.submit(poll, s) for s in wanted}
            ready: dict[str, float] = {}
            for s, fut in futures.items():
                took = fut.result(timeout=max(0.0, deadline - time.monotonic()) + 5.0)
                if took is not None:
                    ready[s] = took
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
        if len(ready) < len(wanted):
            details = {s: last[s] for s in wanted if s not in ready}
            details["report"] = self.debug_report(tail=5)
            raise LabTimeout(f"VM {self.name}: services not ready in {timeout:g} s", details)
        return ready

    # -- faults --------------------------------------------------------------------------

    def freeze(self) -> None:
        """SIGSTOP every process of the VM (a paused VM)."""
        signal_all(self.pids(), signal.SIGSTOP)

    def thaw(self) -> None:
        signal_all(self.pids(), signal.SIGCONT)

    def break_apache_config(self) -> None:
        """Make apache2 fail to start (a syntax error in its conf-enabled/). Takes
        effect at its next start; survives restarts, not ``boot()``."""
        path = self.staged_root / _render.BROKEN_APACHE_CONF.lstrip("/")
        path.write_text("# guardian.lab: deliberately broken\nGuardianLabBrokenDirective on\n")

    def fix_apache_config(self) -> None:
        (self.staged_root / _render.BROKEN_APACHE_CONF.lstrip("/")).unlink(missing_ok=True)

    def serve_wrong_zone(self, address: str = WRONG_ADDRESS, *, reload: bool = True) -> None:
        """Rewrite the test zone file so ``www`` points to ``address``, and (``reload``)
        make named load it. A named restart serves the wrong data too."""
        self._write_zone(address)
        if reload:
            self._reload_zone()

    def serve_right_zone(self, *, reload: bool = True) -> None:
        self._write_zone(self.spec.www_address)
        if reload:
            self._reload_zone()

    def _write_zone(self, www: str) -> None:
        self._zone_serial += 1
        self.zone_address = www
        path = self.staged_root / _render.zone_path(self.spec).lstrip("/")
        path.write_text(_render.zone_file(self.spec, www, self._zone_serial))

    def _reload_zone(self, timeout: float = 10.0) -> None:
        """Make a running named load the zone file now (a stopped one reads it when it
        starts). Retries while a just-started named has no control channel yet."""
        if not self.running or "named" not in (p.name for p in self.spec.all_programs):
            return
        deadline = time.monotonic() + timeout
        while self.pid("named") is not None:
            proc = self.run(["rndc", "reload", self.spec.zone], check=False, timeout=timeout)
            if proc.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise LabError(f"VM {self.name}: rndc reload failed: {proc.stderr.strip()}")
            time.sleep(0.05)
