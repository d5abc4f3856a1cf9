"""The ``http`` escalation channel against a tiny real HTTP server on 127.0.0.1
that verifies every request with the documented MAC (written here, independently
of the code under test), rejects replayed nonces, and answers from a script."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guardian._model import EscalationSpec
from guardian.escalation import (
    AnswerState,
    EscalationError,
    HttpChannel,
    Reason,
    Request,
    build_channel,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))


class Hostd(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.keys = {1: OTHER_KEY, 2: KEY}
        self.script: list[tuple[int, dict[str, Any]]] = []
        self.seen_nonces: set[str] = set()
        self.requests: list[dict[str, Any]] = []
        self.verified = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Hostd

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _verify(self, body: bytes) -> str | None:
        h = self.headers
        kid, ts = h.get("X-Guardian-Key-Id", ""), h.get("X-Guardian-Timestamp", "")
        nonce, sig = h.get("X-Guardian-Nonce", ""), h.get("X-Guardian-Signature", "")
        key = self.server.keys.get(int(kid)) if kid.isdigit() else None
        if key is None:
            return "unknown key"
        if len(nonce) != 32 or any(c not in "0123456789abcdef" for c in nonce):
            return "bad nonce"
        if abs(time.time() - float(ts)) > 30:
            return "stale timestamp"
        msg = (self.command + "\n" + self.path + "\n" + ts + "\n" + nonce + "\n").encode()
        want = hmac.new(key, msg + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, sig):
            return "bad signature"
        if nonce in self.server.seen_nonces:
            return "replayed nonce"
        self.server.seen_nonces.add(nonce)
        return None

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        problem = self._verify(body)
        record: dict[str, Any] = {"method": self.command, "path": self.path,
                                  "problem": problem}
        if body:
            record["body"] = json.loads(body)
        self.server.requests.append(record)
        if problem is not None:
            status, answer = 401, {"detail": problem}
        else:
            self.server.verified += 1
            status, answer = (self.server.script.pop(0) if self.server.script
                              else (202, {"state": "accepted"}))
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = _handle
    do_GET = _handle


@pytest.fixture
def hostd() -> Iterator[Hostd]:
    server = Hostd()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def key_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "escalation.key"
    path.write_text(f"1 {OTHER_KEY.hex()}\n2 {KEY.hex()} send\n")
    path.chmod(mode)
    return path


def channel(url: str, key: Path, timeout: float = 5.0) -> HttpChannel:
    ch = build_channel(EscalationSpec(channel="http", vm="vm01", url=url, key_file=str(key),
                                      timeout=timeout))
    assert isinstance(ch, HttpChannel)
    return ch


def request() -> Request:
    return Request(vm="vm01", vm_uuid="6c1b3f0e-0000-4000-8000-000000000001", incarnation=4,
                   action="recreate", reason=Reason("web", "http=CRITICAL: refused", 3, "x"))


def test_signed_post_then_polls_each_with_a_fresh_nonce(hostd: Hostd, tmp_path: Path) -> None:
    ch = channel(hostd.url, key_file(tmp_path))
    req = request()
    hostd.script = [(202, {"request_id": req.request_id, "state": "accepted",
                           "detail": "queued", "decision": ""}),
                    (200, {"request_id": req.request_id, "state": "in-progress"}),
                    (200, {"request_id": req.request_id, "state": "done",
                           "detail": "recreated", "decision": "recreate"})]

    async def scenario() -> list[Any]:
        dl = time.monotonic() + 5
        return [await ch.send(req, dl), await ch.poll(req.request_id, dl),
                await ch.poll(req.request_id, dl)]

    sent, progress, done = asyncio.run(scenario())
    assert [r["problem"] for r in hostd.requests] == [None, None, None]
    assert hostd.verified == 3 and len(hostd.seen_nonces) == 3
    assert sent.state is AnswerState.ACCEPTED and sent.detail == "queued"
    assert progress.state is AnswerState.IN_PROGRESS
    assert done.state is AnswerState.DONE and done.decision == "recreate"
    post, get, _ = hostd.requests
    assert post["method"] == "POST" and post["path"] == "/v1/escalations"
    assert get["method"] == "GET" and get["path"] == f"/v1/escalations/{req.request_id}"
    body = post["body"]
    assert set(body) == {"request_id", "vm", "vm_uuid", "incarnation", "action", "peer",
                         "reason", "sent_at"}
    assert body["request_id"] == req.request_id and body["incarnation"] == 4
    assert body["action"] == "recreate" and body["peer"] is None
    assert body["reason"]["restarts"] == 3 and abs(body["sent_at"] - time.time()) < 10


def test_retries_keep_the_request_id_and_change_the_nonce(hostd: Hostd, tmp_path: Path) -> None:
    ch = channel(hostd.url, key_file(tmp_path))
    req = request()
    hostd.script = [(500, {"detail": "oops"}), (202, {"state": "accepted"})]

    async def scenario() -> Any:
        dl = time.monotonic() + 5
        with pytest.raises(EscalationError, match="HTTP 500"):
            await ch.send(req, dl)
        return await ch.send(req, dl)

    assert asyncio.run(scenario()).state is AnswerState.ACCEPTED
    ids = [r["body"]["request_id"] for r in hostd.requests]
    assert ids == [req.request_id] * 2 and len(hostd.seen_nonces) == 2


@pytest.mark.parametrize(("status", "answer", "state"), [
    (409, {"detail": "incarnation 4 is not current (5)"}, AnswerState.STALE),
    (429, {"retry_after": 12.5}, AnswerState.RETRY),
    (400, {"detail": "malformed"}, AnswerState.REJECTED),
    (202, {"state": "refused", "detail": "rate limit"}, AnswerState.REFUSED),
])
def test_answers(hostd: Hostd, tmp_path: Path, status: int, answer: dict[str, Any],
                 state: AnswerState) -> None:
    hostd.script = [(status, answer)]
    got = asyncio.run(channel(hostd.url, key_file(tmp_path)).send(
        request(), time.monotonic() + 5))
    assert got.state is state
    if status == 429:
        assert got.retry_after == 12.5


def test_404_on_poll_means_unknown(hostd: Hostd, tmp_path: Path) -> None:
    hostd.script = [(404, {"detail": "no such request"})]
    got = asyncio.run(channel(hostd.url, key_file(tmp_path)).poll("abc",
                                                                  time.monotonic() + 5))
    assert got.state is AnswerState.UNKNOWN


def test_a_wrong_key_is_rejected_by_the_server(hostd: Hostd, tmp_path: Path) -> None:
    hostd.keys = {2: OTHER_KEY}
    with pytest.raises(EscalationError, match="HTTP 401: bad signature"):
        asyncio.run(channel(hostd.url, key_file(tmp_path)).send(request(),
                                                                time.monotonic() + 5))


def test_key_file_readable_by_others_is_refused(hostd: Hostd, tmp_path: Path) -> None:
    with pytest.raises(EscalationError, match="chmod 600"):
        asyncio.run(channel(hostd.url, key_file(tmp_path, 0o644)).send(
            request(), time.monotonic() + 5))
    assert hostd.requests == []


def test_connection_refused_and_hard_deadline(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(EscalationError, match="ConnectionRefused"):
            asyncio.run(channel(f"http://127.0.0.1:{port}", key_file(tmp_path)).send(
                request(), time.monotonic() + 5))
        s.listen(1)      # accepts the connection, never answers
        started = time.monotonic()
        with pytest.raises(EscalationError, match="timed out"):
            asyncio.run(channel(f"http://127.0.0.1:{port}", key_file(tmp_path)).send(
                request(), time.monotonic() + 0.3))
        assert time.monotonic() - started < 2.0


def test_signature_matches_guardian_hostd() -> None:
    """The client's MAC is the one guardian-hostd verifies (when hostd is present)."""
    auth = pytest.importorskip("guardian.hostd._auth")
    from guardian.escalation import signature

    args = ("POST", "/v1/escalations", "1714550400.123456", "ab" * 16, b'{"x":1}')
    assert signature(KEY, *args) == auth.mac(KEY, *args)
