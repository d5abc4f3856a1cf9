"""Shared fixtures: running a check to completion, self-signed TLS material made
on the fly with ``cryptography``, a short private directory, and a private
supervisord in one.  (Plain helper functions are in ``unit_helpers``.)"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from unit_helpers import kill_all

from checks import Check, CheckResult, Options, run_check

if TYPE_CHECKING:
    from guardian.backends import SupervisordBackend
    from guardian.backends.supervisord import SupervisordController


@pytest.fixture
def run_sync() -> Callable[[Check, float], CheckResult]:
    """``run_sync(check, timeout)``: run_check in a fresh event loop."""

    def run(check: Check, timeout: float) -> CheckResult:
        return asyncio.run(run_check(check, timeout))

    return run


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate and key, and the CA certificate that signed it."""

    cert: Path
    key: Path
    ca: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


TlsFactory = Callable[..., TlsFiles]


@pytest.fixture(scope="session")
def tls_cert_factory(tmp_path_factory: pytest.TempPathFactory) -> TlsFactory:
    """``tls_cert_factory(valid_days=90, started_days_ago=1)`` -> TlsFiles.

    One test CA per session; each call issues a leaf for 127.0.0.1, ::1 and
    localhost valid from ``now - started_days_ago`` for ``valid_days`` days
    (a negative end makes an expired certificate).
    """
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    base = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "guardian test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = base / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    counter = [0]

    def issue(valid_days: float = 90, started_days_ago: float = 1) -> TlsFiles:
        counter[0] += 1
        key = ec.generate_private_key(ec.SECP256R1())
        start = now - dt.timedelta(days=started_days_ago)
        end = now + dt.timedelta(days=valid_days)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(min(start, end - dt.timedelta(seconds=1)))
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_path = base / f"leaf{counter[0]}.pem"
        key_path = base / f"leaf{counter[0]}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return TlsFiles(cert_path, key_path, ca_path)

    return issue


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private directory with a short path (unix socket paths: at most 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="gut-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------------------------- supervisord
SUPERVISORD = "/usr/bin/supervisord"


@dataclass
class SupervisordProc:
    """A private supervisord: its directory (short: unix socket paths are limited
    to 107 bytes), its process, and a plain XML-RPC view for the test's own checks."""

    dir: Path
    proc: subprocess.Popen[bytes]
    programs: tuple[str, ...]
    extra_pids: list[int] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)   # noted by the test, if it likes

    @property
    def url(self) -> str:
        return f"unix://{self.dir}/s.sock"

    @property
    def event_socket(self) -> str:
        return f"{self.dir}/ev.sock"

    def rpc(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport
        return xmlrpc.client.ServerProxy(
            "http://127.0.0.1", transport=SupervisorTransport(None, None, self.url)).supervisor

    def info(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.rpc().getProcessInfo(name)
        return info

    def pid(self, name: str) -> int:
        return int(self.info(name)["pid"])

    def log(self) -> str:
        return (self.dir / "supervisord.log").read_text(errors="replace")

    def backend(self, **options: Any) -> SupervisordBackend:
        """guardian's supervisord backend for this supervisord."""
        from guardian.backends import SupervisordBackend
        opts = Options({"url": self.url, "event_socket": self.event_socket, **options},
                       "backends.supervisord", "test")
        backend = SupervisordBackend.from_options(opts)
        opts.finish()
        return backend

    def controller(self, unit: str | None, service: str = "web",
                   **options: Any) -> SupervisordController:
        """The backend's controller of ``unit`` (default: the service's name)."""
        table = {} if unit is None else {"unit": unit}
        return self.backend(**options).controller(
            service, Options(table, f"services.{service}", "test"))


SupervisordFactory = Callable[..., SupervisordProc]


@pytest.fixture
def supervisord_factory() -> Iterator[SupervisordFactory]:
    """``supervisord_factory(programs, ready=..., extra=...)`` -> SupervisordProc.

    ``programs`` maps a program name to its section body (``command=...`` and
    options); ``extra`` is more configuration (``[group:x]`` sections, say);
    guardian's event listener is registered too, forwarding to ``event_socket``.
    Returns once every autostarted program is RUNNING and ``ready()`` (if given)
    is true.  At the end every program process, every pid
    the test added to ``extra_pids`` and supervisord itself are killed by pid.
    """
    if not os.path.exists(SUPERVISORD):
        pytest.skip(f"{SUPERVISORD} is not installed")
    from guardian.backends import listener_config_snippet

    started: list[SupervisordProc] = []

    def start(programs: dict[str, str], ready: Callable[[], bool] | None = None,
              timeout: float = 15.0, extra: str = "") -> SupervisordProc:
        d = Path(tempfile.mkdtemp(prefix="gsup-", dir="/tmp"))
        sections = "\n".join(f"[program:{name}]\n{body.strip()}\ndirectory={d}\n"
                             for name, body in programs.items())
        conf = d / "supervisord.conf"
        conf.write_text(f"""\
[unix_http_server]
file={d}/s.sock
chmod=0700

[supervisord]
nodaemon=true
logfile={d}/supervisord.log
pidfile={d}/supervisord.pid
childlogdir={d}
loglevel=info
minfds=64
minprocs=16

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

{sections}
{extra}
{listener_config_snippet(sys.executable, f"{d}/ev.sock")}
""")
        with open(d / "stdout.log", "wb") as out:
            proc = subprocess.Popen([SUPERVISORD, "-n", "-c", str(conf)], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=d)
        sd = SupervisordProc(d, proc, tuple(programs))
        started.append(sd)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError("supervisord exited: "
                                     + (d / "stdout.log").read_text(errors="replace"))
            try:
                infos = sd.rpc().getAllProcessInfo()
                up = all(i["statename"] == "RUNNING" for i in infos
                         if i["name"] == "guardian" or "autostart=false" not in
                         programs.get(i["name"], "").replace(" ", ""))
            except (OSError, xmlrpc.client.Error):
                up = False
            if up and (ready is None or ready()):
                return sd
            if time.monotonic() >= deadline:
                raise AssertionError(f"supervisord in {d}: programs not up after {timeout} s:\n"
                                     + sd.log())
            time.sleep(0.02)

    try:
        yield start
    finally:
        # Kill every process by pid: first the test's extra pids (orphans, say) and
        # supervisord's children (supervisord reaps them; its own orderly shutdown
        # would take seconds, one 1 s tick per program whose pipes an orphan
        # holds), then supervisord.
        for sd in started:
            pids = list(sd.extra_pids)
            if sd.proc.poll() is None:
                with contextlib.suppress(OSError, xmlrpc.client.Error):
                    pids += [i["pid"] for i in sd.rpc().getAllProcessInfo() if i["pid"]]
            kill_all(pids)
            sd.proc.send_signal(signal.SIGTERM)
            # supervisord sees the signal when its poll loop wakes up (up to 1 s):
            # a connection to its socket wakes it now
            with contextlib.suppress(OSError), \
                    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect(str(sd.dir / "s.sock"))
            try:
                sd.proc.wait(10.0)
            except subprocess.TimeoutExpired:
                sd.proc.kill()
                sd.proc.wait(5.0)
            shutil.rmtree(sd.dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _private_journal(tmp_path_factory: pytest.TempPathFactory,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A Supervisor built on a config without ``state_dir`` journals to
    /var/lib/guardian/journal: in the unit tier, to a temporary directory instead."""
    from guardian import _journal

    real = _journal.Journal

    class TestJournal(real):  # type: ignore[misc,valid-type]
        def __init__(self, directory: Any, **kwargs: Any) -> None:
            if str(directory).startswith("/var/lib/guardian"):
                directory = tmp_path_factory.mktemp("journal")
            super().__init__(directory, **kwargs)

    monkeypatch.setattr(_journal, "Journal", TestJournal)
