"""The control socket: root-only unix stream socket, one JSON request per line.

Requests: ``{"cmd": "status"}``, ``{"cmd": "reload"}``, ``{"cmd": "ping"}``,
``{"cmd": "switchover", "group": "web"}`` (group optional with one group; the reply's
``outcome`` is ``{"ok": bool, "detail": str}`` once the switchover ended).
Responses: one JSON object per line, ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._supervisor import Supervisor

log = logging.getLogger("guardian")

MAX_REQUEST = 64 * 1024


class ControlServer:
    def __init__(self, sup: Supervisor, path: Path) -> None:
        self.sup = sup
        self.path = Path(path)
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if self.path.exists() or self.path.is_symlink():
            if _socket_alive(self.path):
                raise RuntimeError(f"{self.path}: another guardiand is already listening")
            self.path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path),
                                                           limit=MAX_REQUEST)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), 30.0)
                except (TimeoutError, ValueError, ConnectionError):
                    break
                if not line:
                    break
                reply = await self.handle(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def handle(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise ValueError("expected an object with a string 'cmd'")
        except ValueError as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        cmd = req["cmd"]
        if cmd == "ping":
            return {"ok": True, "pong": True}
        if cmd == "status":
            return {"ok": True, "status": self.sup.status()}
        if cmd == "reload":
            from .daemon import reload_from_disk

            err = reload_from_disk(self.sup)
            return {"ok": err is None, "error": err} if err else {"ok": True}
        if cmd == "switchover":
            group = req.get("group")
            if group is not None and not isinstance(group, str):
                return {"ok": False, "error": "bad request: 'group' must be a string"}
            return await self.sup.switchover(group)
        return {"ok": False, "error": f"unknown command {cmd!r}"}


def _socket_alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


class ControlError(Exception):
    pass


def request(path: Path | str, cmd: str, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
    """Send one request to a running guardiand and return its reply."""
    payload = dict(args, cmd=cmd)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except FileNotFoundError:
            raise ControlError(f"{path}: no such socket (is guardiand running?)") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (the control socket is "
                               "root-only)") from None
        except OSError as exc:
            raise ControlError(f"{path}: cannot connect: {exc}") from None
        s.sendall(json.dumps(payload).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                raise ControlError(f"{path}: no answer within {timeout:g} s") from None
            if not chunk:
                break
            buf += chunk
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ControlError(f"{path}: garbled answer") from None
    if not isinstance(reply, dict):
        raise ControlError(f"{path}: garbled answer")
    return reply
