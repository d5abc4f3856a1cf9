"""Helpers shared by the network checks: socket errors as verdicts, TLS contexts
and the peer certificate's validity window.

Certificate expiry is the one place where wall-clock time is right (a
certificate's ``notAfter`` is a calendar date); every duration and deadline
elsewhere uses ``time.monotonic()``.
"""

from __future__ import annotations

import datetime as dt
import errno
import socket
import ssl
from dataclasses import dataclass

from ._base import ProbeError, remaining
from ._result import Status

# Errors that mean "this machine is short of something", not "the service is down".
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def describe_oserror(exc: OSError) -> str:
    """A short human phrase for a socket-level error."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verify failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name: {exc.strerror or exc}"
    if exc.errno == errno.ECONNREFUSED:
        return "connection refused"
    if exc.errno == errno.ECONNRESET:
        return "connection reset by peer"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__


def oserror_status(exc: OSError) -> Status:
    """CRITICAL for the service's fault; UNKNOWN for a local shortage or name lookup."""
    if isinstance(exc, socket.gaierror) or exc.errno in _LOCAL_ERRNOS:
        return Status.UNKNOWN
    return Status.CRITICAL


def client_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """A client TLS context; a missing or unreadable ``ca_file`` is a ProbeError."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ProbeError(f"cannot load ca_file {ca_file!r}: {exc}") from None
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def fetch_peer_cert(host: str, port: int, deadline: float,
                    server_name: str | None = None) -> bytes | None:
    """Handshake once (no verification) just to read the peer's certificate (DER)."""
    ctx = client_context(False, None)
    with socket.create_connection((host, port), timeout=remaining(deadline)) as raw:
        raw.settimeout(remaining(deadline))
        with ctx.wrap_socket(raw, server_hostname=server_name or host) as tls:
            return tls.getpeercert(binary_form=True)


# -- the validity window of an X.509 certificate, read straight from DER ----
class CertParseError(ValueError):
    """The certificate's DER could not be read."""


def _der_item(data: bytes, pos: int) -> tuple[int, int, int]:
    """Return (tag, content start, content end) of the DER item at ``pos``."""
    if pos + 2 > len(data):
        raise CertParseError("truncated DER")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise CertParseError("bad DER length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise CertParseError("truncated DER")
    return tag, pos, pos + length


def _der_time(tag: int, text: bytes) -> dt.datetime:
    value = text.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ, years 1950..2049 (RFC 5280)
        parsed = dt.datetime.strptime(value, "%y%m%d%H%M%SZ")
        if parsed.year >= 2050:
            parsed = parsed.replace(year=parsed.year - 100)
    elif tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        parsed = dt.datetime.strptime(value, "%Y%m%d%H%M%SZ")
    else:
        raise CertParseError(f"unexpected time tag 0x{tag:02x}")
    return parsed.replace(tzinfo=dt.UTC)


def cert_validity(der: bytes) -> tuple[dt.datetime, dt.datetime]:
    """(notBefore, notAfter) of a DER certificate, as aware UTC datetimes."""
    try:
        _, cert_start, _ = _der_item(der, 0)             # Certificate SEQUENCE
        _, pos, tbs_end = _der_item(der, cert_start)     # tbsCertificate SEQUENCE
        tag, _, end = _der_item(der, pos)
        if tag == 0xA0:                                   # [0] version
            pos = end
        for _field in ("serialNumber", "signature", "issuer"):
            _, _, pos = _der_item(der, pos)
        tag, vpos, _ = _der_item(der, pos)                # validity SEQUENCE
        if tag != 0x30 or vpos >= tbs_end:
            raise CertParseError("no validity sequence")
        tag1, s1, e1 = _der_item(der, vpos)
        tag2, s2, e2 = _der_item(der, e1)
        return _der_time(tag1, der[s1:e1]), _der_time(tag2, der[s2:e2])
    except CertParseError:
        raise
    except ValueError as exc:  # bad time text (UnicodeDecodeError is a ValueError)
        raise CertParseError(str(exc)) from None


@dataclass(frozen=True)
class CertVerdict:
    """What the expiry rule says about one certificate."""

    status: Status
    detail: str
    days_left: float


def cert_expiry_verdict(der: bytes, warning_days: int,
                        now: dt.datetime | None = None) -> CertVerdict:
    """CRITICAL when expired or not yet valid, WARNING within ``warning_days``."""
    not_before, not_after = cert_validity(der)
    now = now or dt.datetime.now(dt.UTC)
    days_left = (not_after - now).total_seconds() / 86400.0
    stamp = not_after.strftime("%Y-%m-%d %H:%M UTC")
    if now < not_before:
        return CertVerdict(Status.CRITICAL,
                           f"certificate not valid before {not_before:%Y-%m-%d %H:%M UTC}",
                           days_left)
    if days_left < 0:
        return CertVerdict(Status.CRITICAL, f"certificate expired on {stamp}", days_left)
    if days_left < warning_days:
        return CertVerdict(Status.WARNING,
                           f"certificate expires in {days_left:.1f} days ({stamp})", days_left)
    return CertVerdict(Status.OK, f"certificate valid until {stamp}", days_left)
