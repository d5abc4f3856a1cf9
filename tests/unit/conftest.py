"""Shared helpers for the check tests: running a check to completion, and
self-signed TLS material made on the fly with ``cryptography``."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from checks import Check, CheckResult, run_check


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
