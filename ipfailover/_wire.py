"""The failover wire protocol: one binary message, HMAC-SHA256, replay protection.

Every packet is one message, at most ``MAX_SIZE`` (1024) bytes, network byte order::

    off size
      0   4  magic b"GDFO"
      4   1  version (1)
      5   1  message type (MsgType code)
      6   1  key id (1..255) of the key that made the MAC
      7   1  sender state (PairState code)
      8   1  sender priority (0..255)
      9   1  flags (Flags; unknown bits are ignored, for newer senders)
     10   4  sender heartbeat interval, ms (1..600000)
     14   8  sender generation: +1 at every start of the sender, persisted on its disk
     22   8  sequence number: one per packet, strictly increasing within a generation
     30   8  boot id: 8 random bytes per start, for status and debugging only
     38   8  nonce: PROBE / PROBE_ACK / SWITCHOVER_*, 0 otherwise
     46   8  the receiver's generation as the sender last saw it (0: never heard)
     54      group    u8 length + UTF-8, 1..32 bytes
             node     u8 length + UTF-8, 1..64 bytes (the sender)
             reason   u8 length + UTF-8, 0..64 bytes (GOODBYE, REFUSED, state reason)
             vips     u8 count 0..8, each u8 family (4 or 6) + 4 or 16 address bytes
             view     u8 count 0..8, one u64 per path index: the last sequence number the
                      sender accepted from the receiver on that path (0: none)
             clients  u8 count 0..16, each u8 family (4 or 6) + 4 or 16 address bytes
                      + 6 MAC bytes: recent clients of the VIPs (CLIENTS; 0 otherwise)
    end-32  32  HMAC-SHA256(key[key id], every byte before it)

``decode`` checks, in this order: size and structure (TRUNCATED, GARBAGE), group
(WRONG_GROUP, so a neighbouring pair on the same segment is named as such instead of
looking like an attack), key id (UNKNOWN_KEY), MAC (BAD_MAC, ``hmac.compare_digest``).
No exception other than ``Drop`` leaves ``decode`` for any input.  Freshness is the
``ReplayGuard``'s job, after the MAC (a forged packet must not move the guard):
a message is accepted only if its generation is newer than the last one seen from that
sender, or the same generation with a higher sequence number.  Persist
``ReplayGuard.generations()`` so that a restarted receiver still refuses an older run's
packets (pass them back as ``known``).

Key file (``KeyRing.load``): one key a line, ``ID SECRET [send]``; ID is 1..255, SECRET
is hex (at least 16 bytes = 32 hex digits; ``openssl rand -hex 32`` makes a good one),
``#`` starts a comment.  The key marked ``send`` (or, if none is marked, the first one)
signs outgoing packets; every key listed is accepted.  Rotation without a failover:
add the new key on both nodes, then mark it ``send`` on both, then remove the old one.
The file must not be readable or writable by group or others.
"""

from __future__ import annotations

import binascii
import collections
import enum
import errno
import hashlib
import hmac
import ipaddress
import os
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ._states import PairState

MAGIC = b"GDFO"
VERSION = 1
MAX_SIZE = 1024  # the largest valid packet is 820 bytes (16 IPv6 clients, 8 IPv6 VIPs)
MAC_SIZE = 32
MIN_KEY_BYTES = 16
MAX_GROUP = 32
MAX_NODE = 64
MAX_REASON = 64
MAX_VIPS = 8
MAX_PATHS = 8
MAX_CLIENTS = 16
MAX_INTERVAL_MS = 600_000
U64 = (1 << 64) - 1

_HEAD = struct.Struct("!4sBBBBBBIQQ8sQQ")
HEADER_SIZE = _HEAD.size  # 54
MIN_SIZE = HEADER_SIZE + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + MAC_SIZE  # shortest valid packet

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class MsgType(enum.Enum):
    """Message types; the value is the code on the wire."""

    HEARTBEAT = 1  # periodic: "here I am, in this state, holding these VIPs"
    GOODBYE = 2  # "I released / I am stopping / I went FAULT: take over now"
    PROBE = 3  # "are you alive?"  Answered at once with PROBE_ACK
    PROBE_ACK = 4  # echoes the probe's nonce
    SWITCHOVER_REQUEST = 5  # from the master: "take over"; from the standby: "give me the role"
    SWITCHOVER_READY = 6  # standby to master: "I am healthy and ready, release"
    SWITCHOVER_RELEASED = 7  # master to standby: "released, take them"
    SWITCHOVER_REFUSED = 8  # either way: "not now", with a reason
    CLIENTS = 9  # informational, master to standby: recent clients of the VIPs (ip, MAC)


_STATE_CODES: dict[PairState, int] = {
    PairState.INIT: 1,
    PairState.BACKUP: 2,
    PairState.MASTER: 3,
    PairState.FAULT: 4,
    PairState.STOPPED: 5,
}
_CODE_STATES = {v: k for k, v in _STATE_CODES.items()}
_CODE_TYPES = {t.value: t for t in MsgType}


class Flags(enum.Flag):
    """Bits of the flags byte."""

    NONE = 0
    PING_USED = 1  # the sender watches ping nodes
    PING_OK = 2  # ... and reaches them
    SWITCHOVER = 4  # the sender is in a switchover handshake
    RESYNC = 8  # the sender is resyncing after a clock jump: its state is not a claim
    PREEMPT = 16  # the sender has preempt enabled (for status: both should agree)


_KNOWN_FLAGS = 0
for _f in Flags:
    _KNOWN_FLAGS |= _f.value


class DropReason(enum.Enum):
    TRUNCATED = "truncated"  # shorter than its own fields say
    GARBAGE = "garbage"  # bad magic, version, code, length or encoding
    WRONG_GROUP = "wrong-group"  # another pair's packet
    UNKNOWN_KEY = "unknown-key"  # key id not in our key ring
    BAD_MAC = "bad-mac"  # forged, corrupted, or signed with a different secret
    REPLAY = "replay"  # sequence number already seen, or below the window
    STALE = "stale"  # from an older generation (an earlier run) of the sender
    REORDERED = "reordered"  # unseen but older than the newest: arrived late, dropped
    OWN_NAME = "own-name"  # carries our own node name (multicast loop, misconfig)
    FOREIGN_NODE = "foreign-node"  # authenticated, but not from the configured peer


class Drop(Exception):
    """A packet was refused; ``reason`` says why, ``detail`` for the log."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


class DropCounters(collections.Counter[DropReason]):
    """Refused packets by reason, for status."""

    def as_dict(self) -> dict[str, int]:
        return {r.value: n for r, n in sorted(self.items(), key=lambda kv: kv[0].value) if n}


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class Body:
    """What the state machine decides about an outgoing message.

    The ``Endpoint`` adds the rest (group, node, generation, sequence number, boot id,
    view of the peer) and the engine adds the VIPs it really holds."""

    type: MsgType
    state: PairState
    priority: int
    flags: Flags = Flags.NONE
    interval_ms: int = 100
    nonce: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Message:
    type: MsgType
    group: str
    node: str
    generation: int
    seq: int
    boot_id: bytes
    state: PairState
    priority: int
    flags: Flags = Flags.NONE
    interval_ms: int = 100
    nonce: int = 0
    vips: tuple[IPAddress, ...] = ()
    peer_generation: int = 0
    peer_seqs: tuple[int, ...] = ()
    reason: str = ""
    #: CLIENTS: (address, MAC "aa:bb:cc:dd:ee:ff") of recent clients of the VIPs
    clients: tuple[tuple[IPAddress, str], ...] = ()
    key_id: int = 0  # set by decode: the key that authenticated the message

    @property
    def interval(self) -> float:
        return self.interval_ms / 1000.0


def _clip_utf8(text: str, limit: int) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", errors="ignore").encode("utf-8")


def encode(msg: Message, keyring: KeyRing) -> bytes:
    """Pack and sign ``msg`` with the key ring's send key (``msg.key_id`` is ignored).

    Raises ValueError for a message that breaks the format's bounds (a bug of ours)."""
    group = msg.group.encode("utf-8")
    node = msg.node.encode("utf-8")
    if not 1 <= len(group) <= MAX_GROUP:
        raise ValueError(f"group must be 1..{MAX_GROUP} bytes of UTF-8: {msg.group!r}")
    if not 1 <= len(node) <= MAX_NODE:
        raise ValueError(f"node name must be 1..{MAX_NODE} bytes of UTF-8: {msg.node!r}")
    if len(msg.vips) > MAX_VIPS:
        raise ValueError(f"at most {MAX_VIPS} VIPs in a message, got {len(msg.vips)}")
    if len(msg.peer_seqs) > MAX_PATHS:
        raise ValueError(f"at most {MAX_PATHS} paths, got {len(msg.peer_seqs)}")
    if len(msg.clients) > MAX_CLIENTS:
        raise ValueError(f"at most {MAX_CLIENTS} clients in a message, got {len(msg.clients)}")
    client_parts = []
    for ip, mac in msg.clients:
        client_parts.append(bytes([ip.version]) + ip.packed + mac_bytes(mac))
    if len(msg.boot_id) != 8:
        raise ValueError("boot id must be 8 bytes")
    if not 0 <= msg.priority <= 255:
        raise ValueError(f"priority must be 0..255, got {msg.priority}")
    if not 1 <= msg.interval_ms <= MAX_INTERVAL_MS:
        raise ValueError(f"interval must be 1..{MAX_INTERVAL_MS} ms, got {msg.interval_ms}")
    for name, value in (
        ("generation", msg.generation),
        ("seq", msg.seq),
        ("nonce", msg.nonce),
        ("peer_generation", msg.peer_generation),
    ):
        if not 0 <= value <= U64:
            raise ValueError(f"{name} out of range: {value}")
    key_id, key = keyring.send_id, keyring.send_key
    parts = [
        _HEAD.pack(
            MAGIC,
            VERSION,
            msg.type.value,
            key_id,
            _STATE_CODES[msg.state],
            msg.priority,
            msg.flags.value,
            msg.interval_ms,
            msg.generation,
            msg.seq,
            msg.boot_id,
            msg.nonce,
            msg.peer_generation,
        )
    ]
    reason = _clip_utf8(msg.reason, MAX_REASON)
    for raw in (group, node, reason):
        parts.append(bytes([len(raw)]) + raw)
    parts.append(bytes([len(msg.vips)]))
    for ip in msg.vips:
        parts.append(bytes([ip.version]) + ip.packed)
    parts.append(bytes([len(msg.peer_seqs)]))
    for s in msg.peer_seqs:
        if not 0 <= s <= U64:
            raise ValueError(f"peer seq out of range: {s}")
        parts.append(struct.pack("!Q", s))
    parts.append(bytes([len(msg.clients)]))
    parts.extend(client_parts)
    body = b"".join(parts)
    return body + hmac.new(key, body, hashlib.sha256).digest()


def mac_bytes(mac: str) -> bytes:
    """``"aa:bb:cc:dd:ee:ff"`` (or with ``-``) as 6 bytes; ValueError otherwise."""
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


class _Reader:
    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise Drop(DropReason.TRUNCATED, f"{what} runs past the end")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def text(self, what: str, lo: int, hi: int) -> str:
        n = self.byte(what)
        if not lo <= n <= hi:
            raise Drop(DropReason.GARBAGE, f"{what} length {n} not in {lo}..{hi}")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Drop(DropReason.GARBAGE, f"{what} is not UTF-8") from None


def decode(
    data: bytes | bytearray | memoryview, keyring: KeyRing, *, group: str | None = None
) -> Message:
    """Parse and authenticate one packet, or raise ``Drop``.  Freshness is not checked
    here (see ``ReplayGuard``)."""
    try:
        return _decode(bytes(data), keyring, group)
    except Drop:
        raise
    except (struct.error, ValueError, IndexError, TypeError, KeyError) as exc:
        # belt and braces: the parser checks every bound itself; anything else is garbage
        raise Drop(DropReason.GARBAGE, f"unparsable: {exc}") from None


def _decode(data: bytes, keyring: KeyRing, group: str | None) -> Message:
    if len(data) > MAX_SIZE:
        raise Drop(DropReason.GARBAGE, f"{len(data)} bytes, more than {MAX_SIZE}")
    if len(data) < len(MAGIC):
        raise Drop(DropReason.TRUNCATED, f"{len(data)} bytes")
    if data[:4] != MAGIC:
        raise Drop(DropReason.GARBAGE, "bad magic")
    if len(data) < 5:
        raise Drop(DropReason.TRUNCATED, f"{len(data)} bytes")
    if data[4] != VERSION:
        raise Drop(DropReason.GARBAGE, f"version {data[4]}, we speak {VERSION}")
    if len(data) < MIN_SIZE:
        raise Drop(DropReason.TRUNCATED, f"{len(data)} bytes, the minimum is {MIN_SIZE}")
    (
        _magic,
        _version,
        type_code,
        key_id,
        state_code,
        priority,
        flag_bits,
        interval_ms,
        generation,
        seq,
        boot_id,
        nonce,
        peer_generation,
    ) = _HEAD.unpack_from(data, 0)
    mtype = _CODE_TYPES.get(type_code)
    if mtype is None:
        raise Drop(DropReason.GARBAGE, f"unknown message type {type_code}")
    state = _CODE_STATES.get(state_code)
    if state is None:
        raise Drop(DropReason.GARBAGE, f"unknown state {state_code}")
    if not 1 <= interval_ms <= MAX_INTERVAL_MS:
        raise Drop(DropReason.GARBAGE, f"interval {interval_ms} ms")
    if key_id == 0:
        raise Drop(DropReason.GARBAGE, "key id 0")
    end = len(data) - MAC_SIZE
    r = _Reader(data, HEADER_SIZE, end)
    grp = r.text("group", 1, MAX_GROUP)
    node = r.text("node", 1, MAX_NODE)
    reason = r.text("reason", 0, MAX_REASON)
    nvips = r.byte("vip count")
    if nvips > MAX_VIPS:
        raise Drop(DropReason.GARBAGE, f"{nvips} VIPs")
    vips: list[IPAddress] = []
    for _ in range(nvips):
        family = r.byte("vip family")
        if family == 4:
            vips.append(ipaddress.IPv4Address(r.take(4, "IPv4 VIP")))
        elif family == 6:
            vips.append(ipaddress.IPv6Address(r.take(16, "IPv6 VIP")))
        else:
            raise Drop(DropReason.GARBAGE, f"vip family {family}")
    npaths = r.byte("path count")
    if npaths > MAX_PATHS:
        raise Drop(DropReason.GARBAGE, f"{npaths} paths")
    seqs = tuple(struct.unpack("!Q", r.take(8, "path view"))[0] for _ in range(npaths))
    nclients = r.byte("client count")
    if nclients > MAX_CLIENTS:
        raise Drop(DropReason.GARBAGE, f"{nclients} clients")
    clients: list[tuple[IPAddress, str]] = []
    for _ in range(nclients):
        family = r.byte("client family")
        caddr: IPAddress
        if family == 4:
            caddr = ipaddress.IPv4Address(r.take(4, "IPv4 client"))
        elif family == 6:
            caddr = ipaddress.IPv6Address(r.take(16, "IPv6 client"))
        else:
            raise Drop(DropReason.GARBAGE, f"client family {family}")
        clients.append((caddr, r.take(6, "client MAC").hex(":")))
    if r.pos != end:
        raise Drop(DropReason.GARBAGE, f"{end - r.pos} stray bytes before the MAC")
    if group is not None and grp != group:
        raise Drop(DropReason.WRONG_GROUP, f"group {grp!r} from {node!r}")
    key = keyring.get(key_id)
    if key is None:
        raise Drop(DropReason.UNKNOWN_KEY, f"key id {key_id} from {node!r}")
    want = hmac.new(key, data[:end], hashlib.sha256).digest()
    if not hmac.compare_digest(want, data[end:]):
        raise Drop(DropReason.BAD_MAC, f"from {node!r} with key id {key_id}")
    return Message(
        type=mtype,
        group=grp,
        node=node,
        generation=generation,
        seq=seq,
        boot_id=boot_id,
        state=state,
        priority=priority,
        flags=Flags(flag_bits & _KNOWN_FLAGS),
        interval_ms=interval_ms,
        nonce=nonce,
        vips=tuple(vips),
        peer_generation=peer_generation,
        peer_seqs=seqs,
        reason=reason,
        clients=tuple(clients),
        key_id=key_id,
    )


# ---------------------------------------------------------------- keys


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file (and line)."""


class KeyRing:
    """Key id -> secret.  One key signs (``send_id``); all of them are accepted."""

    def __init__(
        self, keys: Mapping[int, bytes], send_id: int | None = None, source: str = "key ring"
    ) -> None:
        if not keys:
            raise KeyFileError(f"{source}: no keys")
        for kid, secret in keys.items():
            if not 1 <= kid <= 255:
                raise KeyFileError(f"{source}: key id {kid} is not in 1..255")
            if len(secret) < MIN_KEY_BYTES:
                raise KeyFileError(
                    f"{source}: key {kid} is {len(secret)} bytes, "
                    f"at least {MIN_KEY_BYTES} are needed"
                )
        self._keys = dict(keys)
        if send_id is None:
            send_id = next(iter(self._keys))
        if send_id not in self._keys:
            raise KeyFileError(f"{source}: send key {send_id} is not in the ring")
        self.send_id = send_id
        self.source = source

    @property
    def send_key(self) -> bytes:
        return self._keys[self.send_id]

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(self._keys)

    def get(self, key_id: int) -> bytes | None:
        return self._keys.get(key_id)

    def __repr__(self) -> str:  # never show the secrets
        return f"KeyRing(ids={list(self._keys)}, send_id={self.send_id})"

    @classmethod
    def parse(cls, text: str, source: str = "<string>") -> KeyRing:
        keys: dict[int, bytes] = {}
        send: int | None = None
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{source}:{lineno}"
            words = line.split()
            if len(words) not in (2, 3) or (len(words) == 3 and words[2] != "send"):
                raise KeyFileError(f"{where}: expected 'ID SECRET [send]'")
            try:
                kid = int(words[0], 10)
            except ValueError:
                raise KeyFileError(f"{where}: key id {words[0]!r} is not a number") from None
            if not 1 <= kid <= 255:
                raise KeyFileError(f"{where}: key id {kid} is not in 1..255")
            if kid in keys:
                raise KeyFileError(f"{where}: key id {kid} listed twice")
            try:
                secret = binascii.unhexlify(words[1])
            except (binascii.Error, ValueError):
                raise KeyFileError(f"{where}: the secret of key {kid} is not hex") from None
            if len(secret) < MIN_KEY_BYTES:
                raise KeyFileError(
                    f"{where}: key {kid} is {len(secret)} bytes, at least "
                    f"{MIN_KEY_BYTES} ({2 * MIN_KEY_BYTES} hex digits) needed"
                )
            if len(words) == 3:
                if send is not None:
                    raise KeyFileError(f"{where}: more than one key marked 'send'")
                send = kid
            keys[kid] = secret
        if not keys:
            raise KeyFileError(f"{source}: no keys")
        return cls(keys, send, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyRing:
        """Read a key file; refuses one that group or others may read or write."""
        name = os.fspath(path)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise KeyFileError(f"{name}: is a symbolic link; name the file itself") from None
            raise KeyFileError(f"{name}: cannot open: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise KeyFileError(f"{name}: not a regular file")
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise KeyFileError(
                    f"{name}: mode {mode:04o} lets group or others read or write the keys; "
                    f"run: chmod 600 {name}"
                )
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
                if sum(map(len, chunks)) > 1 << 20:
                    raise KeyFileError(f"{name}: larger than 1 MiB, not a key file")
            data = b"".join(chunks)
        except OSError as exc:
            raise KeyFileError(f"{name}: cannot read: {exc.strerror}") from None
        finally:
            os.close(fd)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyFileError(f"{name}: not UTF-8 text") from None
        return cls.parse(text, source=name)


# ---------------------------------------------------------------- freshness


@dataclass
class _Window:
    generation: int
    top: int
    seen: int  # bit i set: sequence number top - i was seen


class ReplayGuard:
    """Per-sender freshness: newer generation, or same generation and a new sequence number.

    ``window`` sequence numbers below the newest are remembered: a packet among them that
    was not seen yet arrived late (reordered) and is dropped as REORDERED (harmless, not
    a sign of attack) unless ``accept_reordered``; one seen before, or older than the
    window, is a REPLAY.  ``known`` maps sender -> the last generation seen by an earlier
    run of ours (persist ``generations()``): older ones are STALE even after our restart.
    """

    def __init__(
        self,
        window: int = 64,
        *,
        accept_reordered: bool = False,
        known: Mapping[str, int] | None = None,
    ) -> None:
        if not 0 <= window <= 1024:
            raise ValueError("replay window must be 0..1024")
        self.window = window
        self.accept_reordered = accept_reordered
        self._known = dict(known or {})
        self._peers: dict[str, _Window] = {}

    def generations(self) -> dict[str, int]:
        out = dict(self._known)
        out.update({n: w.generation for n, w in self._peers.items()})
        return out

    def last(self, node: str) -> tuple[int, int] | None:
        w = self._peers.get(node)
        return None if w is None else (w.generation, w.top)

    def check(self, msg: Message) -> None:
        """Accept (and remember) ``msg`` or raise Drop(REPLAY | STALE | REORDERED)."""
        w = self._peers.get(msg.node)
        floor = self._known.get(msg.node, 0) if w is None else w.generation
        if msg.generation < floor:
            raise Drop(DropReason.STALE, f"{msg.node!r} generation {msg.generation} < {floor}")
        if w is None or msg.generation > w.generation:
            self._peers[msg.node] = _Window(msg.generation, msg.seq, 1)
            return
        if msg.seq > w.top:
            shift = msg.seq - w.top
            w.seen = (
                ((w.seen << shift) | 1) & ((1 << max(self.window, 1)) - 1) if shift < 4096 else 1
            )
            w.top = msg.seq
            return
        back = w.top - msg.seq
        if back >= self.window:
            raise Drop(DropReason.REPLAY, f"{msg.node!r} seq {msg.seq}, newest {w.top}")
        bit = 1 << back
        if w.seen & bit:
            raise Drop(DropReason.REPLAY, f"{msg.node!r} seq {msg.seq} seen before")
        w.seen |= bit
        if not self.accept_reordered:
            raise Drop(DropReason.REORDERED, f"{msg.node!r} seq {msg.seq} after {w.top}")


# ---------------------------------------------------------------- one node's side


class Endpoint:
    """Seals outgoing messages and opens incoming ones for one node.

    Holds the sequence counter, the replay guard, the drop counters, and what we last
    accepted from the peer on each path (which goes back to the peer as its ``view``)."""

    def __init__(
        self,
        keyring: KeyRing,
        group: str,
        node: str,
        generation: int,
        *,
        boot_id: bytes | None = None,
        paths: int = 1,
        peer: str | None = None,
        replay_window: int = 64,
        known: Mapping[str, int] | None = None,
    ) -> None:
        if not 1 <= paths <= MAX_PATHS:
            raise ValueError(f"paths must be 1..{MAX_PATHS}")
        if not 1 <= len(group.encode()) <= MAX_GROUP:
            raise ValueError(f"group must be 1..{MAX_GROUP} bytes")
        if not 1 <= len(node.encode()) <= MAX_NODE:
            raise ValueError(f"node name must be 1..{MAX_NODE} bytes")
        self.keyring = keyring
        self.group = group
        self.node = node
        self.generation = generation
        self.boot_id = boot_id if boot_id is not None else os.urandom(8)
        self.paths = paths
        self.peer = peer
        self.seq = 0
        self.guard = ReplayGuard(replay_window, known=known)
        self.drops = DropCounters()
        self.last_drop: Drop | None = None
        self._peer_name: str | None = peer
        self._peer_generation = 0
        self._view = [0] * paths
        # per path: (seq, sent at) of what we sent lately, for heard_age
        self._sent: list[collections.deque[tuple[int, float]]] = [
            collections.deque(maxlen=512) for _ in range(paths)
        ]

    def seal(
        self,
        body: Body,
        *,
        path: int = 0,
        vips: Iterable[IPAddress | str] = (),
        clients: Iterable[tuple[IPAddress, str]] = (),
        now: float | None = None,
    ) -> bytes:
        """The packet for ``body`` on ``path``; every call takes a new sequence number."""
        self.seq += 1
        addrs = tuple(ipaddress.ip_address(v) if isinstance(v, str) else v for v in vips)
        msg = Message(
            type=body.type,
            group=self.group,
            node=self.node,
            generation=self.generation,
            seq=self.seq,
            boot_id=self.boot_id,
            state=body.state,
            priority=body.priority,
            flags=body.flags,
            interval_ms=body.interval_ms,
            nonce=body.nonce,
            vips=addrs,
            peer_generation=self._peer_generation,
            peer_seqs=tuple(self._view),
            reason=body.reason,
            clients=tuple(clients),
        )
        if now is not None and 0 <= path < self.paths:
            self._sent[path].append((self.seq, now))
        return encode(msg, self.keyring)

    def open(self, data: bytes | bytearray | memoryview, *, path: int = 0) -> Message | None:
        """The authenticated, fresh message in ``data``, or None (counted in ``drops``)."""
        try:
            msg = decode(data, self.keyring, group=self.group)
            if msg.node == self.node:
                raise Drop(
                    DropReason.OWN_NAME,
                    f"boot id {msg.boot_id.hex()}"
                    + (" (ours: looped back)" if msg.boot_id == self.boot_id else ""),
                )
            if self.peer is not None and msg.node != self.peer:
                raise Drop(DropReason.FOREIGN_NODE, f"{msg.node!r}, expected {self.peer!r}")
            self.guard.check(msg)
        except Drop as drop:
            self.drops[drop.reason] += 1
            self.last_drop = drop
            return None
        if msg.node != self._peer_name or msg.generation != self._peer_generation:
            self._peer_name = msg.node
            self._peer_generation = msg.generation
            self._view = [0] * self.paths
        if 0 <= path < self.paths:
            self._view[path] = max(self._view[path], msg.seq)
        return msg

    def heard_age(self, path: int, peer_seq: int, now: float) -> float | None:
        """How long ago we sent the newest packet that the peer says it got on ``path``
        (``peer_seq`` from its view); None if unknown (never got one, or too old)."""
        if not 0 <= path < self.paths or peer_seq <= 0:
            return None
        best: float | None = None
        for seq, t in self._sent[path]:
            if seq <= peer_seq:
                best = t
        return None if best is None else now - best

    def status(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "boot_id": self.boot_id.hex(),
            "seq": self.seq,
            "send_key": self.keyring.send_id,
            "keys": list(self.keyring.ids),
            "drops": self.drops.as_dict(),
            "last_drop": str(self.last_drop) if self.last_drop else None,
            "peer_generations": self.guard.generations(),
        }


# ---------------------------------------------------------------- generation counter


class GenerationError(Exception):
    """The generation file exists but cannot be used; the message names it."""


class Generation:
    """A counter persisted in ``directory/name``, advanced once at every daemon start.

    ``advance(floor=int(time.time()))`` is the recommended call: the counter never goes
    back, and if the state directory is lost the wall clock still puts the new run
    above the old one (a peer that remembers our generation would otherwise drop all
    our packets as STALE)."""

    def __init__(self, directory: str | os.PathLike[str], name: str = "generation") -> None:
        self.directory = Path(directory)
        self.path = self.directory / name

    def read(self) -> int:
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            raise GenerationError(f"{self.path}: cannot read: {exc}") from None
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise GenerationError(f"{self.path}: not a number: {text[:40]!r}") from None
        if not 0 <= value < U64:
            raise GenerationError(f"{self.path}: out of range: {value}")
        return value

    def advance(self, *, floor: int = 0) -> int:
        """Write and return max(current + 1, floor), atomically (temp, fsync, rename)."""
        value = max(self.read() + 1, floor)
        if value > U64:
            raise GenerationError(f"{self.path}: generation overflow")
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{self.path.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, f"{value}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return value
