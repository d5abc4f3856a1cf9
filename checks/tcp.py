"""TCP probe in plain asyncio: connect, optionally send, optionally expect a reply."""

from __future__ import annotations

import asyncio
import re

from ._base import Check, remaining
from ._net import describe_oserror, oserror_status
from ._options import Options
from ._result import CheckResult, Status

_ESCAPE_RE = re.compile(r"\\(x[0-9a-fA-F]{2}|[\\rnt0])")
_SIMPLE = {"\\": "\\", "r": "\r", "n": "\n", "t": "\t", "0": "\0"}


def unescape(text: str) -> bytes:
    r"""``"QUIT\r\n"`` as written in TOML with single quotes -> bytes.

    Understands ``\r``, ``\n``, ``\t``, ``\0``, ``\\`` and ``\xHH`` (one raw
    byte); other text is UTF-8 and unknown escapes are kept as written.
    """
    out = bytearray()
    pos = 0
    for match in _ESCAPE_RE.finditer(text):
        out += text[pos:match.start()].encode("utf-8")
        code = match.group(1)
        out += bytes([int(code[1:], 16)]) if code[0] == "x" else _SIMPLE[code].encode()
        pos = match.end()
    out += text[pos:].encode("utf-8")
    return bytes(out)


def _shorten(data: bytes, limit: int = 120) -> str:
    text = repr(data[:limit])[2:-1]
    return text + ("..." if len(data) > limit else "")


class TcpCheck(Check):
    """Connect to host:port; if ``send`` is set send it; if ``expect`` is set wait for it."""

    kind = "tcp"

    def __init__(self, host: str, port: int, *, send: bytes | None = None,
                 expect: re.Pattern[str] | None = None, read_bytes: int = 4096) -> None:
        self.host = host
        self.port = port
        self.send = send
        self.expect = expect
        self.read_bytes = read_bytes

    @classmethod
    def from_options(cls, opts: Options) -> TcpCheck:
        send: str | None = opts.str("send", None)
        return cls(
            opts.str("host"),
            opts.int("port", minimum=1, maximum=65535),
            send=unescape(send) if send is not None else None,
            expect=opts.regex("expect", None),
            read_bytes=opts.int("read_bytes", 4096, minimum=1),
        )

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp {host}:{self.port}"

    async def probe(self, deadline: float) -> CheckResult:
        transcript: list[str] = []
        try:
            async with asyncio.timeout(remaining(deadline)):
                return await self._talk(transcript)
        except TimeoutError:
            what = "timed out" if not transcript else "timed out waiting for data"
            return self._result(Status.CRITICAL, what, transcript)
        except OSError as exc:
            return self._result(oserror_status(exc), describe_oserror(exc), transcript)

    async def _talk(self, transcript: list[str]) -> CheckResult:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            transcript.append(f"  connected to {self.describe()[4:]}")
            if self.send:
                writer.write(self.send)
                await writer.drain()
                transcript.append(f"> {_shorten(self.send)}")
            if self.expect is None:
                return self._result(Status.OK, "connected", transcript)
            data = b""
            while len(data) < self.read_bytes:
                chunk = await reader.read(self.read_bytes - len(data))
                if not chunk:
                    break
                data += chunk
                if self.expect.search(data.decode("utf-8", "replace")):
                    transcript.append(f"< {_shorten(data)}")
                    return self._result(Status.OK, f"got {_shorten(data, 60)!s}", transcript,
                                        (f"size={len(data)}B;;;0",))
            transcript.append(f"< {_shorten(data)}" if data else "< (nothing)")
            why = "connection closed" if len(data) < self.read_bytes else \
                f"read {self.read_bytes} bytes"
            return self._result(Status.CRITICAL,
                                f"{why} without {self.expect.pattern!r} (got {len(data)} bytes)",
                                transcript, (f"size={len(data)}B;;;0",))
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    def _result(self, status: Status, what: str, transcript: list[str],
                perfdata: tuple[str, ...] = ()) -> CheckResult:
        return CheckResult(status, f"{self.describe()}: {what}", perfdata=perfdata,
                           transcript=tuple(transcript))
