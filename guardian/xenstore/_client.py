"""A small synchronous XenStore client speaking the wire protocol.

It connects to a unix socket (xenstored's, or the stand-in's) or opens the xenbus
device of a guest (``/dev/xen/xenbus``: the same messages through read/write).
Where it connects, as in libxenstore: the ``path`` given, else ``$XENSTORED_PATH``,
else ``/run/xenstored/socket`` if it exists, else ``/dev/xen/xenbus``.  Relative
paths are resolved by xenstored against the connection's domain path.

Not thread-safe: one client per thread.  Every call has a timeout (``timeout``
seconds per call, or until ``deadline`` on ``time.monotonic()`` if that is set);
watch events that arrive while waiting for a reply are kept for ``read_event``.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import select
import socket
import stat
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from ._wire import (
    HEADER_SIZE,
    Message,
    Op,
    ProtocolError,
    XenstoreError,
    decode_header,
    split_strings,
    strings,
)

T = TypeVar("T")

DEFAULT_SOCKET = "/run/xenstored/socket"
XENBUS_DEVICE = "/dev/xen/xenbus"
#: watch events kept while nobody reads them; older ones are dropped
MAX_EVENTS = 1024


def default_path() -> str:
    env = os.environ.get("XENSTORED_PATH")
    if env:
        return env
    if os.path.exists(DEFAULT_SOCKET):
        return DEFAULT_SOCKET
    return XENBUS_DEVICE


class Client:
    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 timeout: float = 10.0, deadline: float | None = None) -> None:
        self.path = os.fspath(path) if path is not None else default_path()
        self.timeout = timeout
        self.deadline = deadline
        self.events: collections.deque[tuple[str, str]] = collections.deque(
            maxlen=MAX_EVENTS)
        self._ids = itertools.count(1)
        self._buf = b""
        self._sock: socket.socket | None = None
        self._fd: int | None = None
        try:
            mode = os.stat(self.path).st_mode
            if stat.S_ISSOCK(mode):
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(self._left())
                self._sock.connect(self.path)
            else:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            self.close()
            if isinstance(exc, XenstoreError):
                raise
            raise XenstoreError("EIO", f"{self.path}: {exc.strerror or exc}") from None

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _left(self, limit: float | None = None) -> float:
        ends = [time.monotonic() + (self.timeout if limit is None else limit)]
        if self.deadline is not None:
            ends.append(self.deadline)
        left = min(ends) - time.monotonic()
        if left <= 0:
            raise XenstoreError("EIO", "timed out")
        return left

    def _send(self, data: bytes) -> None:
        try:
            if self._sock is not None:
                self._sock.settimeout(self._left())
                self._sock.sendall(data)
            elif self._fd is not None:
                os.write(self._fd, data)
            else:
                raise XenstoreError("EIO", "connection closed")
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, XenstoreError):
                raise
            raise XenstoreError("EIO", f"send: {exc}") from None

    def _fill(self, end: float) -> bool:
        """Read more bytes into the buffer before ``end``; False on timeout."""
        left = end - time.monotonic()
        if left <= 0:
            return False
        try:
            if self._sock is not None:
                self._sock.settimeout(left)
                data = self._sock.recv(65536)
            elif self._fd is not None:
                ready, _, _ = select.select([self._fd], [], [], left)
                if not ready:
                    return False
                data = os.read(self._fd, 65536)
            else:
                raise XenstoreError("EIO", "connection closed")
        except TimeoutError:
            return False
        except OSError as exc:
            if isinstance(exc, XenstoreError):
                raise
            raise XenstoreError("EIO", f"receive: {exc}") from None
        if not data:
            self.close()
            raise XenstoreError("EIO", "connection closed by xenstored")
        self._buf += data
        return True

    def _next_message(self, end: float) -> Message | None:
        while True:
            if len(self._buf) >= HEADER_SIZE:
                op, rid, tx, length = decode_header(self._buf[:HEADER_SIZE])
                if len(self._buf) >= HEADER_SIZE + length:
                    payload = self._buf[HEADER_SIZE:HEADER_SIZE + length]
                    self._buf = self._buf[HEADER_SIZE + length:]
                    return Message(op, rid, tx, payload)
            if not self._fill(end):
                return None

    def call(self, op: Op, payload: bytes, tx: int = 0) -> bytes:
        """Send one request and return its reply's payload (XenstoreError for an
        error reply)."""
        rid = next(self._ids) & 0xFFFFFFFF
        self._send(Message(op, rid, tx, payload).encode())
        end = time.monotonic() + self._left()
        while True:
            msg = self._next_message(end)
            if msg is None:
                raise XenstoreError("EIO", f"no reply to {op.name} in time")
            if msg.op == Op.WATCH_EVENT:
                self._event(msg)
                continue
            if msg.req_id != rid:
                raise ProtocolError(f"reply for request {msg.req_id}, expected {rid}")
            if msg.op == Op.ERROR:
                names = split_strings(msg.payload)
                raise XenstoreError(names[0] if names else "EIO")
            if msg.op != op:
                raise ProtocolError(f"reply type {msg.op} to {op.name}")
            return msg.payload

    def _event(self, msg: Message) -> None:
        parts = split_strings(msg.payload)
        if len(parts) >= 2:
            self.events.append((parts[0], parts[1]))

    # ------------------------------------------------------------------ operations
    def read(self, path: str, tx: int = 0) -> bytes:
        return self.call(Op.READ, strings(path), tx)

    def read_text(self, path: str, tx: int = 0) -> str:
        return self.read(path, tx).decode("utf-8", "replace")

    def exists(self, path: str, tx: int = 0) -> bool:
        try:
            self.read(path, tx)
        except XenstoreError as exc:
            if exc.name == "ENOENT":
                return False
            raise
        return True

    def write(self, path: str, value: str | bytes, tx: int = 0) -> None:
        data = value.encode() if isinstance(value, str) else value
        self.call(Op.WRITE, path.encode() + b"\0" + data, tx)

    def mkdir(self, path: str, tx: int = 0) -> None:
        self.call(Op.MKDIR, strings(path), tx)

    def rm(self, path: str, tx: int = 0) -> None:
        self.call(Op.RM, strings(path), tx)

    def directory(self, path: str, tx: int = 0) -> list[str]:
        """The children's names (with DIRECTORY_PART when the list is over 4 KiB)."""
        try:
            return split_strings(self.call(Op.DIRECTORY, strings(path), tx))
        except XenstoreError as exc:
            if exc.name != "E2BIG":
                raise
        names: list[str] = []
        gen = ""
        off = 0
        for _ in range(10_000):
            raw = self.call(Op.DIRECTORY_PART, strings(path, str(off)), tx)
            head, _, rest = raw.partition(b"\0")
            if off and head.decode() != gen:
                names, off = [], 0       # the directory changed: start again
                continue
            gen = head.decode()
            if len(rest) <= 1:
                return names
            last = rest.endswith(b"\0\0")
            names.extend(split_strings(rest[:-1] if last else rest))
            if last:
                return names
            off += len(rest)
        raise XenstoreError("EAGAIN", f"{path}: directory keeps changing")

    def get_perms(self, path: str, tx: int = 0) -> list[str]:
        return split_strings(self.call(Op.GET_PERMS, strings(path), tx))

    def set_perms(self, path: str, perms: list[str], tx: int = 0) -> None:
        self.call(Op.SET_PERMS, strings(path, *perms), tx)

    def get_domain_path(self, domid: int) -> str:
        return split_strings(self.call(Op.GET_DOMAIN_PATH, strings(str(domid))))[0]

    def watch(self, path: str, token: str) -> None:
        self.call(Op.WATCH, strings(path, token))

    def unwatch(self, path: str, token: str) -> None:
        self.call(Op.UNWATCH, strings(path, token))

    def read_event(self, timeout: float) -> tuple[str, str] | None:
        """The next watch event (path, token), or None after ``timeout`` seconds."""
        if self.events:
            return self.events.popleft()
        end = time.monotonic() + max(0.0, timeout)
        while True:
            msg = self._next_message(end)
            if msg is None:
                return None
            if msg.op == Op.WATCH_EVENT:
                self._event(msg)
                if self.events:
                    return self.events.popleft()
            else:
                raise ProtocolError(f"unexpected message type {msg.op} outside a request")

    def transaction_start(self) -> int:
        return int(split_strings(self.call(Op.TRANSACTION_START, strings("")))[0])

    def transaction_end(self, tx: int, commit: bool = True) -> None:
        """Commit (or abort); XenstoreError EAGAIN when the commit conflicted."""
        self.call(Op.TRANSACTION_END, strings("T" if commit else "F"), tx)

    def transact(self, body: Callable[[int], T], attempts: int = 8) -> T:
        """Run ``body(tx)`` in a transaction, again while the commit says EAGAIN."""
        for _ in range(attempts):
            tx = self.transaction_start()
            try:
                result = body(tx)
            except BaseException:
                with contextlib.suppress(XenstoreError):
                    self.transaction_end(tx, commit=False)
                raise
            try:
                self.transaction_end(tx, commit=True)
            except XenstoreError as exc:
                if exc.name == "EAGAIN":
                    continue
                raise
            return result
        raise XenstoreError("EAGAIN", f"transaction conflicted {attempts} times")
