"""``http``: POST to guardian-hostd, signed with HMAC-SHA256 under this VM's key.

Every attempt has a new timestamp and nonce; the request id never changes (hostd
is idempotent by request id).  The MAC covers::

    METHOD "\\n" PATH "\\n" TIMESTAMP "\\n" NONCE "\\n" BODY

(``POST /v1/escalations`` with the JSON body; ``GET /v1/escalations/<id>`` with an
empty body).  http.client runs in a worker thread under a hard deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import secrets
import time
import urllib.parse
from typing import Any

from checks._base import run_in_thread

from .._model import EscalationSpec
from ._channel import Channel, ChannelConfigError
from ._request import Answer, AnswerState, EscalationError, Request

PATH = "/v1/escalations"


def signature(key: bytes, method: str, path: str, timestamp: str, nonce: str,
              body: bytes) -> str:
    msg = f"{method}\n{path}\n{timestamp}\n{nonce}\n".encode() + body
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


class HttpChannel(Channel):
    name = "http"

    def __init__(self, spec: EscalationSpec) -> None:
        super().__init__(spec)
        u = urllib.parse.urlsplit(spec.url)
        self.https = u.scheme == "https"
        self.host = u.hostname or ""
        self.port = u.port or (443 if self.https else 80)

    @classmethod
    def from_spec(cls, spec: EscalationSpec) -> HttpChannel:
        if not spec.url:
            raise ChannelConfigError("url", "is required for channel \"http\"")
        u = urllib.parse.urlsplit(spec.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ChannelConfigError("url", f"{spec.url!r} is not an http:// or https:// URL")
        if u.path not in ("", "/") or u.query:
            raise ChannelConfigError("url", f"{spec.url!r}: give scheme, host and port only")
        if not spec.key_file:
            raise ChannelConfigError("key_file", "is required for channel \"http\"")
        return cls(spec)

    def describe(self) -> str:
        return f"http {self.spec.url}"

    async def send(self, request: Request, deadline: float) -> Answer:
        body = json.dumps(request.body(time.time()), separators=(",", ":")).encode()
        return await self._call("POST", PATH, body, deadline, polling=False)

    async def poll(self, request_id: str, deadline: float) -> Answer:
        return await self._call("GET", f"{PATH}/{request_id}", b"", deadline, polling=True)

    async def _call(self, method: str, path: str, body: bytes, deadline: float,
                    polling: bool) -> Answer:
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise EscalationError("no time left")
        try:
            async with asyncio.timeout(timeout):
                status, data = await run_in_thread(self._exchange, method, path, body, timeout)
        except TimeoutError:
            raise EscalationError(f"{method} {path}: timed out after {timeout:.3g} s") from None
        return self._answer(status, data, polling)

    def _exchange(self, method: str, path: str, body: bytes,
                  timeout: float) -> tuple[int, bytes]:
        from ipfailover._wire import KeyFileError, KeyRing

        try:
            ring = KeyRing.load(self.spec.key_file)
        except KeyFileError as exc:
            raise EscalationError(str(exc)) from None
        ts = f"{time.time():.6f}"
        nonce = secrets.token_hex(16)
        headers = {
            "Content-Type": "application/json",
            "X-Guardian-Key-Id": str(ring.send_id),
            "X-Guardian-Timestamp": ts,
            "X-Guardian-Nonce": nonce,
            "X-Guardian-Signature": signature(ring.send_key, method, path, ts, nonce, body),
        }
        conn: http.client.HTTPConnection
        if self.https:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body if method == "POST" else None,
                         headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read(1 << 20)
        except (OSError, http.client.HTTPException) as exc:
            raise EscalationError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()

    @staticmethod
    def _answer(status: int, raw: bytes, polling: bool) -> Answer:
        data: dict[str, Any] = {}
        try:
            parsed = json.loads(raw) if raw else {}
            if isinstance(parsed, dict):
                data = parsed
        except ValueError:
            pass
        detail = str(data.get("detail") or raw[:200].decode(errors="replace"))
        if status in (200, 202):
            return Answer.from_json(data, AnswerState.ACCEPTED)
        if status == 409:
            return Answer(AnswerState.STALE, detail or "stale incarnation")
        if status == 429:
            ra = data.get("retry_after")
            return Answer(AnswerState.RETRY, detail or "rate-limited",
                          retry_after=float(ra) if isinstance(ra, int | float) else None)
        if status == 400:
            return Answer(AnswerState.REJECTED, detail or "malformed request")
        if status == 404 and polling:
            return Answer(AnswerState.UNKNOWN, detail or "unknown request id")
        raise EscalationError(f"HTTP {status}: {detail}")
