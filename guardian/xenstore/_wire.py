"""XenStore's wire protocol (Xen's ``xen/include/public/io/xs_wire.h``).

Every message is a 16-byte header ``struct xsd_sockmsg {uint32 type, req_id, tx_id,
len}`` in the host's byte order (little-endian on x86 and Arm, the only places Xen
runs) followed by ``len`` bytes of payload, at most ``PAYLOAD_MAX`` (4096).  Strings
in a payload are NUL-terminated, except a ``WRITE``'s value and a ``READ``'s reply.
An error reply has type ``ERROR`` and the errno's name as payload (``"ENOENT\\0"``).

A permission is a letter and a domain id: ``n`` none, ``r`` read, ``w`` write,
``b`` both.  A node's first permission names its owner and gives everyone else its
access; the following ones give that access to one domain each.
"""

from __future__ import annotations

import enum
import errno
import struct
from dataclasses import dataclass

HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size
PAYLOAD_MAX = 4096
#: longest absolute path xenstored accepts (XENSTORE_ABS_PATH_MAX)
ABS_PATH_MAX = 3072
#: longest relative path (XENSTORE_REL_PATH_MAX)
REL_PATH_MAX = 2048


class Op(enum.IntEnum):
    """``enum xsd_sockmsg_type``."""

    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


#: the errno names xenstored sends (``xsd_errors[]``), in its order
ERROR_NAMES = ("EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
               "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG",
               "EPERM")


class XenstoreError(OSError):
    """An error reply (``errno``/``name`` set, e.g. ENOENT / "ENOENT"), or a broken
    connection (``errno`` EIO)."""

    def __init__(self, name: str, detail: str = "") -> None:
        code = getattr(errno, name, errno.EIO)
        super().__init__(code, f"{name}{': ' + detail if detail else ''}")
        self.name = name
        self.detail = detail


class ProtocolError(XenstoreError):
    """The peer broke the protocol (bad header, oversized payload, wrong reply)."""

    def __init__(self, detail: str) -> None:
        super().__init__("EIO", detail)


@dataclass(frozen=True)
class Message:
    op: int
    req_id: int
    tx_id: int
    payload: bytes

    def encode(self) -> bytes:
        if len(self.payload) > PAYLOAD_MAX:
            raise XenstoreError("E2BIG", f"payload of {len(self.payload)} bytes")
        return HEADER.pack(self.op, self.req_id, self.tx_id, len(self.payload)) + self.payload


def decode_header(data: bytes) -> tuple[int, int, int, int]:
    """(type, req_id, tx_id, len); ProtocolError for a length over PAYLOAD_MAX."""
    op, req_id, tx_id, length = HEADER.unpack(data)
    if length > PAYLOAD_MAX:
        raise ProtocolError(f"payload length {length} over {PAYLOAD_MAX}")
    return op, req_id, tx_id, length


def strings(*parts: str | bytes) -> bytes:
    """Each part NUL-terminated: ``strings("a", "b") == b"a\\0b\\0"``."""
    return b"".join((p.encode() if isinstance(p, str) else p) + b"\0" for p in parts)


def split_strings(payload: bytes) -> list[str]:
    """The NUL-terminated strings of ``payload`` (a missing final NUL is tolerated)."""
    if not payload:
        return []
    if payload.endswith(b"\0"):
        payload = payload[:-1]
    return [p.decode("utf-8", "replace") for p in payload.split(b"\0")]


def error_payload(name: str) -> bytes:
    return strings(name)


class Access(enum.Flag):
    NONE = 0
    READ = enum.auto()
    WRITE = enum.auto()
    BOTH = READ | WRITE


_LETTERS = {"n": Access.NONE, "r": Access.READ, "w": Access.WRITE, "b": Access.BOTH}


@dataclass(frozen=True)
class Perm:
    """One permission entry: ``Perm.parse("r3") == Perm(3, Access.READ)``."""

    domid: int
    access: Access

    @classmethod
    def parse(cls, text: str) -> Perm:
        if len(text) < 2 or text[0] not in _LETTERS or not text[1:].isdigit():
            raise XenstoreError("EINVAL", f"bad permission {text!r}")
        domid = int(text[1:])
        if domid > 0xFFFF:
            raise XenstoreError("EINVAL", f"bad domain id in {text!r}")
        return cls(domid, _LETTERS[text[0]])

    def __str__(self) -> str:
        letter = next(k for k, v in _LETTERS.items() if v == self.access)
        return f"{letter}{self.domid}"


def parse_perms(texts: list[str] | tuple[str, ...]) -> tuple[Perm, ...]:
    if not texts:
        raise XenstoreError("EINVAL", "no permissions")
    return tuple(Perm.parse(t) for t in texts)


def format_perms(perms: tuple[Perm, ...] | list[Perm]) -> list[str]:
    return [str(p) for p in perms]
