"""HTTP(S) probe built on requests: status, body and header rules, certificate expiry.

One ``requests.Session`` per run (no connection kept between runs, so a dead
server is noticed), ``trust_env`` off (no proxy or netrc from the environment),
the body streamed and read at most ``max_body_bytes``.  ``host`` overrides the
Host header only: TLS SNI and certificate verification use the URL's host.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from ._base import BlockingCheck, ProbeError, remaining
from ._net import (
    CertParseError,
    cert_expiry_verdict,
    describe_oserror,
    fetch_peer_cert,
    oserror_status,
)
from ._options import Options
from ._result import CheckResult, Status

DEFAULT_EXPECT_STATUS = frozenset(range(200, 400))
_METHODS = ("GET", "HEAD", "OPTIONS")
_SHOWN_HEADERS = ("Location", "Content-Type", "Content-Length", "Server")
_MAX_REDIRECTS = 10
_CHUNK = 16384


def format_codes(codes: frozenset[int]) -> str:
    """``{200, 201, 202, 301}`` -> ``"200-202,301"``."""
    parts: list[str] = []
    ordered = sorted(codes)
    start = prev = ordered[0]
    for code in ordered[1:] + [-1]:
        if code == prev + 1:
            prev = code
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = code
    return ",".join(parts)


def _check_url(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


def redact_url(url: str) -> str:
    """The URL with any password in it replaced by ``****`` (for logs and transcripts)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:****@{host}").geturl()


class HttpCheck(BlockingCheck):
    """Fetch a URL and judge the status, headers, body and TLS certificate."""

    kind = "http"

    def __init__(self, url: str, *, method: str = "GET", host: str | None = None,
                 headers: Mapping[str, str] | None = None,
                 expect_status: frozenset[int] = DEFAULT_EXPECT_STATUS,
                 body_regex: re.Pattern[str] | None = None,
                 body_regex_absent: re.Pattern[str] | None = None,
                 expect_headers: Mapping[str, re.Pattern[str]] | None = None,
                 follow_redirects: bool = False, verify_tls: bool = True,
                 ca_file: str | None = None, cert_expiry_warning_days: int = 14,
                 max_body_bytes: int = 1 << 20) -> None:
        self.url = url
        self.method = method
        self.host = host
        self.headers = dict(headers or {})
        self.expect_status = expect_status
        self.body_regex = body_regex
        self.body_regex_absent = body_regex_absent
        self.expect_headers = dict(expect_headers or {})
        self.follow_redirects = follow_redirects
        self.verify_tls = verify_tls
        self.ca_file = ca_file
        self.cert_expiry_warning_days = cert_expiry_warning_days
        self.max_body_bytes = max_body_bytes

    @classmethod
    def from_options(cls, opts: Options) -> HttpCheck:
        sub = opts.sub("expect_headers", {})
        expect_headers: dict[str, re.Pattern[str]] = {name: sub.regex(name) for name in sub.keys()}
        verify_tls: bool = opts.bool("verify_tls", True)
        ca_file: str | None = opts.str("ca_file", None)
        if ca_file is not None and not verify_tls:
            raise opts.error("ca_file", "is set but verify_tls is false")
        return cls(
            opts.convert("url", _check_url),
            method=opts.choice("method", _METHODS, "GET"),
            host=opts.str("host", None),
            headers=opts.str_map("headers", {}),
            expect_status=opts.int_set("expect_status", DEFAULT_EXPECT_STATUS),
            body_regex=opts.regex("body_regex", None),
            body_regex_absent=opts.regex("body_regex_absent", None),
            expect_headers=expect_headers,
            follow_redirects=opts.bool("follow_redirects", False),
            verify_tls=verify_tls,
            ca_file=ca_file,
            cert_expiry_warning_days=opts.int("cert_expiry_warning_days", 14, minimum=0),
            max_body_bytes=opts.int("max_body_bytes", 1 << 20, minimum=0),
        )

    def describe(self) -> str:
        url = redact_url(self.url)
        return f"{url} (Host: {self.host})" if self.host else url

    # -- the run ----------------------------------------------------------
    def probe_blocking(self, deadline: float) -> CheckResult:
        if self.ca_file is not None and not os.path.isfile(self.ca_file):
            raise ProbeError(f"ca_file {self.ca_file!r} does not exist")
        headers = dict(self.headers)
        if self.host:
            headers["Host"] = self.host
        transcript = [f"> {self.method} {self.describe()}"]
        verify: bool | str = self.ca_file if self.ca_file else self.verify_tls
        with requests.Session() as session:
            session.trust_env = False
            session.max_redirects = _MAX_REDIRECTS
            try:
                left = remaining(deadline)
                response = session.request(
                    self.method, self.url, headers=headers, timeout=(left, left),
                    allow_redirects=self.follow_redirects, verify=verify, stream=True)
                try:
                    return self._judge(response, deadline, transcript)
                finally:
                    response.close()
            except requests.RequestException as exc:
                return self._failure(exc, transcript)

    def _judge(self, response: requests.Response, deadline: float,
               transcript: list[str]) -> CheckResult:
        for hop in response.history:
            transcript.append(f"< {_status_line(hop)}")
            if "Location" in hop.headers:
                transcript.append(f"< Location: {hop.headers['Location']}")
        transcript.append(f"< {_status_line(response)}")
        shown = [h for h in _SHOWN_HEADERS if h not in self.expect_headers]
        for name in shown + list(self.expect_headers):
            if name in response.headers:
                transcript.append(f"< {name}: {response.headers[name]}")

        where = redact_url(response.url if response.history else self.url)
        head = f"HTTP {response.status_code} {response.reason or ''}".rstrip() + f" from {where}"
        perfdata: list[str] = []
        cert = self._cert_verdict(response, deadline, transcript, perfdata)

        if response.status_code not in self.expect_status:
            return CheckResult(Status.CRITICAL,
                               f"{head} (expected {format_codes(self.expect_status)})",
                               perfdata=tuple(perfdata), transcript=tuple(transcript))

        problems: list[str] = []
        for name, pattern in self.expect_headers.items():
            value = response.headers.get(name)
            if value is None:
                problems.append(f"header {name} missing")
            elif not pattern.search(value):
                problems.append(f"header {name}: {value!r} does not match {pattern.pattern!r}")

        size = 0
        if self.method != "HEAD" and self.max_body_bytes > 0:
            body, size, truncated = self._read_body(response, deadline)
            perfdata.insert(0, f"size={size}B;;;0")
            if truncated:
                transcript.append(f"  (body read stopped at {self.max_body_bytes} bytes)")
            text = body.decode(_charset(response), errors="replace")
            if self.body_regex is not None and not self.body_regex.search(text):
                problems.append(f"body does not match {self.body_regex.pattern!r}")
            if self.body_regex_absent is not None:
                found = self.body_regex_absent.search(text)
                if found:
                    problems.append(f"body contains {found.group(0)[:60]!r}")

        if problems:
            return CheckResult(Status.CRITICAL, f"{head} but {'; '.join(problems)}",
                               perfdata=tuple(perfdata), transcript=tuple(transcript))
        if cert is not None and cert[0] is not Status.OK:
            return CheckResult(cert[0], f"{head}: {cert[1]}", perfdata=tuple(perfdata),
                               transcript=tuple(transcript))
        size_note = f" ({size} bytes)" if perfdata and perfdata[0].startswith("size=") else ""
        return CheckResult(Status.OK, f"{head}{size_note}", perfdata=tuple(perfdata),
                           transcript=tuple(transcript))

    def _read_body(self, response: requests.Response,
                   deadline: float) -> tuple[bytes, int, bool]:
        """Read at most ``max_body_bytes`` (decoded) under the deadline: (body, size, cut)."""
        chunks: list[bytes] = []
        size = 0
        _set_timeout(response, deadline)
        for chunk in response.iter_content(chunk_size=_CHUNK):
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"".join(chunks)[: self.max_body_bytes], self.max_body_bytes, True
            if time.monotonic() >= deadline:
                raise requests.exceptions.ReadTimeout("deadline reached while reading the body")
            _set_timeout(response, deadline)
        return b"".join(chunks), size, False

    def _cert_verdict(self, response: requests.Response, deadline: float,
                      transcript: list[str], perfdata: list[str]) -> tuple[Status, str] | None:
        """Expiry verdict of the final server's certificate (None when not checked)."""
        parts = urlsplit(response.url)
        if parts.scheme != "https" or self.cert_expiry_warning_days == 0:
            return None
        der: bytes | None = None
        sock = _response_socket(response)
        getpeercert = getattr(sock, "getpeercert", None)
        if getpeercert is not None:
            der = getpeercert(binary_form=True)
        if der is None and parts.hostname:
            try:
                der = fetch_peer_cert(parts.hostname, parts.port or 443, deadline)
            except OSError as exc:
                transcript.append(f"  certificate not checked: {describe_oserror(exc)}")
                return None
        if der is None:
            return None
        try:
            verdict = cert_expiry_verdict(der, self.cert_expiry_warning_days)
        except CertParseError as exc:
            transcript.append(f"  certificate not checked: {exc}")
            return None
        transcript.append(f"  {verdict.detail}")
        perfdata.append(f"cert_days={verdict.days_left:.1f};{self.cert_expiry_warning_days};0")
        return verdict.status, verdict.detail

    def _failure(self, exc: requests.RequestException, transcript: list[str]) -> CheckResult:
        if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidHeader,
                            requests.exceptions.InvalidSchema,
                            requests.exceptions.MissingSchema)):
            raise ProbeError(f"{type(exc).__name__}: {exc}") from None
        cause = _plain_oserror(exc)
        status = Status.CRITICAL
        if isinstance(exc, requests.exceptions.TooManyRedirects):
            what = f"more than {_MAX_REDIRECTS} redirects"
        elif cause is not None and not isinstance(cause, TimeoutError):
            what = describe_oserror(cause)
            status = oserror_status(cause)
        elif isinstance(exc, requests.Timeout) or _is_timeout(exc):
            what = "timed out"
        else:
            what = f"{type(exc).__name__}: {exc}"
        transcript.append(f"! {what}")
        return CheckResult(status, f"{self.describe()}: {what}", transcript=tuple(transcript))


def _status_line(response: requests.Response) -> str:
    version = {10: "HTTP/1.0", 11: "HTTP/1.1", 20: "HTTP/2"}.get(
        getattr(response.raw, "version", 11), "HTTP")
    return f"{version} {response.status_code} {response.reason or ''}".rstrip()


def _charset(response: requests.Response) -> str:
    """The declared charset, else UTF-8 (not requests' ISO-8859-1 guess for text/*)."""
    declared = "charset=" in response.headers.get("Content-Type", "").lower()
    encoding = response.encoding if declared and response.encoding else "utf-8"
    try:
        "".encode(encoding)
    except LookupError:
        return "utf-8"
    return encoding


def _response_socket(response: requests.Response) -> socket.socket | None:
    raw: Any = response.raw
    conn = getattr(raw, "connection", None) or getattr(raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _set_timeout(response: requests.Response, deadline: float) -> None:
    sock = _response_socket(response)
    if sock is not None:
        sock.settimeout(remaining(deadline))


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps (requests -> urllib3 -> socket)."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    while queue:
        item = queue.pop(0)
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        for nxt in (getattr(item, "reason", None), item.__cause__, item.__context__,
                    *item.args):
            if isinstance(nxt, BaseException):
                queue.append(nxt)


def _plain_oserror(exc: BaseException) -> OSError | None:
    """The socket/ssl error underneath a requests exception, if any."""
    for item in _causes(exc):
        module = type(item).__module__
        if isinstance(item, OSError) and not module.startswith(("requests", "urllib3")):
            return item
    return None


def _is_timeout(exc: BaseException) -> bool:
    return any(isinstance(item, (TimeoutError, urllib3.exceptions.TimeoutError))
               for item in _causes(exc))
