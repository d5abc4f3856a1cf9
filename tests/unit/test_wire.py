"""The failover wire format: round trip, MAC, keys, freshness, drops, fuzz, key files."""

from __future__ import annotations

import ipaddress
import os
import random
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from ipfailover._states import PairState
from ipfailover._wire import (
    MAC_SIZE,
    MAX_CLIENTS,
    MAX_SIZE,
    MIN_SIZE,
    Body,
    Drop,
    DropCounters,
    DropReason,
    Endpoint,
    Flags,
    Generation,
    GenerationError,
    KeyFileError,
    KeyRing,
    Message,
    MsgType,
    ReplayGuard,
    decode,
    encode,
    mac_bytes,
)

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
RING = KeyRing({1: K1})
D = DropReason


def message(**kw: object) -> Message:
    base = Message(
        type=MsgType.HEARTBEAT, group="web", node="vm02", generation=7, seq=1,
        boot_id=b"\x01\x02\x03\x04\x05\x06\x07\x08", state=PairState.MASTER, priority=150,
        flags=Flags.PING_USED | Flags.PING_OK, interval_ms=100, nonce=0,
        vips=(ipaddress.ip_address("192.0.2.100"), ipaddress.ip_address("2001:db8::100")),
        peer_generation=3, peer_seqs=(41, 0), reason="all checks passing")
    return replace(base, **kw)  # type: ignore[arg-type]


def dropped(data: bytes, ring: KeyRing = RING, group: str | None = "web") -> DropReason:
    with pytest.raises(Drop) as info:
        decode(data, ring, group=group)
    return info.value.reason


# ---------------------------------------------------------------- format


def test_round_trip_keeps_every_field() -> None:
    msg = message()
    out = decode(encode(msg, RING), RING, group="web")
    assert out == replace(msg, key_id=1)
    assert out.interval == pytest.approx(0.1)


@pytest.mark.parametrize("mtype", list(MsgType))
@pytest.mark.parametrize("state", list(PairState))
def test_every_type_and_state_round_trips(mtype: MsgType, state: PairState) -> None:
    msg = message(type=mtype, state=state, nonce=2**64 - 1, vips=(), peer_seqs=())
    assert decode(encode(msg, RING), RING) == replace(msg, key_id=1)


def test_largest_message_fits_the_bound() -> None:
    msg = message(group="g" * 32, node="n" * 64, reason="r" * 200,
                  vips=tuple(ipaddress.ip_address(f"2001:db8::{i}") for i in range(8)),
                  peer_seqs=(2**64 - 1,) * 8, seq=2**64 - 1, generation=2**64 - 1)
    data = encode(msg, RING)
    assert len(data) <= MAX_SIZE
    assert decode(data, RING).reason == "r" * 64          # clipped to the bound


def clients_v4_v6(n: int = MAX_CLIENTS) -> tuple[tuple[ipaddress.IPv4Address
                                                        | ipaddress.IPv6Address, str], ...]:
    out: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str]] = []
    for i in range(n):
        ip = (ipaddress.ip_address(f"192.0.2.{10 + i}") if i % 2
              else ipaddress.ip_address(f"2001:db8::{10 + i:x}"))
        out.append((ip, f"02:00:5e:00:{i:02x}:ff"))
    return tuple(out)


def test_clients_round_trip_ipv4_and_ipv6() -> None:
    msg = message(type=MsgType.CLIENTS, clients=clients_v4_v6())
    out = decode(encode(msg, RING), RING, group="web")
    assert out == replace(msg, key_id=1)
    assert out.clients[1] == (ipaddress.ip_address("192.0.2.11"), "02:00:5e:00:01:ff")
    assert out.clients[0][0] == ipaddress.ip_address("2001:db8::a")
    # upper case and dashes are normalised to lower-case colons
    msg = message(type=MsgType.CLIENTS,
                  clients=((ipaddress.ip_address("192.0.2.7"), "02-AA-BB-CC-DD-EE"),))
    assert decode(encode(msg, RING), RING).clients == (
        (ipaddress.ip_address("192.0.2.7"), "02:aa:bb:cc:dd:ee"),)
    assert mac_bytes("02:aa:bb:cc:dd:ee") == bytes.fromhex("02aabbccddee")


def test_largest_clients_message_fits_the_bound() -> None:
    msg = message(type=MsgType.CLIENTS, group="g" * 32, node="n" * 64, reason="r" * 64,
                  vips=tuple(ipaddress.ip_address(f"2001:db8::{i}") for i in range(8)),
                  peer_seqs=(2**64 - 1,) * 8,
                  clients=tuple((ipaddress.ip_address(f"2001:db8::1:{i:x}"),
                                 "ff:ff:ff:ff:ff:ff") for i in range(MAX_CLIENTS)))
    data = encode(msg, RING)
    assert len(data) == 820 <= MAX_SIZE
    assert len(decode(data, RING).clients) == MAX_CLIENTS


def test_clients_section_garbage_is_dropped() -> None:
    import hashlib
    import hmac

    good = encode(message(type=MsgType.CLIENTS, vips=(), peer_seqs=(),
                          clients=clients_v4_v6(1)), RING)
    body = good[:-MAC_SIZE]
    start = len(body) - (1 + 1 + 16 + 6)              # the client count byte

    def signed(b: bytes) -> bytes:
        return b + hmac.new(K1, b, hashlib.sha256).digest()

    assert dropped(signed(body[:start] + bytes([MAX_CLIENTS + 1]) + body[start + 1:])) \
        is D.GARBAGE                                   # too many
    assert dropped(signed(body[:start + 1] + b"\x05" + body[start + 2:])) is D.GARBAGE
    assert dropped(signed(body[:start] + b"\x02" + body[start + 1:])) is D.TRUNCATED
    assert dropped(signed(body[:-1])) is D.TRUNCATED   # MAC address cut short
    assert dropped(signed(body + b"\x00")) is D.GARBAGE  # stray byte


def test_fuzz_clients_messages_only_ever_drop() -> None:
    """Mangled CLIENTS packets are dropped; signed ones with random client sections
    either decode or raise Drop, never anything else."""
    import hashlib
    import hmac

    rng = random.Random(20261126)
    good = encode(message(type=MsgType.CLIENTS, clients=clients_v4_v6()), RING)
    for n in range(len(good)):
        with pytest.raises(Drop):
            decode(good[:n], RING, group="web")
    for i in range(len(good) * 8):
        flipped = bytearray(good)
        flipped[i // 8] ^= 1 << (i % 8)
        with pytest.raises(Drop):
            decode(bytes(flipped), RING, group="web")
    head = encode(message(type=MsgType.CLIENTS, clients=()), RING)[:-MAC_SIZE - 1]
    decoded = 0
    for _ in range(3000):
        tail = bytes([rng.randrange(0, MAX_CLIENTS + 3)])
        for _ in range(rng.randrange(0, 20)):
            fam = rng.choice((4, 6, 4, 6, rng.getrandbits(8)))
            size = {4: 4, 6: 16}.get(fam, 8) + rng.choice((6, 6, 6, 5, 7))
            tail += bytes([fam]) + bytes(rng.getrandbits(8) for _ in range(size))
        body = head + tail
        data = body + hmac.new(K1, body, hashlib.sha256).digest()
        try:
            decode(data, RING, group="web")
            decoded += 1
        except Drop:
            pass
    assert decoded > 0


def test_reason_is_clipped_on_a_character_boundary() -> None:
    data = encode(message(reason="é" * 40), RING)          # 80 bytes of UTF-8
    assert decode(data, RING).reason == "é" * 32


@pytest.mark.parametrize("bad", [
    {"group": ""}, {"group": "g" * 33}, {"node": "n" * 65}, {"priority": 256},
    {"interval_ms": 0}, {"boot_id": b"short"}, {"seq": -1}, {"seq": 2**64},
    {"vips": tuple(ipaddress.ip_address(f"192.0.2.{i}") for i in range(9))},
    {"peer_seqs": (1,) * 9},
    {"clients": tuple((ipaddress.ip_address(f"192.0.2.{i}"), "02:00:00:00:00:01")
                      for i in range(MAX_CLIENTS + 1))},
    {"clients": ((ipaddress.ip_address("192.0.2.1"), "02:00:00:00:01"),)},
    {"clients": ((ipaddress.ip_address("192.0.2.1"), "not a mac"),)},
])
def test_encode_refuses_out_of_bounds_fields(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        encode(message(**bad), RING)


def test_unknown_flag_bits_are_ignored_for_newer_senders() -> None:
    # craft a packet with an unknown flag bit and a correct MAC
    import hashlib
    import hmac
    data = bytearray(encode(message(flags=Flags.NONE), RING)[:-32])
    data[9] |= 0x80
    data += hmac.new(K1, bytes(data), hashlib.sha256).digest()
    assert decode(bytes(data), RING).flags == Flags.NONE


# ---------------------------------------------------------------- authentication


def test_bad_mac_wrong_secret_same_key_id() -> None:
    other = KeyRing({1: K2})
    assert dropped(encode(message(), other)) is D.BAD_MAC


def test_unknown_key_id() -> None:
    assert dropped(encode(message(), KeyRing({9: K2}))) is D.UNKNOWN_KEY


def test_wrong_group_is_named_before_the_mac() -> None:
    data = encode(message(group="mail"), KeyRing({1: K2}))
    assert dropped(data) is D.WRONG_GROUP
    assert decode(encode(message(group="mail"), RING), RING).group == "mail"   # group=None


def test_key_rotation_without_a_gap() -> None:
    old = KeyRing({1: K1})
    both_old_sends = KeyRing({1: K1, 2: K2}, send_id=1)
    both_new_sends = KeyRing({1: K1, 2: K2}, send_id=2)
    new = KeyRing({2: K2})
    # step 1: node A accepts both while B still only knows the old key
    assert decode(encode(message(), old), both_old_sends).key_id == 1
    assert decode(encode(message(), both_old_sends), old).key_id == 1
    # step 2: A signs with the new key; B (with both) accepts it
    assert decode(encode(message(), both_new_sends), both_old_sends).key_id == 2
    # step 3: the old key is gone; new-only still talks to both-with-new-send
    assert decode(encode(message(), new), both_new_sends).key_id == 2
    assert dropped(encode(message(), old), new) is D.UNKNOWN_KEY


def test_keyring_refuses_short_keys_and_bad_ids() -> None:
    with pytest.raises(KeyFileError, match="at least 16"):
        KeyRing({1: b"short"})
    with pytest.raises(KeyFileError, match="1..255"):
        KeyRing({0: K1})
    with pytest.raises(KeyFileError, match="not in the ring"):
        KeyRing({1: K1}, send_id=2)
    assert "K1" not in repr(KeyRing({1: K1})) and K1.hex() not in repr(KeyRing({1: K1}))


# ---------------------------------------------------------------- malformed input


def test_truncated_and_garbage() -> None:
    good = encode(message(), RING)
    assert dropped(b"") is D.TRUNCATED
    assert dropped(b"GD") is D.TRUNCATED
    assert dropped(b"HTTP/1.1 200 OK\r\n" * 3) is D.GARBAGE
    assert dropped(good[:MIN_SIZE - 1]) is D.TRUNCATED
    assert dropped(good[:4] + b"\x02" + good[5:]) is D.GARBAGE          # version 2
    assert dropped(good + b"\x00" * (MAX_SIZE + 1 - len(good))) is D.GARBAGE  # oversized
    assert dropped(good[:5] + b"\x63" + good[6:]) is D.GARBAGE          # type 99


def test_fuzz_random_bytes_truncations_and_bit_flips_only_ever_drop() -> None:
    rng = random.Random(20240611)
    good = encode(message(), RING)
    seen: DropCounters = DropCounters()

    def must_drop(data: bytes) -> None:
        try:
            decode(data, RING, group="web")
        except Drop as drop:
            seen[drop.reason] += 1
        else:
            raise AssertionError(f"accepted a mangled packet: {data.hex()}")

    for n in range(len(good)):                         # every truncation
        must_drop(good[:n])
    for i in range(len(good) * 8):                     # every single-bit flip
        flipped = bytearray(good)
        flipped[i // 8] ^= 1 << (i % 8)
        must_drop(bytes(flipped))
    for _ in range(3000):                              # random bytes, some with our magic
        size = rng.randrange(0, MAX_SIZE + 20)
        data = bytes(rng.getrandbits(8) for _ in range(size))
        if rng.random() < 0.5 and size >= 5:
            data = b"GDFO\x01" + data[5:]
        must_drop(data)
    for _ in range(2000):                              # random splices of a good packet
        i, j = sorted(rng.sample(range(len(good) + 1), 2))
        junk = bytes(rng.getrandbits(8) for _ in range(j - i))
        if junk != good[i:j]:
            must_drop(good[:i] + junk + good[j:])
    assert {D.TRUNCATED, D.GARBAGE, D.BAD_MAC} <= set(seen)


# ---------------------------------------------------------------- freshness


def test_replay_guard_order_window_and_generations() -> None:
    g = ReplayGuard(window=8)
    m = message()
    g.check(replace(m, seq=10))
    g.check(replace(m, seq=12))
    with pytest.raises(Drop) as info:
        g.check(replace(m, seq=12))                                # exact replay
    assert info.value.reason is D.REPLAY
    with pytest.raises(Drop) as info:
        g.check(replace(m, seq=11))                                # late, unseen: reordered
    assert info.value.reason is D.REORDERED
    with pytest.raises(Drop) as info:
        g.check(replace(m, seq=11))                                # ... and only once
    assert info.value.reason is D.REPLAY
    with pytest.raises(Drop) as info:
        g.check(replace(m, seq=2))                                 # below the window
    assert info.value.reason is D.REPLAY
    g.check(replace(m, generation=8, seq=1))                       # the sender restarted
    with pytest.raises(Drop) as info:
        g.check(replace(m, generation=7, seq=99))                  # the older run replayed
    assert info.value.reason is D.STALE
    assert g.generations() == {"vm02": 8}
    assert g.last("vm02") == (8, 1)


def test_replay_guard_accepting_reordered_packets_still_refuses_duplicates() -> None:
    g = ReplayGuard(window=8, accept_reordered=True)
    m = message()
    g.check(replace(m, seq=5))
    g.check(replace(m, seq=7))
    g.check(replace(m, seq=6))
    with pytest.raises(Drop):
        g.check(replace(m, seq=6))
    g.check(replace(m, seq=1000))                                  # big jump forward is fine
    with pytest.raises(Drop):
        g.check(replace(m, seq=7))


def test_replay_guard_remembers_generations_across_our_restart() -> None:
    g = ReplayGuard(known={"vm02": 7})
    with pytest.raises(Drop) as info:
        g.check(replace(message(), generation=6))
    assert info.value.reason is D.STALE
    g.check(replace(message(), generation=7, seq=3))


def pair(**kw: object) -> tuple[Endpoint, Endpoint]:
    a = Endpoint(RING, "web", "vm01", 5, boot_id=b"A" * 8, paths=2, **kw)  # type: ignore[arg-type]
    b = Endpoint(RING, "web", "vm02", 9, boot_id=b"B" * 8, paths=2, **kw)  # type: ignore[arg-type]
    return a, b


BODY = Body(MsgType.HEARTBEAT, PairState.MASTER, 150, Flags.NONE, 100)


def test_endpoint_round_trip_counts_drops_and_carries_the_view() -> None:
    a, b = pair()
    p1 = a.seal(BODY, path=0, vips=["192.0.2.100"], now=1.0)
    p2 = a.seal(BODY, path=1, now=1.0)
    got = b.open(p1, path=0)
    assert got is not None and got.seq == 1 and got.vips == (
        ipaddress.ip_address("192.0.2.100"),)
    assert b.open(p1, path=1) is None                       # replayed on the other path
    assert b.open(p2, path=1) is not None
    reply = b.seal(BODY, path=0, now=1.01)
    back = a.open(reply, path=0)
    assert back is not None
    assert back.peer_generation == 5 and back.peer_seqs == (1, 2)
    # the peer got our seq 2 on path 1, which we sent at t=1.0
    assert a.heard_age(1, back.peer_seqs[1], now=1.5) == pytest.approx(0.5)
    assert a.heard_age(1, 0, now=1.5) is None
    assert b.open(a.seal(BODY, now=2.0)[:-1]) is None       # truncated
    assert b.open(b"\x00" * 40) is None                      # garbage
    assert b.open(b.seal(BODY)) is None                      # our own packet looped back
    assert b.drops.as_dict() == {"garbage": 1, "own-name": 1, "replay": 1, "truncated": 1}
    assert "own-name" in str(b.last_drop) and "looped back" in str(b.last_drop)
    status = b.status()
    assert status["drops"] == b.drops.as_dict()
    assert status["peer_generations"] == {"vm01": 5}


def test_endpoint_forged_and_foreign_packets() -> None:
    a, b = pair()
    b.peer = "vm01"
    forged = Endpoint(KeyRing({1: K2}), "web", "vm01", 99)
    assert b.open(forged.seal(BODY)) is None
    third = Endpoint(RING, "web", "vm03", 1)
    assert b.open(third.seal(BODY)) is None
    other_pair = Endpoint(RING, "mail", "vm01", 1)
    assert b.open(other_pair.seal(BODY)) is None
    assert b.drops.as_dict() == {"bad-mac": 1, "foreign-node": 1, "wrong-group": 1}
    assert b.open(a.seal(BODY)) is not None


def test_endpoint_restart_of_the_peer_resets_the_view() -> None:
    a, b = pair()
    for _ in range(3):
        assert b.open(a.seal(BODY)) is not None
    a2 = Endpoint(RING, "web", "vm01", 6, paths=2)
    assert b.open(a2.seal(BODY)) is not None
    msg = a.open(b.seal(BODY))
    assert msg is not None and msg.peer_generation == 6 and msg.peer_seqs == (1, 0)
    assert b.open(a.seal(BODY)) is None                       # the old run is stale now
    assert b.drops[D.STALE] == 1


# ---------------------------------------------------------------- key files


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_key_file_format(tmp_path: Path) -> None:
    f = write(tmp_path / "keys", f"""# pair keys
1 {K1.hex()}
2 {K2.hex().upper()} send   # the new one
""")
    ring = KeyRing.load(f)
    assert ring.ids == (1, 2) and ring.send_id == 2 and ring.get(1) == K1
    f2 = write(tmp_path / "keys2", f"7 {K1.hex()}\n9 {K2.hex()}\n")
    assert KeyRing.load(f2).send_id == 7


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o660, 0o644, 0o602])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    f = write(tmp_path / "keys", f"1 {K1.hex()}\n", mode)
    with pytest.raises(KeyFileError) as info:
        KeyRing.load(f)
    assert str(f) in str(info.value) and f"{mode:04o}" in str(info.value)
    assert "chmod 600" in str(info.value)


@pytest.mark.parametrize("text, match", [
    ("", "no keys"),
    ("# only a comment\n", "no keys"),
    ("1 00112233\n", ":1: key 1 is 4 bytes, at least 16"),
    (f"1 {K1.hex()}\nx {K2.hex()}\n", ":2: key id 'x' is not a number"),
    (f"0 {K1.hex()}\n", "not in 1..255"),
    (f"1 {K1.hex()}\n1 {K2.hex()}\n", "listed twice"),
    (f"1 {K1.hex()} send\n2 {K2.hex()} send\n", "more than one key marked 'send'"),
    ("1 zzzz\n", "not hex"),
    (f"1 {K1.hex()} extra\n", "expected 'ID SECRET \\[send\\]'"),
])
def test_key_file_errors_name_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    f = write(tmp_path / "keys", text)
    with pytest.raises(KeyFileError, match=match) as info:
        KeyRing.load(f)
    assert str(info.value).startswith(str(f))


def test_key_file_missing_symlink_or_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot open"):
        KeyRing.load(tmp_path / "nope")
    real = write(tmp_path / "real", f"1 {K1.hex()}\n")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(KeyFileError, match="symbolic link"):
        KeyRing.load(tmp_path / "link")
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        KeyRing.load(d)


# ---------------------------------------------------------------- generation


def test_generation_advances_atomically(tmp_path: Path) -> None:
    g = Generation(tmp_path / "state")
    assert g.read() == 0
    assert g.advance() == 1
    assert g.advance() == 2
    assert Generation(tmp_path / "state").read() == 2
    assert g.advance(floor=1_700_000_000) == 1_700_000_000      # lost state dir: clock floor
    assert g.advance(floor=5) == 1_700_000_001                  # never goes back
    assert stat.S_IMODE(os.stat(g.path).st_mode) == 0o600
    assert [p.name for p in g.directory.iterdir()] == ["generation"]   # no temp left


def test_generation_refuses_a_corrupt_file(tmp_path: Path) -> None:
    g = Generation(tmp_path)
    g.path.write_text("seven\n")
    with pytest.raises(GenerationError, match=str(g.path)):
        g.advance()
