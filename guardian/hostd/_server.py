"""The HTTP/1.1 front: asyncio streams, one request per connection, bounded.

``POST /v1/escalations`` and ``GET /v1/escalations/<request id>``, signed (see
``_auth``).  A request line or header over 8 KiB, more than 64 headers, a body over
64 KiB, or a client slower than ``read_timeout`` gets an error status (or is
dropped) and is counted; nothing a client sends stops the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from ._auth import AuthError, NonceCacheFull, Verifier
from ._engine import Engine, Reply

log = logging.getLogger("guardian.hostd")

MAX_BODY = 64 * 1024
MAX_LINE = 8 * 1024
MAX_HEADERS = 64
POST_PATH = "/v1/escalations"
GET_PREFIX = "/v1/escalations/"
_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            411: "Length Required", 413: "Payload Too Large", 429: "Too Many Requests",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}


class _Bad(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HostdServer:
    def __init__(self, engine: Engine, verifier: Verifier, *,
                 read_timeout: float = 10.0) -> None:
        self.engine = engine
        self.verifier = verifier
        self.read_timeout = read_timeout
        self.counters = engine.counters
        self._server: asyncio.Server | None = None
        self._jobs: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, host, port,
                                                  limit=MAX_LINE + 2)
        sock = self._server.sockets[0].getsockname()
        return str(sock[0]), int(sock[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    def _count(self, name: str) -> None:
        self.engine.count(name)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                method, path, headers, body = await asyncio.wait_for(
                    self._read(reader), self.read_timeout)
                reply = self._dispatch(method, path, headers, body)
            except _Bad as exc:
                self._count("bad_requests")
                reply = Reply(exc.status, {"error": str(exc)})
            except TimeoutError:
                self._count("timeouts")
                reply = Reply(400, {"error": "request not complete in time"})
            except (asyncio.IncompleteReadError, ConnectionError):
                self._count("dropped")
                return
            await self._write(writer, reply)
        except Exception:  # noqa: BLE001 - one broken connection must not stop the server
            self._count("internal_errors")
            log.exception("hostd: error while serving a request")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _read(self, reader: asyncio.StreamReader
                    ) -> tuple[str, str, dict[str, str], bytes]:
        line = await self._line(reader)
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _Bad(400, "bad request line")
        method, path = parts[0], parts[1]
        headers: dict[str, str] = {}
        count = 0
        while True:
            h = await self._line(reader)
            if not h:
                break
            count += 1
            if count > MAX_HEADERS:
                raise _Bad(431, "too many headers")
            name, sep, value = h.partition(":")
            if not sep or not name or name != name.strip():
                raise _Bad(400, "bad header line")
            headers[name.lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise _Bad(411, "chunked bodies are not accepted; send Content-Length")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise _Bad(400, "bad Content-Length")
        length = int(length_text)
        if length > MAX_BODY:
            raise _Bad(413, f"body over {MAX_BODY} bytes")
        body = await reader.readexactly(length) if length else b""
        return method, path, headers, body

    @staticmethod
    async def _line(reader: asyncio.StreamReader) -> str:
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise _Bad(431, "line too long") from None
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise
            raise _Bad(400, "incomplete request") from None
        try:
            return raw.decode("ascii").rstrip("\r\n")
        except UnicodeDecodeError:
            raise _Bad(400, "non-ASCII in request head") from None

    def _dispatch(self, method: str, path: str, headers: Mapping[str, str],
                  body: bytes) -> Reply:
        if path == POST_PATH:
            if method != "POST":
                raise _Bad(405, "use POST")
        elif path.startswith(GET_PREFIX):
            if method != "GET":
                raise _Bad(405, "use GET")
        else:
            return Reply(404, {"error": "no such resource"})
        try:
            who = self.verifier.verify(method, path, headers, body)
        except AuthError as exc:
            self._count("auth_failures")
            log.warning("hostd: refused %s %s: %s", method, path, exc)
            return Reply(401, {"error": "not authenticated"})
        except NonceCacheFull:
            self._count("nonce_cache_full")
            return Reply(429, {"error": "too many requests", "retry_after": 1})
        if method == "GET":
            return self.engine.status(who.sender, path[len(GET_PREFIX):])
        reply, job = self.engine.submit(who.sender, body)
        if job is not None:
            task = asyncio.get_running_loop().create_task(self._run(job))
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)
        return reply

    async def _run(self, rid: str) -> None:
        await asyncio.to_thread(self.engine.execute, rid)

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, reply: Reply) -> None:
        payload: dict[str, Any] = reply.body
        data = json.dumps(payload).encode() + b"\n"
        head = (f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n")
        if reply.status == 429 and "retry_after" in payload:
            head += f"Retry-After: {payload['retry_after']}\r\n"
        head += "Connection: close\r\n\r\n"
        writer.write(head.encode() + data)
        await writer.drain()
