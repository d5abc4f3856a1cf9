"""The Debian package, end to end: build it from a clean copy of the tree
(``packaging/build-deb.sh``, lintian included), install it with apt into a fresh
Debian bookworm chroot (debootstrap) so that its Depends come from Debian, check the
installed command, configuration, key, entry points, unit and sd_notify behaviour
with Debian's /usr/bin/python3, then purge it and check that nothing is left.

Needs root, the build dependencies (packaging/debian/control), debootstrap and a
Debian mirror (``GUARDIAN_DEB_MIRROR``, default http://deb.debian.org/debian).
Selected only with ``-m deb`` (see conftest.py).  The chroot lives under
``GUARDIAN_DEB_WORKDIR`` (default /var/tmp: debootstrap makes device nodes, which a
nodev /tmp refuses) and is removed at the end, pass or fail.  Nothing is installed
on the machine running the tests.  Timings are printed at the end of the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
MIRROR = os.environ.get("GUARDIAN_DEB_MIRROR", "http://deb.debian.org/debian")
WORKDIR = os.environ.get("GUARDIAN_DEB_WORKDIR", "/var/tmp")
VERSION = "0.1.0"
DIST_INFO = f"/usr/lib/python3/dist-packages/guardian-{VERSION}.dist-info"
CLEAN_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
}
# What a purge may leave (Debian policy: logs; plus package-manager bookkeeping and
# the API/runtime file systems a real system has as tmpfs).
PURGE_IGNORED = (
    "/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/var/log", "/var/cache",
    "/var/lib/apt", "/var/lib/dpkg",
)


def _missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, mount)"
    for tool in ("dpkg-buildpackage", "dh", "debootstrap", "lintian", "chroot", "mount"):
        if shutil.which(tool, path=CLEAN_ENV["PATH"]) is None:
            return f"{tool} is not installed (scripts/setup.sh installs the build tools)"
    if not Path("/usr/share/perl5/Debian/Debhelper/Buildsystem/pybuild.pm").exists():
        return "dh-python (pybuild) is not installed"
    if not list(Path("/usr/share/dh-python/dhpython/build").glob("plugin_pyproject.py")):
        return "pybuild-plugin-pyproject is not installed"
    return None


_REASON = _missing_tools()
pytestmark = [pytest.mark.deb,
              pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def sh(argv: list[str], *, timeout: float = 600, check: bool = True,
       env: dict[str, str] | None = None, cwd: Path | None = None,
       ) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                         env=env or CLEAN_ENV, cwd=cwd)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {res.returncode}\n"
                             f"--- stdout\n{res.stdout[-4000:]}\n--- stderr\n{res.stderr[-4000:]}")
    return res


@dataclass
class Timings:
    steps: list[tuple[str, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.steps.append((name, time.monotonic() - t0))

    def report(self) -> str:
        total = sum(d for _, d in self.steps)
        lines = [f"  {name:<44} {d:7.1f} s" for name, d in self.steps]
        return "\n".join(["deb tier timings:", *lines, f"  {'total':<44} {total:7.1f} s"])


@pytest.fixture(scope="module")
def timings(deb_report: list[str]) -> Iterator[Timings]:
    t = Timings()
    yield t
    deb_report.extend(t.report().splitlines())   # printed in the terminal summary


@dataclass
class Built:
    deb: Path
    hostd_deb: Path
    log: str
    returncode: int
    top_before: list[str]
    top_after: list[str]


def _top_entries() -> list[str]:
    """What a build in the tree would leave: debian/, .pybuild/, build/, a
    guardian-*/ copy, anything new under packaging/ (other files of the tree may
    change while the tests run: not looked at)."""
    names = {"debian", ".pybuild", "build", f"guardian-{VERSION}"}
    return sorted([p.name for p in TOP.iterdir() if p.name in names]
                  + [str(p.relative_to(TOP)) for p in (TOP / "packaging").rglob("*")])


@pytest.fixture(scope="module")
def built(timings: Timings, tmp_path_factory: pytest.TempPathFactory) -> Built:
    out = tmp_path_factory.mktemp("dist")
    before = _top_entries()
    with timings.step("build (packaging/build-deb.sh, with lintian)"):
        res = sh(["bash", str(TOP / "packaging" / "build-deb.sh"), str(out)],
                 check=False, timeout=1200)
    debs = sorted(out.glob("guardian_*_all.deb"))
    hostd = sorted(out.glob("guardian-hostd_*_all.deb"))
    assert debs and hostd, f"no .deb built\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}"
    return Built(debs[0], hostd[0], res.stdout + res.stderr, res.returncode, before,
                 _top_entries())


class Chroot:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def run(self, *argv: str, check: bool = True, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return sh(["chroot", str(self.root), *argv], check=check, timeout=timeout,
                  env=dict(CLEAN_ENV, **(env or {})))

    def apt(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("apt-get", "-y", "-q", "-o", "Dpkg::Use-Pty=0", *args, timeout=900)

    def snapshot(self) -> set[str]:
        """Every path below the root, except what a purge may leave (PURGE_IGNORED)."""
        def ignored(p: str) -> bool:
            return "/__pycache__" in p or any(p == i or p.startswith(i + "/")
                                              for i in PURGE_IGNORED)

        paths: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            base = "" if rel == "." else "/" + rel
            dirnames[:] = [d for d in dirnames if not ignored(f"{base}/{d}")]
            paths.update(p for p in (f"{base}/{n}" for n in dirnames + filenames)
                         if not ignored(p))
        return paths


@dataclass
class Installed:
    chroot: Chroot
    deb_in_chroot: str
    hostd_deb_in_chroot: str
    before: set[str]
    apt_log: str


@pytest.fixture(scope="module")
def installed(built: Built, timings: Timings) -> Iterator[Installed]:
    root = Path(tempfile.mkdtemp(prefix="guardian-deb-chroot.", dir=WORKDIR))
    ch = Chroot(root)
    proc_mounted = False
    try:
        with timings.step(f"debootstrap {SUITE} minbase + python3, systemd"):
            sh(["debootstrap", "--variant=minbase", "--include=python3,systemd", SUITE,
                str(root), MIRROR], timeout=1200)
        sh(["mount", "-t", "proc", "proc", str(ch.path("/proc"))])
        proc_mounted = True
        # no service may start in the chroot (there is no systemd there anyway)
        ch.path("/usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
        ch.path("/usr/sbin/policy-rc.d").chmod(0o755)
        shutil.copy("/etc/resolv.conf", ch.path("/etc/resolv.conf"))
        with timings.step("apt-get update in the chroot"):
            ch.apt("update")
        # The package's Depends, from Debian, before the baseline: the purge check
        # is about what guardian leaves, not what its dependencies' purges leave
        # (ca-certificates keeps /etc/ssl, netbase /etc/hosts, ...).  guardian-hostd
        # depends on guardian only (and python3), so guardian's Depends cover both.
        depends = sh(["dpkg-deb", "-f", str(built.deb), "Depends"]).stdout.strip()
        with timings.step("apt-get satisfy the Depends (bookworm)"):
            ch.apt("satisfy", "--no-install-recommends", depends)
        before = ch.snapshot()
        deb = f"/tmp/{built.deb.name}"
        hostd_deb = f"/tmp/{built.hostd_deb.name}"
        shutil.copy(built.deb, ch.path(deb))
        shutil.copy(built.hostd_deb, ch.path(hostd_deb))
        # both packages in one chroot (a dom0 would not run guardiand, but the
        # files do not conflict and one debootstrap is the test's main cost)
        with timings.step("apt-get install ./guardian.deb ./guardian-hostd.deb"):
            res = ch.apt("install", "--no-install-recommends", deb, hostd_deb)
        yield Installed(ch, deb, hostd_deb, before, res.stdout + res.stderr)
    finally:
        if proc_mounted:
            subprocess.run(["umount", "-l", str(ch.path("/proc"))], check=False)
        mounts = Path("/proc/mounts").read_text()
        if f" {root}/" in mounts or f" {root} " in mounts:
            raise RuntimeError(f"{root}: still mounted, not removed")
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- build


def test_build_and_lintian(built: Built) -> None:
    """build-deb.sh exits 0 (lintian --fail-on error passed) and lintian shows
    no error and no warning; the info tag left is overridden with a reason."""
    assert built.returncode == 0, built.log[-6000:]
    tags = [line for line in built.log.splitlines() if line[:2] in ("E:", "W:")]
    assert tags == [], "\n".join(tags)


def test_build_leaves_the_tree_clean(built: Built) -> None:
    assert built.top_after == built.top_before
    assert not (TOP / "debian").exists() and not (TOP / ".pybuild").exists()


def test_package_contents(built: Built) -> None:
    files = sh(["dpkg-deb", "-c", str(built.deb)]).stdout
    for path in ("./usr/bin/guardian", "./lib/systemd/system/guardian.service",
                 "./etc/guardian/guardian.toml", "./etc/guardian/conf.d/",
                 "./etc/guardian/conf-available/apache2.toml",
                 "./etc/guardian/conf-available/named.toml",
                 "./etc/guardian/conf-available/exim4.toml",
                 "./usr/share/man/man8/guardian.8.gz",
                 f".{DIST_INFO}/entry_points.txt",
                 "./usr/lib/python3/dist-packages/ipfailover/_wire.py",
                 "./usr/lib/python3/dist-packages/checks/http.py",
                 "./usr/share/doc/guardian/copyright"):
        assert f" {path}\n" in files + "\n", path
    assert "/guardian/lab/" not in files
    assert "failover.key" not in files   # made by postinst, never shipped
    ctrl = sh(["dpkg-deb", "-I", str(built.deb), "conffiles"]).stdout.split()
    assert ctrl == ["/etc/guardian/conf-available/apache2.toml",
                    "/etc/guardian/conf-available/exim4.toml",
                    "/etc/guardian/conf-available/named.toml",
                    "/etc/guardian/guardian.toml"]
    depends = sh(["dpkg-deb", "-f", str(built.deb), "Depends"]).stdout
    for dep in ("python3-requests", "python3-dnspython", "supervisor"):
        assert dep in depends
    assert "python3-supervisor" not in depends   # bookworm has none
    assert "/hostd" not in files and "guardian-hostd" not in files   # dom0 only


def test_hostd_package_contents(built: Built) -> None:
    files = sh(["dpkg-deb", "-c", str(built.hostd_deb)]).stdout
    for path in ("./usr/bin/guardian-hostd", "./lib/systemd/system/guardian-hostd.service",
                 "./etc/guardian/hostd.toml",
                 "./usr/lib/python3/dist-packages/guardian/hostd/__main__.py",
                 "./usr/lib/python3/dist-packages/guardian/hostd/_drivers.py",
                 "./usr/share/man/man8/guardian-hostd.8.gz",
                 "./usr/share/doc/guardian-hostd/copyright"):
        assert f" {path}\n" in files + "\n", path
    # only guardian.hostd: checks, ipfailover and guardian itself come from guardian
    for other in ("/checks/", "/ipfailover/", "/guardian/_supervisor.py", "dist-info",
                  "hostd-keys"):
        assert other not in files, other
    ctrl = sh(["dpkg-deb", "-I", str(built.hostd_deb), "conffiles"]).stdout.split()
    assert ctrl == ["/etc/guardian/hostd.toml"]
    depends = sh(["dpkg-deb", "-f", str(built.hostd_deb), "Depends"]).stdout
    assert f"guardian (= {VERSION})" in depends


# ---------------------------------------------------------------- installed


def test_version(installed: Installed) -> None:
    res = installed.chroot.run("/usr/bin/guardian", "--version")
    assert res.stdout.strip() == f"guardian {VERSION}"
    shebang = installed.chroot.path("/usr/bin/guardian").read_text().splitlines()[0]
    assert shebang == "#!/usr/bin/python3"


def test_validate_shipped_config(installed: Installed) -> None:
    res = installed.chroot.run("/usr/bin/guardian", "validate")
    assert "OK: guardian.toml: 0 service(s) enabled" in res.stdout
    assert "supervises nothing" in res.stderr


def test_validate_each_snippet_enabled_the_documented_way(installed: Installed) -> None:
    ch = installed.chroot
    for name in ("apache2", "named", "exim4"):
        ch.run("ln", "-s", f"../conf-available/{name}.toml", "/etc/guardian/conf.d/")
        try:
            res = ch.run("/usr/bin/guardian", "validate")
        finally:
            ch.run("rm", f"/etc/guardian/conf.d/{name}.toml")
        assert f"1 service(s) enabled ({name})" in res.stdout


def test_entry_points_and_bookworm_libraries(installed: Installed) -> None:
    code = (
        "import json, importlib.metadata as md, requests, dns.version, supervisor.xmlrpc\n"
        "import checks.http, checks.dns, checks.smtp, checks.tcp, checks.exec\n"
        "import guardian, ipfailover\n"
        "eps = {g: sorted(e.name for e in md.entry_points(group=g))\n"
        "       for g in ('guardian.checks', 'guardian.backends', 'guardian.escalations')}\n"
        "import guardian.escalation\n"
        "chans = {n: md.entry_points(group='guardian.escalations', name=n)[n].load().__name__\n"
        "         for n in ('http', 'exec', 'xenstore')}\n"
        "missing = [str(f) for f in md.files('guardian') if not f.locate().exists()]\n"
        "print(json.dumps({'eps': eps, 'chans': chans, 'requests': requests.__version__,\n"
        "                  'dnspython': dns.version.version, 'missing': missing,\n"
        "                  'dist': str(md.distribution('guardian')._path)}))\n"
    )
    out = json.loads(installed.chroot.run("/usr/bin/python3", "-c", code).stdout)
    assert {"http", "dns", "smtp", "tcp", "exec"} <= set(out["eps"]["guardian.checks"])
    assert {"supervisord", "systemd", "lsb", "command"} <= set(out["eps"]["guardian.backends"])
    assert set(out["eps"]["guardian.escalations"]) >= {"http", "exec", "xenstore"}
    assert out["chans"] == {"http": "HttpChannel", "exec": "ExecChannel",
                            "xenstore": "XenstoreChannel"}
    assert out["requests"].startswith("2.28.") and out["dnspython"].startswith("2.3.")
    assert out["dist"] == DIST_INFO
    assert out["missing"] == []   # RECORD matches what is installed (guardian.lab left out)
    owner = installed.chroot.run("dpkg", "-S", f"{DIST_INFO}/entry_points.txt").stdout
    assert owner.startswith("guardian:")


def test_probe_runs_with_debian_python(installed: Installed) -> None:
    res = installed.chroot.run("/usr/bin/guardian", "check", "tcp", "--host", "127.0.0.1",
                               "--port", "9", "--timeout", "2s", check=False)
    assert res.returncode == 2 and res.stdout.startswith("TCP CRITICAL"), res


def test_failover_key(installed: Installed) -> None:
    ch = installed.chroot
    key = ch.path("/etc/guardian/failover.key")
    st = key.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 0, 0)
    code = ("from ipfailover._wire import KeyRing\n"
            "r = KeyRing.load('/etc/guardian/failover.key')\n"
            "print(r.ids, r.send_id, len(r.send_key))")
    assert ch.run("/usr/bin/python3", "-c", code).stdout.split() == ["(1,)", "1", "32"]
    before = key.read_bytes()
    # configure again (a reinstall): the key is never overwritten
    ch.run("dpkg", "-i", installed.deb_in_chroot)
    assert key.read_bytes() == before
    assert key.stat().st_mode & 0o777 == 0o600


def test_systemd_analyze_verify(installed: Installed) -> None:
    # --man=no: minbase has no man-db to resolve Documentation=man:guardian(8);
    # that the page is installed is checked here instead
    res = installed.chroot.run("systemd-analyze", "verify", "--man=no",
                               "/lib/systemd/system/guardian.service", check=False)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    assert installed.chroot.path("/usr/share/man/man8/guardian.8.gz").is_file()


def _run_daemon_with_notify(ch: Chroot, watchdog_usec: int = 400_000) -> list[str]:
    """guardian run as systemd would start it (NOTIFY_SOCKET, WATCHDOG_USEC), the
    notify socket ours: READY=1 only once the control socket is bound, WATCHDOG=1
    at half the interval, `guardian status` answers, SIGTERM -> STOPPING=1, exit 0."""
    sock_path = ch.path("/run/guardian-test-notify.sock")
    control = ch.path("/run/guardian/control.sock")
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()
    msgs: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as nsock:
        nsock.bind(str(sock_path))
        env = dict(CLEAN_ENV, NOTIFY_SOCKET="/run/guardian-test-notify.sock",
                   WATCHDOG_USEC=str(watchdog_usec))
        proc = subprocess.Popen(["chroot", str(ch.root), "/usr/bin/guardian", "run"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            def recv(deadline: float) -> str | None:
                nsock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    m = nsock.recv(4096).decode()
                except TimeoutError:
                    return None
                msgs.append(m)
                return m

            deadline = time.monotonic() + 30
            while True:
                m = recv(deadline)
                assert m is not None, f"no READY=1 in 30 s; got {msgs}"
                if "READY=1" in m.split("\n"):
                    assert control.is_socket(), "READY=1 before the control socket exists"
                    break
            status = ch.run("/usr/bin/guardian", "status")
            assert "0 service(s)" in status.stdout
            pets = 0
            window = time.monotonic() + 1.5
            while (m := recv(window)) is not None:
                pets += m.split("\n").count("WATCHDOG=1")
            # 1.5 s at one pet per 0.2 s: 7; allow a slow machine
            assert pets >= 4, f"only {pets} WATCHDOG=1 in 1.5 s: {msgs}"
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            while (m := recv(deadline)) is not None and "STOPPING=1" not in m:
                pass
            assert any("STOPPING=1" in m for m in msgs), msgs
            out, _ = proc.communicate(timeout=15)
            assert proc.returncode == 0, out
            assert "Traceback" not in out and "Logging error" not in out, out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not control.exists()
    return msgs


def test_sd_notify_fallback_without_python3_systemd(installed: Installed) -> None:
    ch = installed.chroot
    assert ch.run("/usr/bin/python3", "-c", "import systemd", check=False).returncode != 0
    msgs = _run_daemon_with_notify(ch)
    assert msgs[0].startswith("READY=1")


def test_with_recommends(installed: Installed, timings: Timings) -> None:
    """The recommended packages from bookworm: sd_notify through python3-systemd,
    and the failover modules import with Debian's pyroute2 0.7.2 and scapy 2.5.0."""
    ch = installed.chroot
    with timings.step("apt-get install the Recommends"):
        ch.apt("install", "--no-install-recommends",
               "python3-systemd", "python3-pyroute2", "python3-scapy")
    # installed "automatically", as if with guardian: the purge's autoremove takes them
    ch.run("apt-mark", "auto", "python3-systemd", "python3-pyroute2", "python3-scapy")
    code = ("import importlib.metadata as md, ipfailover._vip, ipfailover._announce\n"
            "import ipfailover._engine\n"
            "print(md.version('pyroute2'), md.version('scapy'))")
    versions = ch.run("/usr/bin/python3", "-c", code).stdout.split()
    assert versions[0].startswith("0.7.") and versions[1].startswith("2.5."), versions
    _run_daemon_with_notify(ch)


# ---------------------------------------------------------------- guardian-hostd


def test_hostd_help_and_shebang(installed: Installed) -> None:
    ch = installed.chroot
    res = ch.run("/usr/bin/guardian-hostd", "--help")
    assert "run" in res.stdout and "validate" in res.stdout and "status" in res.stdout
    shebang = ch.path("/usr/bin/guardian-hostd").read_text().splitlines()[0]
    assert shebang == "#!/usr/bin/python3"
    assert ch.run("dpkg", "-S", "/usr/bin/guardian-hostd").stdout.startswith("guardian-hostd:")


def test_hostd_validate_shipped_config_says_no_vm(installed: Installed) -> None:
    """As shipped: valid, with no VM configured, and it says so."""
    res = installed.chroot.run("/usr/bin/guardian-hostd", "validate", check=False)
    assert res.returncode == 0, res
    assert "no VM configured" in res.stdout, res.stdout


def test_hostd_keydir_and_unit_disabled(installed: Installed) -> None:
    ch = installed.chroot
    st = ch.path("/etc/guardian/hostd-keys").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o700, 0, 0)
    # installed disabled: no VM is configured yet
    wants = ch.path("/etc/systemd/system/multi-user.target.wants")
    assert not (wants / "guardian-hostd.service").exists()
    assert (wants / "guardian.service").is_symlink()


def test_hostd_systemd_analyze_verify(installed: Installed) -> None:
    res = installed.chroot.run("systemd-analyze", "verify", "--man=no",
                               "/lib/systemd/system/guardian-hostd.service", check=False)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    assert installed.chroot.path("/usr/share/man/man8/guardian-hostd.8.gz").is_file()


def test_hostd_runs_with_a_configured_vm(installed: Installed) -> None:
    """The documented steps (a key in hostd-keys, a [vms.NAME] table), then
    `guardian-hostd run` with Debian's python3 binds its port and stops on SIGTERM."""
    ch = installed.chroot
    ch.run("sh", "-ec", "umask 077; printf '1 %s send\\n' "
           "\"$(od -An -v -tx1 -N32 /dev/urandom | tr -d ' \\n')\" "
           "> /etc/guardian/hostd-keys/test1.keys")
    conf = ch.path("/tmp/hostd-test.toml")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf.write_text(
        f'[hostd]\nlisten = "127.0.0.1:{port}"\nstate_dir = "/tmp/hostd-test-state"\n'
        '[vms.test1]\nuuid = "11111111-2222-3333-4444-555555555555"\n'
        'key_file = "/etc/guardian/hostd-keys/test1.keys"\ndriver = "command"\n'
        'destroy_command = ["true"]\ncreate_command = ["true"]\n'
        'state_command = ["echo", "running"]\n')
    try:
        res = ch.run("/usr/bin/guardian-hostd", "--config", "/tmp/hostd-test.toml", "validate")
        assert "OK (1 VM(s)" in res.stdout, res.stdout
        proc = subprocess.Popen(["chroot", str(ch.root), "/usr/bin/guardian-hostd", "--config",
                                 "/tmp/hostd-test.toml", "run"], env=CLEAN_ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "guardian-hostd did not listen in 20 s"
                with socket.socket() as c:
                    if c.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=15)
            assert proc.returncode == 0, out
            assert f"listening on 127.0.0.1:{port}" in out and "Traceback" not in out, out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        st = ch.run("/usr/bin/guardian-hostd", "--config", "/tmp/hostd-test.toml", "status")
        assert "test1: incarnation" in st.stdout, st.stdout
    finally:
        conf.unlink()
        shutil.rmtree(ch.path("/tmp/hostd-test-state"), ignore_errors=True)
    # the key stays for the removal test: a purge must take the operator's keys too


# ---------------------------------------------------------------- removal (last)


def test_remove_keeps_conffiles_then_purge_leaves_nothing(installed: Installed,
                                                         timings: Timings) -> None:
    ch = installed.chroot
    # state as a running daemon leaves it
    ch.path("/var/lib/guardian/journal").mkdir(parents=True, exist_ok=True)
    ch.path("/var/lib/guardian/journal/journal.jsonl").write_text("{}\n")
    # an operator's enabled snippet
    ch.run("ln", "-s", "../conf-available/apache2.toml", "/etc/guardian/conf.d/")
    ch.path("/var/lib/guardian-hostd").mkdir(mode=0o700, exist_ok=True)
    ch.path("/var/lib/guardian-hostd/journal.jsonl").write_text("{}\n")
    with timings.step("apt-get remove guardian guardian-hostd"):
        ch.apt("remove", "guardian", "guardian-hostd")
    for kept in ("/etc/guardian/guardian.toml", "/etc/guardian/failover.key",
                 "/etc/guardian/conf-available/named.toml", "/var/lib/guardian/journal",
                 "/etc/guardian/hostd.toml", "/etc/guardian/hostd-keys/test1.keys",
                 "/var/lib/guardian-hostd/journal.jsonl"):
        assert ch.path(kept).exists(), f"{kept} gone after remove (only purge may take it)"
    assert not ch.path("/usr/bin/guardian").exists()
    assert not ch.path("/usr/bin/guardian-hostd").exists()
    ch.run("rm", "/etc/guardian/conf.d/apache2.toml")
    with timings.step("apt-get purge --autoremove guardian guardian-hostd"):
        ch.apt("purge", "--autoremove", "guardian", "guardian-hostd")
    for pkg in ("guardian", "guardian-hostd"):
        status = ch.run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", pkg, check=False)
        assert status.returncode != 0 or status.stdout.strip() in ("un", "pn"), status.stdout
    after = ch.snapshot()
    left = sorted(after - installed.before)
    gone = sorted(installed.before - after)
    assert left == [], f"left after purge: {left}"
    assert gone == [], f"removed by the purge but there before: {gone}"
