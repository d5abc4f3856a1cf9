"""The HTTP/1.1 front: asyncio streams, one request per connection, bounded.

``POST /v1/escalations`` and ``GET /v1/escalations/<request id>``, signed (see
``_auth``).  A request line or header over 8 KiB, more than 64 headers, a body over
64 KiB, or a client slower than ``read_timeout`` gets an error status (or is
dropped) and is counted; nothing a client sends stops the server.

Fairness, so that a flood from one guest does not delay another guest's request:

- at most ``max_connections`` connections at once, and at most ``max_per_ip`` from
  one source address (before authentication); an excess connection is answered
  ``429`` at once, without reading it, and closed (counted as
  ``connections_over_limit`` / ``connections_per_ip_limited``);
- at most ``max_per_sender`` authenticated requests of one VM in the engine at once
  (counted as ``sender_limited``, answered 429);
- the engine (which fsyncs) runs in a small thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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
MAX_CONNECTIONS = 128
MAX_PER_IP = 8
MAX_PER_SENDER = 2
ENGINE_THREADS = 4
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
                 read_timeout: float = 10.0, max_connections: int = MAX_CONNECTIONS,
                 max_per_ip: int = MAX_PER_IP, max_per_sender: int = MAX_PER_SENDER) -> None:
        self.engine = engine
        self.verifier = verifier
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.max_per_sender = max_per_sender
        self.counters = engine.counters
        self._server: asyncio.Server | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._connections = 0
        self._per_ip: dict[str, int] = {}
        self._per_sender: dict[str, int] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(
            ENGINE_THREADS, thread_name_prefix="hostd-engine")

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, host, port,
                                                  limit=MAX_LINE + 2)
        sock = self._server.sockets[0].getsockname()
        # actions a stopped hostd left running carry on from their persisted phase
        for rid in self.engine.resumable():
            log.warning("hostd: resuming request %s after a restart", rid)
            self.start_job(rid)
        return str(sock[0]), int(sock[1])

    def start_job(self, rid: str) -> None:
        """Run ``engine.execute(rid)`` on a worker thread, tracked until close()."""
        task = asyncio.get_running_loop().create_task(self._run(rid))
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    def _count(self, name: str) -> None:
        self.engine.count(name)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if self._connections >= self.max_connections:
            self._count("connections_over_limit")
            await self._refuse(writer)
            return
        if self._per_ip.get(ip, 0) >= self.max_per_ip:
            self._count("connections_per_ip_limited")
            await self._refuse(writer)
            return
        self._connections += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        try:
            await self._serve(reader, writer)
        finally:
            self._connections -= 1
            left = self._per_ip[ip] - 1
            if left:
                self._per_ip[ip] = left
            else:
                del self._per_ip[ip]

    async def _refuse(self, writer: asyncio.StreamWriter) -> None:
        """Answer 429 without reading anything, and close."""
        try:
            await asyncio.wait_for(self._write(writer, Reply(
                429, {"error": "too many connections", "retry_after": 1})), 1.0)
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                method, path, headers, body = await asyncio.wait_for(
                    self._read(reader), self.read_timeout)
                reply = await self._dispatch(method, path, headers, body)
            except _Bad as exc:
                self._count("bad_requests")
                reply = Reply(exc.status, {"error": str(exc)})
            except TimeoutError:
                self._count("timeouts")
                reply = Reply(400, {"error": "request not complete in time"})
            except (asyncio.IncompleteReadError, ConnectionError):
                self._count("dropped")
                return
            await asyncio.wait_for(self._write(writer, reply), self.read_timeout)
        except (TimeoutError, ConnectionError):
            self._count("dropped")
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

    async def _dispatch(self, method: str, path: str, headers: Mapping[str, str],
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
        sender = who.sender
        if self._per_sender.get(sender, 0) >= self.max_per_sender:
            self._count("sender_limited")
            return Reply(429, {"error": "too many requests in flight", "retry_after": 1})
        self._per_sender[sender] = self._per_sender.get(sender, 0) + 1
        loop = asyncio.get_running_loop()
        try:
            if method == "GET":
                return await loop.run_in_executor(self._executor, self.engine.status, sender,
                                                  path[len(GET_PREFIX):])
            reply, job = await loop.run_in_executor(self._executor, self.engine.submit,
                                                    sender, body)
        finally:
            left = self._per_sender[sender] - 1
            if left:
                self._per_sender[sender] = left
            else:
                del self._per_sender[sender]
        if job is not None:
            self.start_job(job)
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
