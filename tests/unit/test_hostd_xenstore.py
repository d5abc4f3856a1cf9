"""guardian-hostd's XenStore input against the stand-in xenstored: identity by UUID,
the incarnation and answers in dom0-owned nodes, refusals, per-domain fairness under a
flood, and end to end: the guest's Escalator + XenstoreChannel asks for a recreate,
hostd destroys and creates the domain once, and the recreated guest reads "done" and
its new incarnation."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from guardian._model import EscalationSpec
from guardian.escalation import Escalator, Outbox, Reason, Request, build_channel
from guardian.hostd import DomainState, Hostd, HostdSpec, PolicySpec, VMSpec, build, parse
from guardian.hostd._xsinput import ANSWERS_KEPT, XenstoreInput
from guardian.xenstore import Client, Quota, StandIn, XenstoreError
from ipfailover._wire import KeyRing

U1 = "6c1b3f0e-0000-4000-8000-000000000001"
U2 = "6c1b3f0e-0000-4000-8000-000000000002"
U9 = "6c1b3f0e-0000-4000-8000-000000000009"


class XsDriver:
    """A domain in the stand-in: destroy releases it, create introduces a new domain
    (new domid, same uuid).  Records calls."""

    def __init__(self, xs: StandIn, name: str, uuid_: str) -> None:
        self.xs = xs
        self.name = name
        self.uuid = uuid_
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def state(self) -> DomainState:
        with self.lock:
            running = self.xs.domid_of(self.name) is not None
            return DomainState.RUNNING if running else DomainState.ABSENT

    def destroy(self) -> None:
        with self.lock:
            self.calls.append("destroy")
            domid = self.xs.domid_of(self.name)
            if domid is not None:
                self.xs.destroy_domain(domid)

    def create(self) -> None:
        with self.lock:
            self.calls.append("create")
            self.xs.create_domain(self.name, self.uuid)


@dataclass
class World:
    xs: StandIn
    hostd: Hostd
    drivers: dict[str, XsDriver]
    inp: XenstoreInput

    def guest(self, domid: int) -> Client:
        return Client(self.xs.domain_socket(domid), timeout=5)

    @property
    def counters(self) -> dict[str, int]:
        return self.hostd.engine.counters


def vmspec(name: str, uuid_: str) -> VMSpec:
    return VMSpec(name=name, uuid=uuid_, key_file=Path("/nonexistent"), driver="command",
                  domain=name, keys=KeyRing({1: bytes(32)}))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    xs = StandIn(tmp_path / "xs", Quota(max_value=4000)).start()
    xs.create_domain("vm01", U1)        # 1
    xs.create_domain("vm02", U2)        # 2
    xs.create_domain("stranger", U9)    # 3: not configured
    spec = HostdSpec(source="test", host="127.0.0.1", port=0, state_dir=tmp_path / "state",
                     journal_dir=tmp_path / "state",
                     policy=PolicySpec(min_interval=600, confirm_timeout=5),
                     vms={"vm01": vmspec("vm01", U1), "vm02": vmspec("vm02", U2)},
                     xenstore=str(xs.dom0_socket))
    drivers = {"vm01": XsDriver(xs, "vm01", U1), "vm02": XsDriver(xs, "vm02", U2)}
    hostd = build(spec, drivers=drivers, poll_interval=0.01)
    inp = XenstoreInput(hostd.engine, spec.xenstore, per_domain=4, rescan=0.5, timeout=5)
    try:
        yield World(xs, hostd, drivers, inp)
    finally:
        xs.close()
        hostd.journal.close()


def body(vm: str = "vm01", uuid_: str = U1, rid: str | None = None,
         **over: Any) -> tuple[str, str]:
    data: dict[str, Any] = {
        "request_id": rid or str(uuid.uuid4()), "vm": vm, "vm_uuid": uuid_,
        "incarnation": 0, "action": "recreate", "peer": None,
        "reason": {"service": "apache2", "verdicts": "CRITICAL x3", "restarts": 5,
                   "detail": "x"},
        "sent_at": time.time(),
    }
    data.update(over)
    return str(data["request_id"]), json.dumps(data)


def answer(xs: StandIn, domid: int, rid: str) -> dict[str, Any] | None:
    raw = xs.daemon.read(f"/local/domain/{domid}/guardian/answer/{rid}")
    return None if raw is None else dict(json.loads(raw))


async def until(cond: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# ----------------------------------------------------------------------------- config
def test_config_xenstore_key() -> None:
    base = {"hostd": {"listen": "127.0.0.1:7080"}}
    assert parse(base, load_keys=False).xenstore == ""
    spec = parse({"hostd": {"listen": "127.0.0.1:7080", "xenstore": "/run/xenstored/socket"}},
                 load_keys=False)
    assert spec.xenstore == "/run/xenstored/socket"


# ----------------------------------------------------------------------------- scans
def test_incarnation_published_by_uuid_unknown_domain_ignored(world: World) -> None:
    more, jobs = world.inp.scan()
    assert (more, jobs) == (False, [])
    xs = world.xs
    assert xs.daemon.read("/local/domain/1/guardian/incarnation") == b"0"
    assert xs.daemon.perms("/local/domain/1/guardian/incarnation") == ["n0", "r1"]
    assert xs.daemon.perms("/local/domain/2/guardian") == ["n0", "r2"]
    assert xs.daemon.read("/local/domain/3/guardian/incarnation") is None
    assert world.counters["xenstore_unknown_domains"] == 1
    world.inp.scan()
    assert world.counters["xenstore_unknown_domains"] == 1          # once per domain
    with world.guest(1) as g1:
        assert g1.read_text("guardian/incarnation") == "0"
        with pytest.raises(XenstoreError) as info:
            g1.write("guardian/incarnation", "7")
        assert info.value.name == "EACCES"
        # a guest renaming itself changes nothing: identity is the dom0-owned vm node
        with pytest.raises(XenstoreError):
            g1.write("vm", f"/vm/{U2}")
    with world.guest(3) as g3:                                       # not configured
        rid, text = body()
        g3.write(f"data/guardian/escalation/{rid}", text)
    world.inp.scan()
    assert answer(xs, 3, rid) is None and world.drivers["vm01"].calls == []


def test_refusals_are_answered_counted_and_do_nothing(world: World) -> None:
    xs = world.xs
    world.hostd.engine.store.vm("vm01")["incarnation"] = 2
    other_rid, other = body(vm="vm02", uuid_=U2)                    # asks about another VM
    stale_rid, stale = body(incarnation=1)
    garbage_rid = str(uuid.uuid4())
    big_rid, big = body(reason={"service": "x", "detail": "y" * 3000})
    mismatch_rid = str(uuid.uuid4())
    _, mismatch = body()
    with world.guest(1) as g1:
        g1.write(f"data/guardian/escalation/{other_rid}", other)
        g1.write(f"data/guardian/escalation/{stale_rid}", stale)
        g1.write(f"data/guardian/escalation/{garbage_rid}", "\x00\xffnot json")
        g1.write(f"data/guardian/escalation/{big_rid}", big)
        g1.write(f"data/guardian/escalation/{mismatch_rid}", mismatch)
        g1.write("data/guardian/escalation/hello", "x")
    world.inp.per_domain = 10
    more, jobs = world.inp.scan()
    assert not more and jobs == []
    got = {rid: answer(xs, 1, rid) for rid in (other_rid, stale_rid, garbage_rid, big_rid,
                                                mismatch_rid)}
    states = {rid: a["state"] if a else None for rid, a in got.items()}
    assert states == {other_rid: "refused", stale_rid: "stale", garbage_rid: "rejected",
                      big_rid: "rejected", mismatch_rid: "rejected"}
    assert all(a and a["incarnation"] == 2 for a in got.values())
    assert xs.daemon.children("/local/domain/1/data/guardian/escalation") == []
    c = world.counters
    assert c["xenstore_refused"] == 1 and c["xenstore_stale"] == 1
    assert c["xenstore_rejected"] == 3 and c["xenstore_oversized"] == 1
    assert c["xenstore_bad_nodes"] == 1 and c["identity_mismatch"] == 1
    assert world.drivers["vm01"].calls == [] and world.drivers["vm02"].calls == []
    with world.guest(1) as g1:                                       # cannot forge an answer
        with pytest.raises(XenstoreError) as info:
            g1.write(f"guardian/answer/{stale_rid}", '{"state":"done"}')
        assert info.value.name == "EACCES"
    with world.guest(2) as g2:                                       # nor read another's
        with pytest.raises(XenstoreError) as info:
            g2.read(f"/local/domain/1/guardian/answer/{stale_rid}")
        assert info.value.name == "EACCES"


def test_a_flooding_guest_does_not_starve_another(world: World) -> None:
    xs = world.xs
    flood = [str(uuid.uuid4()) for _ in range(30)]
    with world.guest(1) as g1:
        for rid in flood:
            g1.write(f"data/guardian/escalation/{rid}", "garbage")
    quiet_rid, quiet = body(vm="vm02", uuid_=U2, action="fence-peer", peer="nobody")
    with world.guest(2) as g2:
        g2.write(f"data/guardian/escalation/{quiet_rid}", quiet)
    world.inp.burst = 100                                            # per-scan cap only
    more, _ = world.inp.scan()
    assert more
    assert answer(xs, 2, quiet_rid) is not None                      # served in the first pass
    assert len(xs.daemon.children("/local/domain/1/data/guardian/escalation")) == 26
    scans = 1
    while more:
        more, _ = world.inp.scan()
        scans += 1
    assert scans == 8                                                # 30 / 4 per scan
    assert xs.daemon.children("/local/domain/1/data/guardian/escalation") == []
    assert world.counters["xenstore_rejected"] == 30
    # dom0's answer nodes in a domain are bounded
    assert len(xs.daemon.children("/local/domain/1/guardian/answer")) == ANSWERS_KEPT


def test_a_flooding_guest_is_throttled(world: World) -> None:
    xs = world.xs
    world.inp.burst, world.inp.rate = 5, 0.01
    flood = [str(uuid.uuid4()) for _ in range(12)]
    with world.guest(1) as g1:
        for rid in flood:
            g1.write(f"data/guardian/escalation/{rid}", "garbage")
    more = True
    while more:
        more, _ = world.inp.scan()
    assert world.counters["xenstore_rejected"] == 5                  # the burst, then waits
    assert len(xs.daemon.children("/local/domain/1/data/guardian/escalation")) == 7
    assert world.counters["xenstore_throttled"] >= 1
    until_ = world.inp.throttled_until
    assert until_ is not None and until_ > time.monotonic() + 10
    quiet_rid, quiet = body(vm="vm02", uuid_=U2, action="fence-peer", peer="nobody")
    with world.guest(2) as g2:                                       # the other is served
        g2.write(f"data/guardian/escalation/{quiet_rid}", quiet)
    world.inp.scan()
    assert answer(xs, 2, quiet_rid) is not None
    world.inp.domains[1].tokens = 2.0                                # time passes
    world.inp.scan()
    assert world.counters["xenstore_rejected"] == 7


def test_rate_limited_request_stays_until_its_time(world: World) -> None:
    xs = world.xs
    first_rid, first = body()
    second_rid, second = body()
    with world.guest(1) as g1:
        g1.write(f"data/guardian/escalation/{first_rid}", first)
    _, jobs = world.inp.scan()
    assert jobs == [("vm01", first_rid)]                             # accepted (not run here)
    a = answer(xs, 1, first_rid)
    assert a is not None and a["state"] == "accepted"
    with world.guest(1) as g1:
        g1.write(f"data/guardian/escalation/{second_rid}", second)
    world.inp.scan()
    a = answer(xs, 1, second_rid)
    assert a is not None and a["state"] == "retry" and a["retry_after"] >= 1
    node = f"/local/domain/1/data/guardian/escalation/{second_rid}"
    assert xs.daemon.read(node) is not None                          # kept for later
    world.inp.scan()
    assert world.counters["xenstore_retry"] == 1                     # not taken again yet
    world.inp.deferred[(1, second_rid)] = 0.0
    world.inp.scan()
    assert world.counters["xenstore_retry"] == 2


def test_no_ghost_domain_after_a_release(world: World) -> None:
    world.inp.scan()
    world.xs.destroy_domain(1)              # hostd has not seen the release yet
    world.inp._publish_answer("vm01", str(uuid.uuid4()), {"state": "done"})
    assert world.xs.daemon.read("/local/domain/1") is None
    world.inp.scan()
    assert 1 not in world.inp.domains


def test_input_survives_the_store_going_away(world: World, tmp_path: Path) -> None:
    async def scenario() -> None:
        inp = XenstoreInput(world.hostd.engine, str(tmp_path / "nothing"), rescan=0.1)
        await inp.start()
        await until(lambda: world.counters.get("xenstore_errors", 0) >= 1)
        await inp.close()

    asyncio.run(scenario())


# ----------------------------------------------------------------------------- end to end
def test_end_to_end_recreate_over_xenstore(world: World, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    xs = world.xs
    monkeypatch.setenv("XENSTORED_PATH", str(xs.name_socket("vm01")))   # the guest's xenbus
    channel = build_channel(EscalationSpec(channel="xenstore", vm="vm01", vm_uuid=U1,
                                           incarnation_file=str(tmp_path / "none")))
    escalator = Escalator(Outbox(tmp_path / "outbox"), channel, timeout=5)

    async def drive(request: Request) -> str:
        entry = escalator.submit(request)
        assert entry is not None
        deadline = time.monotonic() + 15
        while entry.open:
            assert time.monotonic() < deadline, entry.detail
            await escalator.step(entry)
            await asyncio.sleep(0.05)
        return entry.state

    async def scenario() -> None:
        await world.inp.start()
        try:
            dl = time.monotonic() + 5
            await until(lambda: xs.daemon.read("/local/domain/1/guardian/incarnation"))
            assert await channel.incarnation(dl) == 0
            req = Request(vm="vm01", vm_uuid=U1, incarnation=0, action="recreate",
                          reason=Reason("apache2", "http=CRITICAL", 3, "restarts spent"))
            assert await drive(req) == "done"
            assert world.drivers["vm01"].calls == ["destroy", "create"]
            new = xs.domid_of("vm01")
            assert new is not None and new != 1
            assert xs.daemon.read("/local/domain/1") is None            # released
            await until(lambda: xs.daemon.read(
                f"/local/domain/{new}/guardian/incarnation") == b"1")
            assert await channel.incarnation(time.monotonic() + 5) == 1
            done = answer(xs, new, req.request_id)
            assert done is not None and done["state"] == "done"
            assert done["incarnation"] == 1
            assert xs.daemon.perms(f"/local/domain/{new}/guardian/answer/"
                                   f"{req.request_id}") == ["n0", f"r{new}"]
            # a request made by the old incarnation is stale: nothing more is done
            old = Request(vm="vm01", vm_uuid=U1, incarnation=0, action="recreate",
                          reason=Reason("bind9"))
            assert await drive(old) == "stale"
            # and one naming another VM is refused
            spoof = Request(vm="vm02", vm_uuid=U2, incarnation=1, action="recreate",
                            reason=Reason("exim4"))
            assert await drive(spoof) == "refused"
            assert world.drivers["vm01"].calls == ["destroy", "create"]
            assert world.drivers["vm02"].calls == []
            assert world.counters["xenstore_stale"] == 1
            assert world.counters["xenstore_refused"] == 1
        finally:
            await world.inp.close()

    asyncio.run(scenario())


def test_guardian_hostd_run_reads_xenstore(tmp_path: Path) -> None:
    """``[hostd] xenstore = ...`` starts the input in ``guardian-hostd run``."""
    import os
    import signal
    import subprocess
    import sys

    from unit_helpers import free_port

    key = tmp_path / "vm01.keys"
    key.write_text("1 " + "ab" * 32 + " send\n")
    os.chmod(key, 0o600)
    with StandIn(tmp_path / "xs") as xs:
        domid = xs.create_domain("vm01", U1)
        conf = tmp_path / "hostd.toml"
        conf.write_text(f"""
[hostd]
listen = "127.0.0.1:{free_port()}"
state_dir = "{tmp_path}/state"
xenstore = "{xs.dom0_socket}"

[vms.vm01]
uuid = "{U1}"
key_file = "{key}"
driver = "command"
destroy_command = ["true"]
create_command = ["true"]
state_command = ["echo", "running"]
""")
        proc = subprocess.Popen([sys.executable, "-m", "guardian.hostd", "run", "--config",
                                 str(conf)], stderr=subprocess.PIPE, text=True)
        try:
            rid = str(uuid.uuid4())
            with Client(xs.domain_socket(domid), timeout=5) as g:
                g.write(f"data/guardian/escalation/{rid}", "not json")
            deadline = time.monotonic() + 20
            while answer(xs, domid, rid) is None:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline
                time.sleep(0.05)
            got = answer(xs, domid, rid)
            assert got is not None and got["state"] == "rejected"
            assert xs.daemon.read(f"/local/domain/{domid}/guardian/incarnation") == b"0"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
