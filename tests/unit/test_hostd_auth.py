"""guardian.hostd request signatures: good, bad MAC, key ids, replay, clock skew."""

from __future__ import annotations

import pytest

from guardian.hostd import AuthError, NonceCache, Verifier, sign
from guardian.hostd._auth import NonceCacheFull
from ipfailover._wire import KeyRing

K1 = bytes(range(32))
K2 = bytes(range(32, 64))
PATH = "/v1/escalations"
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def lower(h: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in h.items()}


@pytest.fixture
def verifier() -> tuple[Verifier, Clock]:
    clock = Clock()
    rings = {"web1": KeyRing({1: K1}), "web2": KeyRing({1: K2, 7: K2})}
    return Verifier(rings, wall=clock), clock


def test_good_signature_names_sender(verifier: tuple[Verifier, Clock]) -> None:
    v, _ = verifier
    body = b'{"x": 1}'
    assert v.verify("POST", PATH, lower(sign(1, K1, "POST", PATH, body, now=NOW)),
                    body).sender == "web1"
    # same key id, other VM's key: the key names the sender
    assert v.verify("POST", PATH, lower(sign(1, K2, "POST", PATH, body, now=NOW)),
                    body).sender == "web2"
    got = v.verify("GET", PATH + "/abc", lower(sign(7, K2, "GET", PATH + "/abc", now=NOW)), b"")
    assert got.sender == "web2" and got.key_id == 7


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda h, b: (h | {"x-guardian-signature": "0" * 64}, b), "bad signature"),
        (lambda h, b: (h, b + b" "), "bad signature"),
        (lambda h, b: (h | {"x-guardian-key-id": "9"}, b), "unknown key id"),
        (lambda h, b: (h | {"x-guardian-key-id": "x"}, b), "bad key id"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "x-guardian-nonce"}, b), "missing"),
        (lambda h, b: (h | {"x-guardian-nonce": "zz"}, b), "nonce"),
        (lambda h, b: (h | {"x-guardian-timestamp": str(NOW + 1)}, b), "bad signature"),
    ],
)
def test_refused(verifier: tuple[Verifier, Clock], mutate: object, why: str) -> None:
    v, _ = verifier
    body = b"{}"
    h, b = mutate(lower(sign(1, K1, "POST", PATH, body, now=NOW)), body)  # type: ignore[operator]
    with pytest.raises(AuthError, match=why):
        v.verify("POST", PATH, h, b)


def test_mac_covers_method_and_path(verifier: tuple[Verifier, Clock]) -> None:
    v, _ = verifier
    h = lower(sign(1, K1, "GET", PATH + "/a", now=NOW))
    with pytest.raises(AuthError):
        v.verify("GET", PATH + "/b", h, b"")
    with pytest.raises(AuthError):
        v.verify("POST", PATH + "/a", h, b"")


@pytest.mark.parametrize("skew", [61.0, -61.0, 3600.0])
def test_old_or_future_timestamp(verifier: tuple[Verifier, Clock], skew: float) -> None:
    v, _ = verifier
    h = lower(sign(1, K1, "POST", PATH, b"{}", now=NOW - skew))
    with pytest.raises(AuthError, match="off"):
        v.verify("POST", PATH, h, b"{}")


def test_within_window_ok(verifier: tuple[Verifier, Clock]) -> None:
    v, _ = verifier
    h = lower(sign(1, K1, "POST", PATH, b"{}", now=NOW - 59))
    assert v.verify("POST", PATH, h, b"{}").sender == "web1"


def test_replayed_nonce(verifier: tuple[Verifier, Clock]) -> None:
    v, clock = verifier
    h = lower(sign(1, K1, "POST", PATH, b"{}", now=NOW))
    v.verify("POST", PATH, h, b"{}")
    clock.now += 30
    with pytest.raises(AuthError, match="replayed"):
        v.verify("POST", PATH, h, b"{}")
    clock.now += 100  # the nonce is forgotten, but the timestamp is too old by now
    with pytest.raises(AuthError, match="off"):
        v.verify("POST", PATH, h, b"{}")


def test_nonce_cache_bounded() -> None:
    cache = NonceCache(window=60, capacity=3)
    for i in range(3):
        assert cache.check_and_add("a", f"{i}", 0.0)
    with pytest.raises(NonceCacheFull):
        cache.check_and_add("a", "x", 1.0)
    assert cache.check_and_add("a", "x", 121.0)  # the old ones expired
    assert len(cache) == 1
    assert not cache.check_and_add("a", "x", 122.0)
    assert cache.check_and_add("b", "x", 122.0)  # per sender
