"""Request signatures: HMAC-SHA256 over method, path, timestamp, nonce and body.

The MAC input is ``METHOD "\\n" PATH "\\n" TIMESTAMP "\\n" NONCE "\\n" BODY`` where
TIMESTAMP and NONCE are the header texts as sent.  Headers::

    X-Guardian-Key-Id: 1
    X-Guardian-Timestamp: 1714550400.123
    X-Guardian-Nonce: <32 hex digits>
    X-Guardian-Signature: <64 hex digits>

Every VM has its own key ring, so the key that verifies the MAC names the sender.
A request is refused when the timestamp is more than ``window`` seconds off, and
when its nonce was seen before (a bounded cache that remembers nonces for as long
as their timestamp is acceptable).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ipfailover._wire import KeyRing

H_KEY_ID = "x-guardian-key-id"
H_TIMESTAMP = "x-guardian-timestamp"
H_NONCE = "x-guardian-nonce"
H_SIGNATURE = "x-guardian-signature"
WINDOW = 60.0
_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
_SIG_RE = re.compile(r"^[0-9a-f]{64}$")


class AuthError(Exception):
    """The request is not authentic (HTTP 401); the message says why (for the log)."""


class NonceCacheFull(Exception):
    """Too many fresh nonces to remember: refuse rather than forget one (HTTP 429)."""


def mac(key: bytes, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    msg = f"{method}\n{path}\n{timestamp}\n{nonce}\n".encode() + body
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def sign(key_id: int, key: bytes, method: str, path: str, body: bytes = b"",
         *, now: float | None = None, nonce: str | None = None) -> dict[str, str]:
    """The four headers for a request (the client side; used by tests and tools)."""
    ts = f"{time.time() if now is None else now:.3f}"
    nonce = nonce if nonce is not None else os.urandom(16).hex()
    return {
        "X-Guardian-Key-Id": str(key_id),
        "X-Guardian-Timestamp": ts,
        "X-Guardian-Nonce": nonce,
        "X-Guardian-Signature": mac(key, method, path, ts, nonce, body),
    }


class NonceCache:
    """(sender, nonce) pairs seen within the last ``2 * window`` seconds, bounded."""

    def __init__(self, window: float = WINDOW, capacity: int = 65536) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, sender: str, nonce: str, now: float) -> bool:
        """True if new (and now remembered); False if a replay."""
        self._expire(now)
        key = (sender, nonce)
        if key in self._seen:
            return False
        if len(self._seen) >= self.capacity:
            raise NonceCacheFull(f"{len(self._seen)} nonces in {2 * self.window:g}s")
        self._seen[key] = now
        return True

    def _expire(self, now: float) -> None:
        # a timestamp is accepted up to `window` either side of now: a nonce must be
        # remembered until its timestamp cannot be accepted any more (2 * window)
        horizon = now - 2 * self.window
        while self._seen:
            key, seen = next(iter(self._seen.items()))
            if seen >= horizon:
                break
            del self._seen[key]


@dataclass(frozen=True)
class Verified:
    sender: str  # the VM whose key verified the MAC
    key_id: int


class Verifier:
    def __init__(self, rings: Mapping[str, KeyRing], *, window: float = WINDOW,
                 wall: Callable[[], float] = time.time,
                 nonces: NonceCache | None = None) -> None:
        self.rings = dict(rings)
        self.window = window
        self.wall = wall
        self.nonces = nonces if nonces is not None else NonceCache(window)

    def verify(self, method: str, path: str, headers: Mapping[str, str],
               body: bytes) -> Verified:
        """``headers`` with lower-case names.  Raises AuthError or NonceCacheFull."""
        try:
            kid_text = headers[H_KEY_ID]
            ts_text = headers[H_TIMESTAMP]
            nonce = headers[H_NONCE]
            sig = headers[H_SIGNATURE].lower()
        except KeyError as exc:
            raise AuthError(f"missing header {exc.args[0]}") from None
        if not kid_text.isdigit() or len(kid_text) > 3:
            raise AuthError(f"bad key id {kid_text[:20]!r}")
        kid = int(kid_text)
        if not _NONCE_RE.match(nonce):
            raise AuthError("nonce is not 32 lower-case hex digits")
        if not _SIG_RE.match(sig):
            raise AuthError("signature is not 64 hex digits")
        try:
            ts = float(ts_text)
        except ValueError:
            raise AuthError("timestamp is not a number") from None
        if ts != ts:  # NaN
            raise AuthError("timestamp is not a number")
        sender: str | None = None
        for name, ring in self.rings.items():
            key = ring.get(kid)
            if key is None:
                continue
            if hmac.compare_digest(mac(key, method, path, ts_text, nonce, body), sig):
                sender = name
                break
        if sender is None:
            if not any(ring.get(kid) is not None for ring in self.rings.values()):
                raise AuthError(f"unknown key id {kid}")
            raise AuthError(f"bad signature (key id {kid})")
        now = self.wall()
        if abs(now - ts) > self.window:
            raise AuthError(f"timestamp {now - ts:+.1f}s off (more than {self.window:g}s)")
        if not self.nonces.check_and_add(sender, nonce, now):
            raise AuthError(f"replayed nonce from {sender}")
        return Verified(sender=sender, key_id=kid)
