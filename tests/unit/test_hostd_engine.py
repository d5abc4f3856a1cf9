"""guardian.hostd decision engine: scenario tables on a virtual clock, fake drivers."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from guardian.hostd import (
    DomainState,
    DriverError,
    Engine,
    Journal,
    Kind,
    PolicySpec,
    Snapshot,
    StateStore,
    VMSpec,
    decide,
    parse_request,
    read_journal,
)

T0 = 1_800_000_000.0
POLICY = PolicySpec(min_interval=600.0, max_per_day=3, confirm_timeout=30.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0
        self.mono = 1000.0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.mono += seconds
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.now += seconds


class FakeDriver:
    """Records calls; ``dies`` False: the domain never goes away after destroy."""

    def __init__(self, *, dies: bool = True, dying_polls: int = 2,
                 fail_create: bool = False) -> None:
        self.calls: list[str] = []
        self.current = DomainState.RUNNING
        self.dies = dies
        self.dying_polls = dying_polls
        self.fail_create = fail_create
        self._polls = 0

    def state(self) -> DomainState:
        self.calls.append("state")
        if self.current is DomainState.DYING:
            self._polls += 1
            if self.dies and self._polls >= self.dying_polls:
                self.current = DomainState.ABSENT
        return self.current

    def destroy(self) -> None:
        self.calls.append("destroy")
        self.current = DomainState.DYING
        self._polls = 0

    def create(self) -> None:
        self.calls.append("create")
        if self.fail_create:
            raise DriverError("xl create: exit 1: boom")
        self.current = DomainState.RUNNING


def vmspec(name: str) -> VMSpec:
    return VMSpec(name=name, uuid=f"uuid-{name}", key_file=Path("/nonexistent"),
                  driver="command", domain=name)


def body(vm: str = "web1", *, rid: str | None = None, incarnation: Any = 0,
         action: str = "recreate", peer: str | None = None, **over: Any) -> bytes:
    data: dict[str, Any] = {
        "request_id": rid or str(uuid.uuid4()), "vm": vm, "vm_uuid": f"uuid-{vm}",
        "incarnation": incarnation, "action": action, "peer": peer,
        "reason": {"service": "apache2", "verdicts": "CRITICAL x3", "restarts": 5,
                   "detail": "restarts did not help"},
        "sent_at": T0,
    }
    data.update(over)
    return json.dumps(data).encode()


@pytest.fixture
def world(tmp_path: Path) -> tuple[Engine, FakeClock, dict[str, FakeDriver]]:
    clock = FakeClock()
    drivers = {"web1": FakeDriver(), "web2": FakeDriver()}
    engine = Engine({"web1": vmspec("web1"), "web2": vmspec("web2")}, POLICY, drivers,
                    StateStore(tmp_path / "state"), Journal(tmp_path / "state"), clock,
                    poll_interval=1.0)
    return engine, clock, drivers


# ------------------------------------------------------------------ decide(): pure


def _req(**kw: Any) -> Any:
    return parse_request(body(**kw))


RID = "0b7e2a34-9f7a-4c55-bd3e-2f8d4f1f0a11"


@pytest.mark.parametrize(
    ("name", "req", "snap", "now", "kind", "retry"),
    [
        ("fresh", _req(), Snapshot(frozenset({"web1"}), {}, {}), T0, Kind.ACCEPT, 0),
        ("duplicate", _req(rid=RID),
         Snapshot(frozenset({"web1"}), {}, {}, {RID: {"sender": "web1", "state": "done"}}),
         T0, Kind.DUPLICATE, 0),
        ("id of another vm", _req(rid=RID),
         Snapshot(frozenset({"web1"}), {}, {}, {RID: {"sender": "web2", "state": "done"}}),
         T0, Kind.CONFLICT, 0),
        ("stale", _req(incarnation=1), Snapshot(frozenset({"web1"}), {"web1": 2}, {}), T0,
         Kind.STALE, 0),
        ("newer incarnation accepted", _req(incarnation=3),
         Snapshot(frozenset({"web1"}), {"web1": 2}, {}), T0, Kind.ACCEPT, 0),
        ("min_interval", _req(), Snapshot(frozenset({"web1"}), {}, {"web1": [T0 - 100]}), T0,
         Kind.RATE_LIMITED, 500),
        ("min_interval over", _req(),
         Snapshot(frozenset({"web1"}), {}, {"web1": [T0 - 600]}), T0, Kind.ACCEPT, 0),
        ("max_per_day", _req(),
         Snapshot(frozenset({"web1"}), {}, {"web1": [T0 - 80000, T0 - 50000, T0 - 1000]}),
         T0, Kind.RATE_LIMITED, 6400),
        ("old actions forgotten", _req(),
         Snapshot(frozenset({"web1"}), {}, {"web1": [T0 - 90000, T0 - 50000, T0 - 1000]}),
         T0, Kind.ACCEPT, 0),
        ("running on target", _req(),
         Snapshot(frozenset({"web1"}), {}, {},
                  {"x": {"sender": "web1", "target": "web1", "state": "in-progress"}}),
         T0, Kind.RATE_LIMITED, 30),
        ("fence unknown peer", _req(action="fence-peer", peer="nope"),
         Snapshot(frozenset({"web1"}), {}, {}), T0, Kind.REFUSED, 0),
        ("fence self", _req(action="fence-peer", peer="web1"),
         Snapshot(frozenset({"web1", "web2"}), {}, {}), T0, Kind.REFUSED, 0),
        ("fence peer limited by peer history", _req(action="fence-peer", peer="web2"),
         Snapshot(frozenset({"web1", "web2"}), {}, {"web2": [T0 - 10]}), T0,
         Kind.RATE_LIMITED, 590),
        ("fence peer ok", _req(action="fence-peer", peer="web2"),
         Snapshot(frozenset({"web1", "web2"}), {}, {"web1": [T0 - 10]}), T0, Kind.ACCEPT, 0),
    ],
)
def test_decide(name: str, req: Any, snap: Snapshot, now: float, kind: Kind,
                retry: float) -> None:
    d = decide(req, "web1", snap, POLICY, now)
    assert d.kind is kind, (name, d)
    assert d.retry_after == pytest.approx(retry), name


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[]", b"\xff", body(request_id=5), body(rid="not a uuid!"),
     body(action="reboot"), body(action="fence-peer"), body(incarnation=-1),
     body(incarnation="1"), body(incarnation=True), body(reason="x"), body(sent_at="now")],
)
def test_malformed_is_400(world: tuple[Engine, FakeClock, dict[str, FakeDriver]],
                          raw: bytes) -> None:
    engine, _, drivers = world
    reply, job = engine.submit("web1", raw)
    assert reply.status == 400 and job is None
    assert drivers["web1"].calls == []


# ---------------------------------------------------------------- Engine end to end


def test_recreate_happy_path(world: tuple[Engine, FakeClock, dict[str, FakeDriver]],
                             tmp_path: Path) -> None:
    engine, clock, drivers = world
    rid = str(uuid.uuid4())
    reply, job = engine.submit("web1", body(rid=rid))
    assert reply.status == 202 and reply.body["state"] == "accepted"
    assert job == rid
    assert engine.status("web1", rid).body["state"] == "accepted"
    engine.execute(rid)
    assert drivers["web1"].calls == ["destroy", "state", "state", "create"]
    st = engine.status("web1", rid)
    assert st.status == 200
    assert st.body["state"] == "done" and st.body["incarnation"] == 1
    assert engine.store.incarnation("web1") == 1
    # persisted: a new store sees the same
    assert StateStore(tmp_path / "state").incarnation("web1") == 1
    journal = read_journal(tmp_path / "state" / "journal.jsonl")
    assert [r["decision"] for r in journal] == ["accepted", "finished"]
    assert journal[1]["outcome"] == "done" and journal[1]["request_id"] == rid
    assert journal[1]["reason"]["service"] == "apache2"
    assert "confirm_s" in journal[1]["timings"]


def test_idempotent_same_request_id(
        world: tuple[Engine, FakeClock, dict[str, FakeDriver]]) -> None:
    engine, clock, drivers = world
    rid = str(uuid.uuid4())
    _, job = engine.submit("web1", body(rid=rid))
    again, job2 = engine.submit("web1", body(rid=rid))
    assert again.status == 202 and job2 is None and again.body["state"] == "accepted"
    assert job is not None
    engine.execute(job)
    clock.advance(3600)
    third, job3 = engine.submit("web1", body(rid=rid))
    assert third.body["state"] == "done" and job3 is None
    assert drivers["web1"].calls.count("destroy") == 1


def test_incarnation_bumped_before_create(
        world: tuple[Engine, FakeClock, dict[str, FakeDriver]]) -> None:
    engine, clock, drivers = world
    seen: list[int] = []
    drv = drivers["web1"]
    real_create = drv.create

    def create() -> None:
        seen.append(StateStore(engine.store.dir).incarnation("web1"))
        real_create()

    drv.create = create  # type: ignore[method-assign]
    _, job = engine.submit("web1", body())
    assert job
    engine.execute(job)
    assert seen == [1]


def test_stale_incarnation_after_recreate(
        world: tuple[Engine, FakeClock, dict[str, FakeDriver]]) -> None:
    engine, clock, drivers = world
    _, job = engine.submit("web1", body(incarnation=0))
    assert job
    engine.execute(job)
    clock.advance(7200)
    reply, job2 = engine.submit("web1", body(incarnation=0))
    assert reply.status == 409 and reply.body["error"] == "stale incarnation"
    assert job2 is None
    reply, job3 = engine.submit("web1", body(incarnation=1))
    assert reply.status == 202 and job3


def test_rate_limit_429_and_journaled(
        world: tuple[Engine, FakeClock, dict[str, FakeDriver]], tmp_path: Path) -> None:
    engine, clock, drivers = world
    _, job = engine.submit("web1", body())
    assert job
    engine.execute(job)
    clock.advance(60)
    rid = str(uuid.uuid4())
    reply, job2 = engine.submit("web1", body(rid=rid, incarnation=1))
    assert reply.status == 429 and job2 is None
    assert 500 <= reply.body["retry_after"] <= 600
    # not kept: the same id may be sent again once the limit is over
    assert engine.status("web1", rid).status == 404
    clock.advance(600)
    reply, job3 = engine.submit("web1", body(rid=rid, incarnation=1))
    assert reply.status == 202 and job3 == rid
    decisions = [r["decision"] for r in read_journal(tmp_path / "state" / "journal.jsonl")]
    assert "rate-limited" in decisions


def test_max_per_day(world: tuple[Engine, FakeClock, dict[str, FakeDriver]]) -> None:
    engine, clock, drivers = world
    for inc in range(3):
        reply, job = engine.submit("web1", body(incarnation=inc))
        assert reply.status == 202 and job
        engine.execute(job)
        clock.advance(700)
    reply, _ = engine.submit("web1", body(incarnation=3))
    assert reply.status == 429
    assert reply.body["retry_after"] > 80000


def test_death_not_confirmed_never_creates(
        world: tuple[Engine, FakeClock, dict[str, FakeDriver]], tmp_path: Path) -> None:
    engine, clock, drivers = world
    drivers["web1"].dies = False
    t0 = clock.mono
    _, job = engine.submit("web1", body())
    assert job
    engine.execute(job)
    st = engine.status("web1", job).body
    assert st["state"] == "failed"
    assert "not confirmed" in st["detail"] and "dying" in st["detail"]
    assert "create" not in drivers["web1"].calls
    assert clock.mono - t0 == pytest.approx(30.0)
    assert engine.store.incarnation("web1") == 0  # nothing was recreated
    last = read_journal(tmp_path / "state" / "journal.jsonl")[-1]
    assert last["outcome"] == "failed"


def test_create_failure_is_failed(
        world: tuple[Engine, FakeClock, dict[str, FakeDriver]]) -> None:
    engine, clock, drivers = world
    drivers["web1"].fail_create = True
    _, job = engine.submit("web1", body())
    assert job
    engine.execute(job)
    st = engine.status("web1", job).body
    assert st["state"] == "failed" and "boom" in st["detail"]
    # the old incarnation is stale even so: it was destroyed
    assert engine.store.incarnation("web1") == 1


def test_fence_peer(world: tuple[Engine, FakeClock, dict[str, FakeDriver]]) -> None:
    engine, clock, drivers = world
    reply, job = engine.submit("web1", body(action="fence-peer", peer="web2"))
    assert reply.status == 202 and job
    engine.execute(job)
    assert engine.status("web1", job).body["state"] == "done"
    assert drivers["web2"].calls == ["destroy", "state", "state"]
    assert drivers["web1"].calls == []
    assert engine.store.incarnation("web2") == 1


def test_fence_unknown_peer_refused_and_kept(
        world: tuple[Engine, FakeClock, dict[str, FakeDriver]]) -> None:
    engine, clock, drivers = world
    rid = str(uuid.uuid4())
    reply, job = engine.submit("web1", body(rid=rid, action="fence-peer", peer="db9"))
    assert reply.status == 202 and reply.body["state"] == "refused" and job is None
    assert engine.status("web1", rid).body["state"] == "refused"


def test_identity_mismatch_is_401(
        world: tuple[Engine, FakeClock, dict[str, FakeDriver]]) -> None:
    engine, clock, drivers = world
    assert engine.submit("web1", body(vm="web2"))[0].status == 401
    assert engine.submit("web1", body(vm_uuid="uuid-web2"))[0].status == 401


def test_status_of_other_vms_request_is_404(
        world: tuple[Engine, FakeClock, dict[str, FakeDriver]]) -> None:
    engine, clock, drivers = world
    _, job = engine.submit("web1", body())
    assert job
    assert engine.status("web2", job).status == 404
    assert engine.status("web1", str(uuid.uuid4())).status == 404


def test_interrupted_action_marked_failed_on_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    vms = {"web1": vmspec("web1")}
    e1 = Engine(vms, POLICY, {"web1": FakeDriver()}, StateStore(tmp_path), Journal(tmp_path),
                clock)
    _, job = e1.submit("web1", body())
    assert job
    drv = FakeDriver()
    e2 = Engine(vms, POLICY, {"web1": drv}, StateStore(tmp_path), Journal(tmp_path), clock)
    assert e2.status("web1", job).body["state"] == "failed"
    assert drv.calls == []
    # and the rate limit still counts it
    assert e2.submit("web1", body())[0].status == 429
