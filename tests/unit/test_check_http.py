"""The http check against a real http.server on 127.0.0.1 (plain and TLS)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from unit_helpers import LoopbackServer, build, free_port

from checks import CheckResult, ConfigError, Status
from checks.http import HttpCheck, format_codes

RunSync = Callable[[Any, float], CheckResult]


@dataclass
class Route:
    """What the loopback server answers on one path."""

    status: int = 200
    body: bytes = b"hello from guardian's test server"
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False         # accept the request, never answer
    stall_body: bool = False   # send headers and a little body, then stall


class LoopbackHttpServer(LoopbackServer):
    """ThreadingHTTPServer on 127.0.0.1 with configurable routes; records requests."""

    def __init__(self, tls_context: Any = None) -> None:
        self.routes: dict[str, Route] = {"/": Route()}
        self.seen: list[dict[str, Any]] = []
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._serve(send_body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(send_body=False)

            def _serve(self, send_body: bool) -> None:
                owner.seen.append({"method": self.command, "path": self.path,
                                   "headers": dict(self.headers),
                                   "client_port": self.client_address[1]})
                route = owner.routes.get(self.path.split("?")[0])
                if route is None:
                    route = Route(404, b"not found")
                if route.hang:
                    owner.release.wait(10)
                    return
                self.send_response(route.status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(route.body)))
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if not send_body:
                    return
                if route.stall_body:
                    self.wfile.write(route.body[:10])
                    self.wfile.flush()
                    owner.release.wait(10)
                    return
                self.wfile.write(route.body)

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        self.scheme = "http"
        if tls_context is not None:
            httpd.socket = tls_context.wrap_socket(httpd.socket, server_side=True)
            self.scheme = "https"
        self._serve(httpd)

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"


@pytest.fixture
def web() -> Iterator[LoopbackHttpServer]:
    with LoopbackHttpServer() as server:
        yield server


def http(**options: Any) -> HttpCheck:
    return build("http", HttpCheck, options, "services.web.checks[0]")


# -- plain HTTP -------------------------------------------------------------
def test_ok(web: LoopbackHttpServer, run_sync: RunSync) -> None:
    result = run_sync(http(url=web.url()), 2.0)
    body_len = len(Route().body)
    assert result.status is Status.OK
    assert result.detail == f"HTTP 200 OK from {web.url()} ({body_len} bytes)"
    assert result.perfdata == (f"size={body_len}B;;;0",)
    assert "< HTTP/1.1 200 OK" in result.transcript
    assert "< Content-Type: text/plain; charset=utf-8" in result.transcript
    assert result.transcript[0] == f"> GET {web.url()}"
    assert 0 < result.duration < 2.0


def test_server_error_is_critical(web: LoopbackHttpServer, run_sync: RunSync) -> None:
    web.routes["/"] = Route(500, b"boom")
    result = run_sync(http(url=web.url()), 2.0)
    assert result.status is Status.CRITICAL
    assert result.detail == f"HTTP 500 Internal Server Error from {web.url()} (expected 200-399)"


def test_expect_status_set(web: LoopbackHttpServer, run_sync: RunSync) -> None:
    web.routes["/"] = Route(204, b"")
    assert run_sync(http(url=web.url(), expect_status=[200]), 2.0).status is Status.CRITICAL
    assert run_sync(http(url=web.url(), expect_status="200-204"), 2.0).status is Status.OK


def test_redirect_not_followed_by_default(web: LoopbackHttpServer, run_sync: RunSync) -> None:
    web.routes["/old"] = Route(301, b"", {"Location": "/"})
    result = run_sync(http(url=web.url("/old")), 2.0)
    assert result.status is Status.OK
    assert "< Location: /" in result.transcript
    assert [r["path"] for r in web.seen] == ["/old"]
    strict = run_sync(http(url=web.url("/old"), expect_status=200), 2.0)
    assert strict.status is Status.CRITICAL
    assert "HTTP 301 Moved Permanently" in strict.detail


def test_redirect_followed(web: LoopbackHttpServer, run_sync: RunSync) -> None:
    web.routes["/old"] = Route(302, b"", {"Location": "/"})
    result = run_sync(http(url=web.url("/old"), follow_redirects=True, expect_status=200), 2.0)
    assert result.status is Status.OK, result.detail
    assert result.detail.startswith(f"HTTP 200 OK from {web.url('/')}")
    assert result.transcript[1:4] == ("< HTTP/1.1 302 Found", "< Location: /",
                                      "< HTTP/1.1 200 OK")


def test_redirect_loop_is_critical(web: LoopbackHttpServer, run_sync: RunSync) -> None:
    web.routes["/loop"] = Route(302, b"", {"Location": "/loop"})
    result = run_sync(http(url=web.url("/loop"), follow_redirects=True), 3.0)
    assert result.status is Status.CRITICAL
    assert "more than 10 redirects" in result.detail


def test_body_regex(web: LoopbackHttpServer, run_sync: RunSync) -> None:
    assert run_sync(http(url=web.url(), body_regex="guardian's"), 2.0).status is Status.OK
    bad = run_sync(http(url=web.url(), body_regex="^Welcome"), 2.0)
    assert bad.status is Status.CRITICAL
    assert bad.detail.endswith("but body does not match '^Welcome'")
    absent = run_sync(http(url=web.url(), body_regex_absent="test serv[a-z]+"), 2.0)
    assert absent.status is Status.CRITICAL
    assert "body contains 'test server'" in absent.detail
    assert run_sync(http(url=web.url(), body_regex_absent="Fatal"), 2.0).status is Status.OK


def test_body_decoded_as_utf8(web: LoopbackHttpServer, run_sync: RunSync) -> None:
    web.routes["/"] = Route(200, "grüße".encode(), {})
    assert run_sync(http(url=web.url(), body_regex="grüße"), 2.0).status is Status.OK


def test_expect_headers(web: LoopbackHttpServer, run_sync: RunSync) -> None:
    web.routes["/"] = Route(200, b"x", {"X-Backend": "apache2 node vm01"})
    good = http(url=web.url(), expect_headers={"X-Backend": "^apache2 "})
    result = run_sync(good, 2.0)
    assert result.status is Status.OK
    assert "< X-Backend: apache2 node vm01" in result.transcript
    wrong = run_sync(http(url=web.url(), expect_headers={"X-Backend": "nginx"}), 2.0)
    assert wrong.status is Status.CRITICAL
    assert "header X-Backend: 'apache2 node vm01' does not match 'nginx'" in wrong.detail
    missing = run_sync(http(url=web.url(), expect_headers={"X-Other": "."}), 2.0)
    assert missing.status is Status.CRITICAL
    assert "header X-Other missing" in missing.detail


def test_host_override_and_headers_sent(web: LoopbackHttpServer, run_sync: RunSync) -> None:
    check = http(url=web.url(), host="www.example.test", headers={"X-Probe": "guardian"})
    assert check.describe() == f"{web.url()} (Host: www.example.test)"
    assert run_sync(check, 2.0).status is Status.OK
    sent = web.seen[-1]["headers"]
    assert sent["Host"] == "www.example.test"
    assert sent["X-Probe"] == "guardian"


def test_password_in_url_not_shown(web: LoopbackHttpServer, run_sync: RunSync) -> None:
    url = f"http://monitor:hunter2@127.0.0.1:{web.port}/"
    check = http(url=url)
    assert check.describe() == f"http://monitor:****@127.0.0.1:{web.port}/"
    result = run_sync(check, 2.0)
    assert result.status is Status.OK
    assert web.seen[-1]["headers"]["Authorization"].startswith("Basic ")  # it was used
    assert "hunter2" not in result.detail + "\n".join(result.transcript)
    web.routes["/"] = Route(500)
    failed = run_sync(check, 2.0)
    assert failed.status is Status.CRITICAL
    assert "hunter2" not in failed.detail + "\n".join(failed.transcript)
    web.close()
    down = run_sync(check, 2.0)
    assert down.status is Status.CRITICAL
    assert "hunter2" not in down.detail + "\n".join(down.transcript)


def test_head_reads_no_body(web: LoopbackHttpServer, run_sync: RunSync) -> None:
    result = run_sync(http(url=web.url(), method="HEAD"), 2.0)
    assert result.status is Status.OK
    assert web.seen[-1]["method"] == "HEAD"
    assert result.perfdata == ()


def test_max_body_bytes_stops_reading(web: LoopbackHttpServer, run_sync: RunSync) -> None:
    web.routes["/big"] = Route(200, b"a" * (3 << 20) + b"THE END")
    cut = run_sync(http(url=web.url("/big"), max_body_bytes=65536, body_regex="THE END"), 3.0)
    assert cut.status is Status.CRITICAL
    assert cut.perfdata[0] == "size=65536B;;;0"
    assert "  (body read stopped at 65536 bytes)" in cut.transcript
    whole = run_sync(http(url=web.url("/big"), max_body_bytes=4 << 20, body_regex="THE END"), 3.0)
    assert whole.status is Status.OK


def test_new_connection_each_run(web: LoopbackHttpServer, run_sync: RunSync) -> None:
    check = http(url=web.url())
    run_sync(check, 2.0)
    run_sync(check, 2.0)
    assert len(web.seen) == 2
    assert web.seen[0]["client_port"] != web.seen[1]["client_port"]


def test_proxy_environment_ignored(web: LoopbackHttpServer, run_sync: RunSync,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    dead = free_port()
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{dead}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert run_sync(http(url=web.url()), 2.0).status is Status.OK


def test_connection_refused(run_sync: RunSync) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    result = run_sync(http(url=url), 2.0)
    assert result.status is Status.CRITICAL
    assert result.detail == f"{url}: connection refused"


@pytest.mark.parametrize("route", [Route(hang=True), Route(stall_body=True)],
                         ids=["no-answer", "stalled-body"])
def test_hung_server_is_critical_by_the_deadline(web: LoopbackHttpServer, run_sync: RunSync,
                                                 route: Route) -> None:
    web.routes["/hang"] = route
    started = time.monotonic()
    result = run_sync(http(url=web.url("/hang")), 0.5)
    elapsed = time.monotonic() - started
    assert result.status is Status.CRITICAL
    assert "timed out" in result.detail
    assert elapsed < 0.5 + 0.5


def test_missing_ca_file_is_unknown(web: LoopbackHttpServer, run_sync: RunSync,
                                    tmp_path: Any) -> None:
    result = run_sync(http(url=web.url(), ca_file=str(tmp_path / "nope.pem")), 2.0)
    assert result.status is Status.UNKNOWN
    assert "nope.pem" in result.detail


# -- options ------------------------------------------------------------------
def test_unknown_key_names_file_and_path() -> None:
    with pytest.raises(ConfigError) as info:
        http(url="http://127.0.0.1/", timout="1s")
    assert "guardian.toml: services.web.checks[0].timout: unknown key" in str(info.value)


@pytest.mark.parametrize(("options", "message"), [
    ({"url": "x"}, "services.web.checks[0].url: 'x' is not an http:// or https:// URL"),
    ({}, "services.web.checks[0].url: is required"),
    ({"url": "http://h/", "expect_status": "abc"}, "checks[0].expect_status: 'abc'"),
    ({"url": "http://h/", "method": "DELETE"}, "checks[0].method: 'DELETE' is not one of"),
    ({"url": "http://h/", "expect_headers": {"Server": "("}},
     "checks[0].expect_headers.Server: '(' is not a regular expression"),
    ({"url": "http://h/", "verify_tls": False, "ca_file": "/x"},
     "checks[0].ca_file: is set but verify_tls is false"),
    ({"url": "http://h/", "max_body_bytes": -1}, "checks[0].max_body_bytes: -1 is below"),
])
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        http(**options)
    assert message in str(info.value)
    assert str(info.value).startswith("guardian.toml: services.web.checks[0].")


def test_defaults() -> None:
    check = http(url="http://127.0.0.1/")
    assert check.method == "GET"
    assert check.expect_status == frozenset(range(200, 400))
    assert (check.follow_redirects, check.verify_tls, check.cert_expiry_warning_days,
            check.max_body_bytes) == (False, True, 14, 1 << 20)


def test_format_codes() -> None:
    assert format_codes(frozenset({200, 201, 202, 301, 404})) == "200-202,301,404"
    assert format_codes(frozenset({200})) == "200"


# -- HTTPS ----------------------------------------------------------------------
@pytest.fixture
def tls_web(tls_cert_factory: Any, request: pytest.FixtureRequest
            ) -> Iterator[tuple[LoopbackHttpServer, Any]]:
    valid_days = getattr(request, "param", 90)
    files = tls_cert_factory(valid_days=valid_days, started_days_ago=200)
    with LoopbackHttpServer(files.server_context()) as server:
        yield server, files


def test_https_verified_ok(tls_web: tuple[LoopbackHttpServer, Any], run_sync: RunSync) -> None:
    server, files = tls_web
    result = run_sync(http(url=server.url(), ca_file=str(files.ca)), 2.0)
    assert result.status is Status.OK, result.detail
    assert any(p.startswith("cert_days=89.") or p.startswith("cert_days=90.")
               for p in result.perfdata), result.perfdata
    assert any(line.startswith("  certificate valid until") for line in result.transcript)


def test_https_unknown_ca_is_critical(tls_web: tuple[LoopbackHttpServer, Any],
                                      run_sync: RunSync) -> None:
    server, _ = tls_web
    result = run_sync(http(url=server.url()), 2.0)
    assert result.status is Status.CRITICAL
    assert "TLS certificate verify failed" in result.detail


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_https_without_verification(tls_web: tuple[LoopbackHttpServer, Any],
                                    run_sync: RunSync) -> None:
    server, _ = tls_web
    assert run_sync(http(url=server.url(), verify_tls=False), 2.0).status is Status.OK


@pytest.mark.parametrize("tls_web", [5], indirect=True)
def test_https_cert_expiring_soon_warns(tls_web: tuple[LoopbackHttpServer, Any],
                                        run_sync: RunSync) -> None:
    server, files = tls_web
    result = run_sync(http(url=server.url(), ca_file=str(files.ca)), 2.0)
    assert result.status is Status.WARNING
    assert "certificate expires in 4.9 days" in result.detail or \
        "certificate expires in 5.0 days" in result.detail
    off = run_sync(http(url=server.url(), ca_file=str(files.ca), cert_expiry_warning_days=0), 2.0)
    assert off.status is Status.OK
    assert not any(p.startswith("cert_days=") for p in off.perfdata)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize("tls_web", [-2], indirect=True)
def test_https_expired_cert_is_critical(tls_web: tuple[LoopbackHttpServer, Any],
                                        run_sync: RunSync) -> None:
    server, files = tls_web
    unverified = run_sync(http(url=server.url(), verify_tls=False), 2.0)
    assert unverified.status is Status.CRITICAL
    assert "certificate expired on" in unverified.detail
    verified = run_sync(http(url=server.url(), ca_file=str(files.ca)), 2.0)
    assert verified.status is Status.CRITICAL
    assert "certificate has expired" in verified.detail
