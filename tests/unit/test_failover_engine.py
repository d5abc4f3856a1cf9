"""The pair engine on loopback: two engines (vm01 on 127.0.0.1, vm02 on 127.0.0.2), real
UDP sockets and the real wire, a hand-written fake kernel for the VIPs that records
every operation and checks that no two nodes ever hold the VIP at once."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from ipfailover._engine import PairEngine
from ipfailover._settings import GroupSettings, PathSettings
from ipfailover._states import PairState
from ipfailover._vip import VipSpec
from ipfailover._wire import Body, Endpoint, KeyRing, MsgType

KEY = "1 " + "ab" * 32 + "\n"
VIP = ipaddress.ip_interface("192.0.2.100/24")
A = ipaddress.ip_address("127.0.0.1")
B = ipaddress.ip_address("127.0.0.2")


@dataclass
class FakeLan:
    """Who holds which VIP, and every operation in order."""

    holders: dict[str, set[str]] = field(default_factory=dict)
    ops: list[tuple[float, str, str, str]] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)
    #: probes of ``FakeVipOps.converged`` that fail before the observer is convinced
    unconvinced: int = 0
    #: node -> what its neighbour table lists as recent clients (``FakeVipOps.clients``)
    clients: dict[str, list[tuple[Any, str]]] = field(default_factory=dict)
    #: node -> the client lists passed to ``unicast_announce``
    unicast: dict[str, list[list[tuple[Any, str]]]] = field(default_factory=dict)

    def record(self, node: str, op: str, ip: str) -> None:
        self.ops.append((time.monotonic(), node, op, ip))


class FakeVipOps:
    """``ipfailover._engine.VipOps`` against a FakeLan (a hand-written fake, no mocks)."""

    def __init__(self, node: str, lan: FakeLan, *, fatal: str | None = None,
                 fail_add: bool = False) -> None:
        self.node = node
        self.lan = lan
        self.fatal = fatal
        self.fail_add = fail_add
        self.announced = 0

    def load(self) -> None:
        pass

    def preflight(self, specs: Sequence[VipSpec]) -> list[tuple[bool, str]]:
        return [(True, self.fatal)] if self.fatal else [(False, "just a warning")]

    def prepare(self, spec: VipSpec) -> None:
        pass

    def _held(self, spec: VipSpec) -> set[str]:
        return self.lan.holders.setdefault(str(spec.address), set())

    def present(self, specs: Sequence[VipSpec]) -> list[VipSpec]:
        return [s for s in specs if self.node in self._held(s)]

    def add(self, spec: VipSpec) -> int:
        if self.fail_add:
            raise OSError("no such device")
        held = self._held(spec)
        if held - {self.node}:
            self.lan.overlaps.append(f"{self.node} added {spec.address} held by {held}")
        held.add(self.node)
        self.lan.record(self.node, "add", str(spec.address))
        return spec.lifetime

    def renew(self, spec: VipSpec) -> int | None:
        if self.node not in self._held(spec):
            return None
        self.lan.record(self.node, "renew", str(spec.address))
        return spec.lifetime

    def remove(self, spec: VipSpec) -> bool:
        held = self._held(spec)
        was = self.node in held
        held.discard(self.node)
        self.lan.record(self.node, "remove", str(spec.address))
        return was

    def announce(self, spec: VipSpec) -> None:
        self.announced += 1
        self.lan.record(self.node, "announce", str(spec.address))

    def carrier(self, interface: str) -> bool | None:
        return True

    def clients(self, specs: Sequence[VipSpec]) -> list[tuple[Any, str]]:
        return list(self.lan.clients.get(self.node, []))

    def unicast_announce(self, spec: VipSpec, clients: Sequence[tuple[Any, str]]) -> int:
        self.lan.record(self.node, "unicast", str(spec.address))
        self.lan.unicast.setdefault(self.node, []).append(list(clients))
        return len(clients)

    def converged(self, spec: VipSpec, observer: Any, timeout: float) -> bool:
        """An observer on the fake LAN: convinced once this node holds the VIP and
        ``lan.unconvinced`` probes have failed; a failed probe waits its timeout (a
        real one waits for an answer that never comes), on the address thread."""
        self.lan.record(self.node, "probe", f"{observer}->{spec.address}")
        if self.lan.unconvinced > 0 or self.node not in self._held(spec):
            self.lan.unconvinced -= 1
            time.sleep(timeout)
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    path = tmp_path / "failover.key"
    path.write_text(KEY)
    path.chmod(0o600)
    return path


def settings(node: str, keyfile: Path, state: Path, port: int, **kw: Any) -> GroupSettings:
    me, other = (A, B) if node == "vm01" else (B, A)
    base = GroupSettings(
        group="web", node=node, peer="vm02" if node == "vm01" else "vm01", vips=(VIP,),
        paths=(PathSettings(me, other),), interface="lo",
        priority=150 if node == "vm01" else 100, port=port, key_file=str(keyfile),
        state_dir=str(state / node), interval=0.05, init_dead=0.3, announce_count=2,
        announce_interval=0.02, notify_timeout=5.0,
    )
    return replace(base, **kw)


class Pair:
    def __init__(self, tmp: Path, keyfile: Path, **kw: Any) -> None:
        self.lan = FakeLan()
        port = free_port()
        self.s1 = settings("vm01", keyfile, tmp, port, **kw)
        self.s2 = settings("vm02", keyfile, tmp, port, **kw)
        self.e1 = PairEngine(self.s1, ops=FakeVipOps("vm01", self.lan), netlink=False)
        self.e2 = PairEngine(self.s2, ops=FakeVipOps("vm02", self.lan), netlink=False)
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, *engines: PairEngine) -> None:
        for e in engines or (self.e1, self.e2):
            self.tasks.append(asyncio.get_running_loop().create_task(e.run()))

    def holders(self) -> set[str]:
        return self.lan.holders.get(str(VIP.ip), set())

    async def settled(self) -> None:
        """Wait for the steady state: vm01 master holding the VIP, vm02 backup."""
        await until(lambda: state(self.e1) == "master" and self.holders() == {"vm01"}
                    and state(self.e2) == "backup", 5, "vm01 master holding, vm02 backup")

    async def close(self) -> None:
        for e in (self.e1, self.e2):
            await e.shutdown(timeout=3)
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def until(pred: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 30))


def state(e: PairEngine) -> str:
    return str(e.status()["state"])


# ---------------------------------------------------------------- tests
def test_master_backup_then_graceful_stop_moves_vip(tmp_path: Path, keyfile: Path) -> None:
    async def body() -> None:
        p = Pair(tmp_path, keyfile)
        p.start()
        try:
            await p.settled()
            await until(lambda: p.holders() == {"vm01"}, 1, "vm01 holding")
            await until(lambda: p.e1.status()["vips_held"] == ["192.0.2.100/24"], 1,
                        "the engine knows it holds it")
            st = p.e1.status()
            assert st["peer"]["name"] == "vm02" and st["peer"]["state"] == "backup"
            assert st["paths"][0]["heard_age"] is not None
            await until(lambda: p.e1.status()["paths"][0]["peer_heard_us_age"] is not None,
                        1, "peer view")
            # the peer sees the VIP in vm01's heartbeats
            await until(lambda: p.e2.status()["peer"]["vips"] == ["192.0.2.100"], 1,
                        "vm02 sees the VIP listed")
            t0 = time.monotonic()
            await p.e1.shutdown("test stop")
            took = await until(lambda: p.holders() == {"vm02"}, 2, "vm02 holding")
            assert state(p.e2) == "master"
            assert "stopped" in state(p.e1)
            assert took < 0.1, took  # the goodbye: no detection delay
            assert time.monotonic() - t0 < 1
            # release before the peer's add
            ops = [(n, op) for _, n, op, _ in p.lan.ops if op in ("add", "remove")]
            assert ops.index(("vm01", "remove")) < ops.index(("vm02", "add")), ops
            assert p.lan.overlaps == []
            assert (tmp_path / "vm01/failover/web/generation").exists()
        finally:
            await p.close()

    run(body)


def test_silent_master_is_detected_and_replaced(tmp_path: Path, keyfile: Path) -> None:
    async def body() -> None:
        p = Pair(tmp_path, keyfile)
        p.start()
        try:
            await p.settled()
            # vm01's engine dies without a word (its kernel keeps the VIP: the lease)
            p.tasks[0].cancel()
            t0 = time.monotonic()
            await until(lambda: state(p.e2) == "master", 2, "vm02 master")
            took = time.monotonic() - t0
            assert 0.05 < took < 0.6, took
            assert p.e2.status()["counters"]["takeovers"] == 1
            assert "peer declared dead" in p.e2.status()["reason"]
        finally:
            p.lan.holders.clear()
            await p.close()

    run(body)


def test_garbage_and_forgeries_are_counted_and_ignored(tmp_path: Path, keyfile: Path) -> None:
    async def body() -> None:
        p = Pair(tmp_path, keyfile)
        p.start()
        try:
            await p.settled()
            since = p.e2.status()["since_age"]
            forger = Endpoint(KeyRing.parse("1 " + "cd" * 32), "web", "vm01", 2**40)
            evil = Endpoint(KeyRing.parse(KEY), "web", "mallory", 2**40)
            body_ = Body(MsgType.GOODBYE, PairState.STOPPED, 255)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.3", 0))
                dst = ("127.0.0.2", p.s2.port)
                for pkt in (b"", b"GDFO", b"x" * 600, b"GDFO\x01" + os.urandom(100),
                            forger.seal(body_), evil.seal(body_)):
                    s.sendto(pkt, dst)
            await until(lambda: sum(p.e2.status()["drops"].values()) >= 6, 2, "drops")
            drops = p.e2.status()["drops"]
            assert drops.get("bad-mac") == 1 and drops.get("foreign-node") == 1, drops
            assert drops.get("garbage", 0) + drops.get("truncated", 0) == 4, drops
            await asyncio.sleep(0.3)
            st = p.e2.status()
            assert st["state"] == "backup" and st["since_age"] > since
            assert p.holders() == {"vm01"}
        finally:
            await p.close()

    run(body)


def test_tracked_service_failure_yields_and_recovery_returns(tmp_path: Path,
                                                             keyfile: Path) -> None:
    async def body() -> None:
        out = tmp_path / "notify.log"
        hook = ("/bin/sh", "-c", "echo $GUARDIAN_FAILOVER_NODE "
                "$GUARDIAN_FAILOVER_OLD_STATE-$GUARDIAN_FAILOVER_STATE "
                f"$GUARDIAN_FAILOVER_VIPS $GUARDIAN_FAILOVER_PEER >> {out}")
        p = Pair(tmp_path, keyfile, services=("apache2",), notify=hook)
        p.start()
        try:
            await p.settled()
            p.e1.service_failed("apache2", "restart budget spent")
            await until(lambda: state(p.e2) == "master" and state(p.e1) == "fault", 1,
                        "vm01 fault, vm02 master")
            await until(lambda: p.holders() == {"vm02"}, 1, "on vm02")
            assert "apache2" in p.e1.status()["reason"]
            p.e1.service_recovered("apache2")
            await until(lambda: state(p.e1) == "backup", 1, "vm01 backup again")
            assert p.lan.overlaps == []
            await until(lambda: out.exists() and "fault-backup" in out.read_text(), 3,
                        "hooks")
            lines = [ln.split(" ", 1)[1] for ln in out.read_text().splitlines()
                     if ln.startswith("vm01 ")]
            assert lines == ["init-master 192.0.2.100/24 vm02",
                             "master-fault 192.0.2.100/24 vm02",
                             "fault-backup 192.0.2.100/24 vm02"], lines
        finally:
            await p.close()

    run(body)


def test_switchover_from_the_master(tmp_path: Path, keyfile: Path) -> None:
    async def body() -> None:
        p = Pair(tmp_path, keyfile)
        p.start()
        try:
            await until(lambda: state(p.e1) == "master" and state(p.e2) == "backup"
                        and p.e1.status()["peer"]["state"] == "backup", 5, "settled")
            ok, detail = await p.e1.switchover()
            assert ok, detail
            assert state(p.e2) == "master" and state(p.e1) == "backup"
            await until(lambda: p.holders() == {"vm02"}, 1, "on vm02")
            ok, detail = await p.e1.switchover()  # now a pull from the standby
            assert ok, detail
            await until(lambda: p.holders() == {"vm01"}, 1, "back on vm01")
            assert p.lan.overlaps == []
        finally:
            await p.close()

    run(body)


def test_leftover_vip_removed_when_not_master(tmp_path: Path, keyfile: Path) -> None:
    async def body() -> None:
        p = Pair(tmp_path, keyfile)
        p.start(p.e1)
        try:
            await until(lambda: state(p.e1) == "master", 5, "vm01 master")
            # vm02 starts with the VIP left on its interface from an earlier run
            p.lan.holders[str(VIP.ip)].add("vm02")
            p.start(p.e2)
            await until(lambda: state(p.e2) == "backup", 5, "vm02 backup")
            await until(lambda: p.holders() == {"vm01"}, 1, "leftover removed")
        finally:
            await p.close()

    run(body)


def test_refusals_name_the_problem(tmp_path: Path, keyfile: Path) -> None:
    async def body() -> None:
        lan = FakeLan()
        port = free_port()
        keyfile.chmod(0o644)
        e = PairEngine(settings("vm01", keyfile, tmp_path, port), ops=FakeVipOps("vm01", lan),
                       netlink=False)
        await e.run()
        assert e.error is not None and "chmod 600" in e.error
        assert e.status()["state"] == "refused"
        keyfile.chmod(0o600)
        e = PairEngine(settings("vm01", keyfile, tmp_path, port),
                       ops=FakeVipOps("vm01", lan, fatal="eth0: interface is down"),
                       netlink=False)
        await e.run()
        assert e.error == "preflight: eth0: interface is down"
        e = PairEngine(settings("vm01", keyfile, tmp_path, port,
                                paths=(PathSettings(ipaddress.ip_address("192.0.2.250"), B),)),
                       ops=FakeVipOps("vm01", lan), netlink=False)
        await e.run()
        assert e.error is not None and "cannot bind 192.0.2.250" in e.error
        assert lan.ops == []

    run(body)


def test_add_failure_goes_fault_and_peer_takes(tmp_path: Path, keyfile: Path) -> None:
    async def body() -> None:
        p = Pair(tmp_path, keyfile)
        assert isinstance(p.e1.ops, FakeVipOps)
        p.e1.ops.fail_add = True
        p.start()
        try:
            await until(lambda: state(p.e2) == "master", 5, "vm02 master")
            await until(lambda: state(p.e1) in ("fault", "backup"), 1, "vm01 yields")
            assert p.e1.status()["vip_errors"] >= 1
        finally:
            await p.close()

    run(body)


def test_key_rotation_by_reload_keeps_the_pair_talking(tmp_path: Path, keyfile: Path) -> None:
    async def body() -> None:
        p = Pair(tmp_path, keyfile)
        p.start()
        try:
            await p.settled()
            new = "2 " + "ef" * 32
            # step 1: both know the new key; step 2: both send with it; step 3: old gone
            for text in (KEY + new + "\n", KEY + new + " send\n", new + " send\n"):
                keyfile.write_text(text)
                assert p.e1.reload_keys() is None and p.e2.reload_keys() is None
                await asyncio.sleep(0.3)
                assert state(p.e1) == "master" and state(p.e2) == "backup"
            assert p.e1.status()["endpoint"]["keys"] == [2]
            assert p.e2.status()["drops"] == {}
            keyfile.write_text("garbage\n")
            assert "expected 'ID SECRET [send]'" in (p.e1.reload_keys() or "")
            assert p.e1.status()["endpoint"]["keys"] == [2]  # the old ring stays
        finally:
            await p.close()

    run(body)


def test_parse_netlink_link_and_address_events() -> None:
    import struct

    from ipfailover._engine import AddrEvent, LinkEvent, parse_netlink

    def attr(kind: int, payload: bytes) -> bytes:
        raw = struct.pack("=HH", 4 + len(payload), kind) + payload
        return raw + b"\0" * (-len(raw) % 4)

    def msg(mtype: int, body: bytes) -> bytes:
        return struct.pack("=IHHII", 16 + len(body), mtype, 0, 0, 0) + body

    link = msg(16, struct.pack("=BxHiII", 0, 1, 7, 0x10043, 0) + attr(3, b"eth0\0"))
    addr = msg(21, struct.pack("=BBBBI", 2, 24, 0, 0, 7) + attr(2, bytes([192, 0, 2, 100]))
               + attr(6, struct.pack("=IIII", 1, 2, 0, 0)))
    events = list(parse_netlink(link + addr + b"\x01\x02"))
    assert events == [LinkEvent(7, "eth0", True, False),
                      AddrEvent(7, ipaddress.ip_address("192.0.2.100"), 24, True, 2)]


@pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets need root")
def test_icmp_ping_loopback() -> None:
    from ipfailover._engine import icmp_ping

    assert icmp_ping("127.0.0.1", 1.0, 4242, 1)
    assert icmp_ping("::1", 1.0, 4242, 2)


class FakeHooks:
    """``ServiceHooks`` that records calls into the FakeLan's operation log."""

    def __init__(self, node: str, lan: FakeLan, *, up_after: float = 0.05) -> None:
        self.node = node
        self.lan = lan
        self.up_after = up_after
        self.started_at: float | None = None

    async def start_service(self, name: str, timeout: float) -> None:
        self.lan.record(self.node, "start", name)
        self.started_at = time.monotonic()

    async def stop_service(self, name: str, timeout: float) -> None:
        self.lan.record(self.node, "stop", name)
        self.started_at = None

    async def wait_service_up(self, name: str, timeout: float) -> bool:
        while self.started_at is None or time.monotonic() - self.started_at < self.up_after:
            await asyncio.sleep(0.005)
        self.lan.record(self.node, "up", name)
        return True


def test_cold_service_started_before_and_stopped_after_the_vip(tmp_path: Path,
                                                               keyfile: Path) -> None:
    async def body() -> None:
        p = Pair(tmp_path, keyfile, cold=("mysql",))
        for e, node in ((p.e1, "vm01"), (p.e2, "vm02")):
            e.services = FakeHooks(node, p.lan)
        p.start()
        try:
            await until(lambda: p.holders() == {"vm01"}, 5, "vm01 holding")
            await p.e1.shutdown("test")
            await until(lambda: p.holders() == {"vm02"}, 2, "vm02 holding")
            ops = [(n, op) for _, n, op, _ in p.lan.ops if op != "announce"]
            # vm02 became backup at start: its cold service is stopped (idempotent)
            assert ops.index(("vm02", "stop")) < ops.index(("vm01", "add"))
            v1 = [op for n, op in ops if n == "vm01"]
            assert v1 == ["start", "up", "add", "remove", "stop"], v1
            v2 = [op for n, op in ops if n == "vm02"]
            assert v2[-3:] == ["start", "up", "add"], v2
            lt = p.e2.status()["last_takeover"]
            assert lt["services_s"] >= 0.05, lt  # the gate waited for "up"
        finally:
            await p.close()

    run(body)


# ---------------------------------------------------------------- verified takeover
@dataclass
class RecordingObserver:
    """A FailoverObserver that keeps what it is told (guardian's timeline stands in)."""

    calls: list[tuple[str, float, Any]] = field(default_factory=list)

    def feed(self, actions: Sequence[Any], now: float) -> None:
        pass

    def vips_configured(self, now: float) -> None:
        self.calls.append(("vips_configured", now, None))

    def announced(self, now: float) -> None:
        self.calls.append(("announced", now, None))

    def converged(self, now: float, ok: bool, detail: str = "") -> None:
        self.calls.append(("converged", now, (ok, detail)))


OBSERVER = ipaddress.ip_address("192.0.2.1")


def test_verified_takeover_confirms_after_the_first_announcement(tmp_path: Path,
                                                                  keyfile: Path) -> None:
    from guardian.cli import format_failover

    async def body() -> None:
        p = Pair(tmp_path, keyfile, verify=(OBSERVER, ipaddress.ip_address("2001:db8::1")))
        assert [str(o) for _, o in p.e1.verify_pairs] == ["192.0.2.1"]  # no IPv6 VIP
        rec = RecordingObserver()
        p.e2.observer = rec
        p.start()
        try:
            await p.settled()
            await until(lambda: p.e1.status().get("last_convergence") is not None, 2,
                        "vm01's start-up takeover verified")
            assert p.e2.status().get("last_convergence") is None
            p.tasks[0].cancel()                              # vm01 dies silently
            p.lan.holders[str(VIP.ip)].discard("vm01")
            await until(lambda: p.e2.status().get("last_convergence") is not None, 3,
                        "vm02's takeover verified")
            lc = p.e2.status()["last_convergence"]
            assert lc["ok"] is True and lc["rounds"] == 1 and lc["reannounced"] == 0, lc
            assert lc["observers"] == ["192.0.2.1"]     # those with a VIP of their family
            assert lc["confirmed"] == ["192.0.2.1 -> 192.0.2.100"] and lc["missing"] == []
            assert 0 <= lc["seconds"] < 0.5 and lc["after_take_s"] >= lc["seconds"]
            assert p.e2.status()["last_takeover"]["convergence_s"] == lc["seconds"]
            # the first announcement went out before the first probe
            mine = [op for _, n, op, _ in p.lan.ops if n == "vm02"]
            assert mine.index("announce") < mine.index("probe"), mine
            kinds = [c[0] for c in rec.calls]
            assert kinds == ["vips_configured", "announced", "converged"], rec.calls
            assert rec.calls[2][2][0] is True and "192.0.2.1" in rec.calls[2][2][1]
            text = "\n".join(format_failover(p.e2.status()))
            assert "converged:  " in text and "after the first announcement" in text, text
            assert "takeover:   " in text, text
        finally:
            p.lan.holders.clear()
            await p.close()

    run(body)


def test_verified_takeover_reannounces_with_backoff_until_convinced(
        tmp_path: Path, keyfile: Path) -> None:
    async def body() -> None:
        p = Pair(tmp_path, keyfile, verify=(OBSERVER,), verify_timeout=2.0)
        p.lan.unconvinced = 2
        p.start(p.e1)                                       # alone: takes over at init_dead
        try:
            await until(lambda: p.e1.status().get("last_convergence") is not None, 5,
                        "verified")
            lc = p.e1.status()["last_convergence"]
            assert lc["ok"] is True and lc["rounds"] == 3 and lc["reannounced"] == 2, lc
            # probes of 50 and 100 ms failed first
            assert 0.14 <= lc["seconds"] < 1.0, lc
            probes = [t for t, n, op, _ in p.lan.ops if op == "probe"]
            assert len(probes) == 3
            gaps = [b - a for a, b in zip(probes, probes[1:], strict=False)]
            assert gaps[0] >= 0.045 and gaps[1] >= 0.095, gaps  # 50 ms, then 100 ms
            ops = [op for _, _, op, _ in p.lan.ops if op in ("announce", "probe")]
            assert ops.count("announce") >= 1 + 2, ops      # first round + 2 re-announcements
        finally:
            await p.close()

    run(body)


def test_unconfirmed_convergence_gives_up_without_stopping_heartbeats(
        tmp_path: Path, keyfile: Path) -> None:
    async def body() -> None:
        p = Pair(tmp_path, keyfile, verify=(OBSERVER,), verify_timeout=0.5)
        rec = RecordingObserver()
        p.e1.observer = rec
        p.lan.unconvinced = 10**6                          # an observer that never answers
        p.start()
        try:
            await p.settled()
            await until(lambda: p.e1.status().get("last_convergence") is not None, 3,
                        "given up")
            lc = p.e1.status()["last_convergence"]
            assert lc["ok"] is False and lc["seconds"] is None, lc
            assert lc["missing"] == ["192.0.2.1 -> 192.0.2.100"]
            assert lc["rounds"] >= 3 and lc["reannounced"] >= 2, lc
            assert [c[2] for c in rec.calls if c[0] == "converged"][0][0] is False
            # the probes held the address thread, never the loop: no false failover,
            # the VIPs stay on vm01
            assert state(p.e1) == "master" and state(p.e2) == "backup"
            assert p.e2.status()["counters"].get("takeovers", 0) == 0
            assert p.holders() == {"vm01"}
        finally:
            await p.close()

    run(body)


def test_no_verify_no_probe(tmp_path: Path, keyfile: Path) -> None:
    async def body() -> None:
        p = Pair(tmp_path, keyfile)
        p.start()
        try:
            await p.settled()
            await asyncio.sleep(0.1)
            assert p.e1.status().get("last_convergence") is None
            assert not [op for _, _, op, _ in p.lan.ops if op == "probe"]
        finally:
            await p.close()

    run(body)


# ---------------------------------------------------------------- recent clients
C1 = (ipaddress.ip_address("192.0.2.7"), "02:00:00:00:00:07")
C2 = (ipaddress.ip_address("192.0.2.8"), "02:00:00:00:00:08")
C_OFF = (ipaddress.ip_address("198.51.100.9"), "02:00:00:00:00:09")  # not on the VIP's net


def test_master_clients_reach_the_backup_and_are_told_at_takeover(tmp_path: Path,
                                                                   keyfile: Path) -> None:
    async def body() -> None:
        p = Pair(tmp_path, keyfile, announce_refresh=0.2)
        p.lan.clients["vm01"] = [C1, C_OFF, C2]
        p.start()
        try:
            await p.settled()
            await until(lambda: (p.e2.status()["clients_known"] or {}).get("count") == 2,
                        3, "the client list at the backup")
            known = p.e2.status()["clients_known"]
            assert 0 <= known["age"] < 2
            assert p.e1.status()["clients_sent"] >= 1
            assert p.e1.status()["clients_known"] is None   # the master got none
            assert p.e2._known_clients == (C1, C2)
            # the master dies silently; the backup takes over and tells C1, C2 directly
            p.tasks[0].cancel()
            await until(lambda: state(p.e2) == "master", 2, "vm02 master")
            await until(lambda: (p.e2.last_takeover or {}).get("unicast_clients")
                        is not None, 2, "the unicast announcement")
            assert p.e2.status()["last_takeover"]["unicast_clients"] == 2
            assert p.lan.unicast["vm02"] == [[C1, C2]]
            ops = [op for _, n, op, _ in p.lan.ops if n == "vm02" and op != "renew"]
            assert ops[:3] == ["add", "announce", "unicast"], ops  # after the broadcast
        finally:
            p.lan.holders.clear()
            await p.close()

    run(body)


def test_unchanged_or_empty_client_lists_are_not_resent(tmp_path: Path,
                                                        keyfile: Path) -> None:
    async def body() -> None:
        p = Pair(tmp_path, keyfile, announce_refresh=0)
        p.start()
        try:
            await p.settled()
            e = p.e1
            loop = asyncio.get_running_loop()

            def polled(clients: list[tuple[Any, str]]) -> int:
                fut: asyncio.Future[list[tuple[Any, str]]] = loop.create_future()
                fut.set_result(clients)
                e._clients_polled_done(fut)
                return e.clients_sent

            assert polled([]) == 0                             # empty: nothing
            assert polled([C1]) == 1
            assert [polled([C1]) for _ in range(5)] == [1, 1, 1, 1, 2]  # every 5th
            assert polled([C2, C1]) == 3                       # changed: at once
            assert polled([C1, C2]) == 3                       # same set, other order
            await until(lambda: p.e2._known_clients == (C2, C1), 1, "the latest list")
        finally:
            await p.close()

    run(body)


def test_unicast_clients_off_sends_and_uses_nothing(tmp_path: Path, keyfile: Path) -> None:
    async def body() -> None:
        p = Pair(tmp_path, keyfile, announce_refresh=0.2, unicast_clients=False)
        p.lan.clients["vm01"] = [C1]
        p.start()
        try:
            await p.settled()
            await asyncio.sleep(1.3)                          # past the first renewal
            assert p.e1.status()["clients_sent"] == 0
            assert p.e2.status()["clients_known"] is None
            p.tasks[0].cancel()
            await until(lambda: state(p.e2) == "master", 2, "vm02 master")
            await until(lambda: p.e2.last_takeover is not None, 1, "takeover")
            assert p.e2.status()["last_takeover"]["unicast_clients"] == 0
            assert "vm02" not in p.lan.unicast
        finally:
            p.lan.holders.clear()
            await p.close()

    run(body)
