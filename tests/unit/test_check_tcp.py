"""The tcp check against a tiny line server on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from unit_helpers import LoopbackTcpServer, build

from checks import CheckResult, ConfigError, Status
from checks.tcp import TcpCheck, unescape

RunSync = Callable[[Any, float], CheckResult]


class LoopbackLineServer(LoopbackTcpServer):
    """Sends ``greeting`` on connect, then answers each received chunk from ``replies``.

    ``close_after_greeting`` hangs up right after the greeting; ``received``
    holds every byte the client sent.
    """

    def __init__(self) -> None:
        self.greeting = b""
        self.replies: dict[bytes, bytes] = {b"PING\r\n": b"+PONG\r\n"}
        self.close_after_greeting = False
        self.received = bytearray()
        super().__init__()

    def session(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        if self.greeting:
            conn.sendall(self.greeting)
        if self.close_after_greeting:
            return
        while not self.release.is_set():
            data = conn.recv(4096)
            if not data:
                return
            self.received += data
            conn.sendall(self.replies.get(data, b""))


@pytest.fixture
def line_server() -> Iterator[LoopbackLineServer]:
    with LoopbackLineServer() as server:
        yield server


def tcp(server: LoopbackLineServer | None, **options: Any) -> TcpCheck:
    return build("tcp", TcpCheck, options, "services.x.checks[0]", server)


def test_connect_only(line_server: LoopbackLineServer, run_sync: RunSync) -> None:
    result = run_sync(tcp(line_server), 1.0)
    assert result.status is Status.OK
    assert result.detail == f"tcp 127.0.0.1:{line_server.port}: connected"


def test_banner_expected(line_server: LoopbackLineServer, run_sync: RunSync) -> None:
    line_server.greeting = b"SSH-2.0-guardian_test\r\n"
    result = run_sync(tcp(line_server, expect=r"^SSH-2\.0-"), 1.0)
    assert result.status is Status.OK, result.detail
    assert result.perfdata == ("size=23B;;;0",)
    assert "< SSH-2.0-guardian_test\\r\\n" in result.transcript


def test_send_with_escapes_and_expect(line_server: LoopbackLineServer,
                                      run_sync: RunSync) -> None:
    result = run_sync(tcp(line_server, send=r"PING\r\n", expect=r"^\+PONG"), 1.0)
    assert result.status is Status.OK, result.detail
    assert bytes(line_server.received) == b"PING\r\n"
    assert "> PING\\r\\n" in result.transcript


def test_wrong_reply_then_close(line_server: LoopbackLineServer, run_sync: RunSync) -> None:
    line_server.greeting = b"-ERR go away\r\n"
    line_server.close_after_greeting = True
    result = run_sync(tcp(line_server, expect="^\\+OK"), 1.0)
    assert result.status is Status.CRITICAL
    assert result.detail.endswith("connection closed without '^\\\\+OK' (got 14 bytes)")


def test_read_bytes_limit(line_server: LoopbackLineServer, run_sync: RunSync) -> None:
    line_server.greeting = b"x" * 100 + b"READY"
    result = run_sync(tcp(line_server, expect="READY", read_bytes=50), 1.0)
    assert result.status is Status.CRITICAL
    assert "read 50 bytes without 'READY'" in result.detail
    assert run_sync(tcp(line_server, expect="READY"), 1.0).status is Status.OK


def test_silent_server_critical_by_deadline(line_server: LoopbackLineServer,
                                            run_sync: RunSync) -> None:
    started = time.monotonic()
    result = run_sync(tcp(line_server, expect="hello"), 0.3)
    assert time.monotonic() - started < 0.3 + 0.5
    assert result.status is Status.CRITICAL
    assert "timed out" in result.detail


def test_connection_refused(run_sync: RunSync) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_sync(tcp(None, host="127.0.0.1", port=port), 1.0)
    assert result.status is Status.CRITICAL
    assert result.detail == f"tcp 127.0.0.1:{port}: connection refused"


def test_unescape() -> None:
    assert unescape(r"QUIT\r\n") == b"QUIT\r\n"
    assert unescape(r"a\tb\\n\0\x41\xff") == b"a\tb\\n\x00A\xff"
    assert unescape("grüß") == "grüß".encode()
    assert unescape(r"\q") == b"\\q"


@pytest.mark.parametrize(("options", "message"), [
    ({"host": "h"}, "checks[0].port: is required"),
    ({"host": "h", "port": 70000}, "checks[0].port: 70000 is above the maximum 65535"),
    ({"host": "h", "port": 1, "expect": "("}, "checks[0].expect: '(' is not a regular"),
    ({"host": "h", "port": 1, "read_bytes": 0}, "checks[0].read_bytes: 0 is below"),
    ({"host": "h", "port": 1, "sned": "x"}, "checks[0].sned: unknown key"),
])
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        tcp(None, **options)
    assert str(info.value).startswith("guardian.toml: services.x.")
    assert message in str(info.value)


def test_defaults() -> None:
    check = tcp(None, host="::1", port=22)
    assert (check.send, check.expect, check.read_bytes) == (None, None, 4096)
    assert check.describe() == "tcp [::1]:22"
