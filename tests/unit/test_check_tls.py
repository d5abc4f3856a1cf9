"""checks._net: certificate validity read from DER, the expiry rule, error phrases."""

from __future__ import annotations

import datetime as dt
import errno
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from checks import Status
from checks._net import (
    CertParseError,
    cert_expiry_verdict,
    cert_validity,
    describe_oserror,
    fetch_peer_cert,
    oserror_status,
)


def der_of(path: Any) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


@pytest.mark.parametrize(("valid_days", "started_days_ago"), [
    (90, 1), (-3, 400), (40000, 2),  # the last ends after 2049: GeneralizedTime
])
def test_validity_matches_cryptography(tls_cert_factory: Any, valid_days: int,
                                       started_days_ago: int) -> None:
    x509 = pytest.importorskip("cryptography.x509")
    files = tls_cert_factory(valid_days=valid_days, started_days_ago=started_days_ago)
    parsed = x509.load_pem_x509_certificate(files.cert.read_bytes())
    not_before, not_after = cert_validity(der_of(files.cert))
    assert not_before == parsed.not_valid_before_utc
    assert not_after == parsed.not_valid_after_utc
    ca_before, ca_after = cert_validity(der_of(files.ca))  # a CA: no [0] version quirk
    assert ca_after > ca_before


def test_expiry_rule(tls_cert_factory: Any) -> None:
    der = der_of(tls_cert_factory(valid_days=10, started_days_ago=60).cert)
    _, not_after = cert_validity(der)
    def at(days: float) -> dt.datetime:
        return not_after - dt.timedelta(days=days)

    assert cert_expiry_verdict(der, 14, now=at(20)).status is Status.OK
    warn = cert_expiry_verdict(der, 14, now=at(13.5))
    assert warn.status is Status.WARNING
    assert warn.detail.startswith("certificate expires in 13.5 days")
    assert cert_expiry_verdict(der, 0, now=at(0.5)).status is Status.OK
    expired = cert_expiry_verdict(der, 14, now=at(-1))
    assert expired.status is Status.CRITICAL
    assert expired.detail.startswith("certificate expired on ")
    assert expired.days_left == pytest.approx(-1)


def test_not_yet_valid(tls_cert_factory: Any) -> None:
    der = der_of(tls_cert_factory(valid_days=10, started_days_ago=-5).cert)
    verdict = cert_expiry_verdict(der, 14)
    assert verdict.status is Status.CRITICAL
    assert verdict.detail.startswith("certificate not valid before")


@pytest.mark.parametrize("garbage", [b"", b"\x30", b"\x30\x05\x30\x03\x02\x01", b"hello"])
def test_garbage_der(garbage: bytes) -> None:
    with pytest.raises(CertParseError):
        cert_validity(garbage)


@pytest.fixture
def tls_listener(tls_cert_factory: Any) -> Iterator[tuple[int, bytes]]:
    files = tls_cert_factory(valid_days=30)
    ctx = files.server_context()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(2)
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1], der_of(files.cert)
    stop.set()
    thread.join(2)
    sock.close()


def test_fetch_peer_cert(tls_listener: tuple[int, bytes]) -> None:
    port, expected = tls_listener
    der = fetch_peer_cert("127.0.0.1", port, time.monotonic() + 2)
    assert der == expected


def test_fetch_peer_cert_silent_peer_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            fetch_peer_cert("127.0.0.1", silent.getsockname()[1], time.monotonic() + 0.2)
        assert time.monotonic() - started < 0.2 + 0.3


def test_oserror_phrases() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert (describe_oserror(refused), oserror_status(refused)) == (
        "connection refused", Status.CRITICAL)
    assert describe_oserror(TimeoutError("timed out")) == "timed out"
    too_many = OSError(errno.EMFILE, "Too many open files")
    assert (describe_oserror(too_many), oserror_status(too_many)) == (
        "Too many open files", Status.UNKNOWN)
    lookup = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert oserror_status(lookup) is Status.UNKNOWN
    assert describe_oserror(lookup) == "cannot resolve host name: Name or service not known"
