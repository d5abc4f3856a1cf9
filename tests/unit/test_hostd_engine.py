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
    history,
    next_allowed,
    parse_request,
    read_journal,
)
from guardian.hostd._engine import backoff

T0 = 1_800_000_000.0
POLICY = PolicySpec(min_interval=600.0, max_actions=3, confirm_timeout=30.0)


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


PAIR = {"web1": "web2", "web2": "web1"}


def vmspec(name: str) -> VMSpec:
    return VMSpec(name=name, uuid=f"uuid-{name}", key_file=Path("/nonexistent"),
                  driver="command", domain=name, peer=PAIR.get(name))


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
        ("max_actions in window", _req(),
         Snapshot(frozenset({"web1"}), {}, {"web1": [T0 - 80000, T0 - 50000, T0 - 1000]}),
         T0, Kind.RATE_LIMITED, 6400),
        ("actions out of the window forgotten, backoff for two", _req(),
         Snapshot(frozenset({"web1"}), {}, {"web1": [T0 - 90000, T0 - 50000, T0 - 1000]}),
         T0, Kind.RATE_LIMITED, 200),
        ("backoff: second gap is 2 x min_interval", _req(),
         Snapshot(frozenset({"web1"}), {}, {"web1": [T0 - 2000, T0 - 1000]}),
         T0, Kind.RATE_LIMITED, 200),
        ("backoff: second gap over", _req(),
         Snapshot(frozenset({"web1"}), {}, {"web1": [T0 - 2500, T0 - 1200]}),
         T0, Kind.ACCEPT, 0),
        ("max_actions: wait for the oldest to leave the window", _req(),
         Snapshot(frozenset({"web1"}), {},
                  {"web1": [T0 - 3000, T0 - 2400, T0 - 1200]}),
         T0, Kind.RATE_LIMITED, 83400),
        ("healthy for healthy_reset: history forgotten", _req(),
         Snapshot(frozenset({"web1"}), {}, {"web1": [T0 - 80000, T0 - 50000, T0 - 3600]}),
         T0, Kind.ACCEPT, 0),
        ("a rate-limited request since: not healthy, history kept", _req(),
         Snapshot(frozenset({"web1"}), {}, {"web1": [T0 - 80000, T0 - 50000, T0 - 3600]},
                  last_requests={"web1": T0 - 100}),
         T0, Kind.RATE_LIMITED, 6400),
        ("an old request does not keep it", _req(),
         Snapshot(frozenset({"web1"}), {}, {"web1": [T0 - 4000]},
                  last_requests={"web1": T0 - 5000}),
         T0, Kind.ACCEPT, 0),
        ("maintenance", _req(),
         Snapshot(frozenset({"web1"}), {}, {}, maintenance={"web1": {"reason": "upgrade"}}),
         T0, Kind.MAINTENANCE, 0),
        ("maintenance before the rate limit", _req(),
         Snapshot(frozenset({"web1"}), {}, {"web1": [T0 - 10]},
                  maintenance={"web1": {"reason": ""}}),
         T0, Kind.MAINTENANCE, 0),
        ("fence target in maintenance", _req(action="fence-peer", peer="web2"),
         Snapshot(frozenset({"web1", "web2"}), {}, {}, maintenance={"web2": {}}, peers=PAIR),
         T0, Kind.MAINTENANCE, 0),
        ("sender in maintenance may fence its peer", _req(action="fence-peer", peer="web2"),
         Snapshot(frozenset({"web1", "web2"}), {}, {}, maintenance={"web1": {}}, peers=PAIR),
         T0, Kind.ACCEPT, 0),
        ("stale before maintenance", _req(incarnation=0),
         Snapshot(frozenset({"web1"}), {"web1": 1}, {}, maintenance={"web1": {}}),
         T0, Kind.STALE, 0),
        ("running on target", _req(),
         Snapshot(frozenset({"web1"}), {}, {},
                  {"x": {"sender": "web1", "target": "web1", "state": "in-progress"}}),
         T0, Kind.RATE_LIMITED, 30),
        ("fence unknown peer", _req(action="fence-peer", peer="nope"),
         Snapshot(frozenset({"web1"}), {}, {}), T0, Kind.REFUSED, 0),
        ("fence self", _req(action="fence-peer", peer="web1"),
         Snapshot(frozenset({"web1", "web2"}), {}, {}), T0, Kind.REFUSED, 0),
        ("fence peer limited by peer history", _req(action="fence-peer", peer="web2"),
         Snapshot(frozenset({"web1", "web2"}), {}, {"web2": [T0 - 10]}, peers=PAIR), T0,
         Kind.RATE_LIMITED, 590),
        ("fence peer ok", _req(action="fence-peer", peer="web2"),
         Snapshot(frozenset({"web1", "web2"}), {}, {"web1": [T0 - 10]}, peers=PAIR), T0,
         Kind.ACCEPT, 0),
        ("fence a VM that is not the configured peer", _req(action="fence-peer", peer="web3"),
         Snapshot(frozenset({"web1", "web2", "web3"}), {}, {}, peers=PAIR), T0,
         Kind.REFUSED, 0),
        ("fence with no peer configured", _req(action="fence-peer", peer="web2"),
         Snapshot(frozenset({"web1", "web2"}), {}, {}), T0, Kind.REFUSED, 0),
    ],
)
def test_decide(name: str, req: Any, snap: Snapshot, now: float, kind: Kind,
                retry: float) -> None:
    d = decide(req, "web1", snap, POLICY, now)
    assert d.kind is kind, (name, d)
    assert d.retry_after == pytest.approx(retry), name


@pytest.mark.parametrize(
    ("n", "gap"),
    [(1, 600), (2, 1200), (3, 2400), (4, 4800), (8, 76800), (9, 86400), (60, 86400)],
)
def test_backoff_doubles_and_is_capped_at_the_window(n: int, gap: float) -> None:
    policy = PolicySpec(min_interval=600, max_actions=100, window=86400, healthy_reset=0)
    hist = [T0 - 10.0 * (n - i) for i in range(n)]
    last = hist[-1]
    assert backoff(n, policy) == gap
    wait, why = next_allowed(hist, policy, last + 1)
    assert wait == pytest.approx(gap - 1) and "min_interval" in why
    assert decide(_req(), "web1", Snapshot(frozenset({"web1"}), {}, {"web1": hist}), policy,
                  last + gap).kind is Kind.ACCEPT


def test_healthy_reset_zero_never_forgets() -> None:
    policy = PolicySpec(min_interval=600, max_actions=2, window=86400, healthy_reset=0)
    snap = Snapshot(frozenset({"web1"}), {}, {"web1": [T0 - 80000, T0 - 70000]})
    d = decide(_req(), "web1", snap, policy, T0)
    assert d.kind is Kind.RATE_LIMITED and d.retry_after == pytest.approx(6400)
    assert "max_actions" in d.detail
    assert history([T0 - 80000, T0 - 90000], None, policy, T0) == [T0 - 80000]


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


def test_max_actions_backoff_and_healthy_reset(
        world: tuple[Engine, FakeClock, dict[str, FakeDriver]]) -> None:
    engine, clock, drivers = world
    t_first = clock.now
    for inc, gap in enumerate((600, 1200, 2400)):
        reply, job = engine.submit("web1", body(incarnation=inc))
        assert reply.status == 202 and job, (inc, reply)
        engine.execute(job)
        clock.advance(gap - 10)
        # the backoff: not yet (min_interval doubled after every action)
        reply, _ = engine.submit("web1", body(incarnation=inc + 1))
        assert reply.status == 429
        clock.advance(10)
    # three in the window: max_actions; retry when the first leaves the window, and the
    # VM keeps asking, so it is not healthy: its history is not forgotten
    for _ in range(6):
        reply, _ = engine.submit("web1", body(incarnation=3))
        assert reply.status == 429, reply
        assert reply.body["retry_after"] == pytest.approx(t_first + 86400 - clock.now, abs=1)
        assert "max_actions" in reply.body["error"]
        clock.advance(3000)
    # quiet for healthy_reset (1h) since the last escalation: counters start afresh
    clock.advance(3600 - 3000)
    reply, job = engine.submit("web1", body(incarnation=3))
    assert reply.status == 202 and job
    assert engine.store.actions("web1") == [clock.now]  # the old history is forgotten
    assert drivers["web1"].calls.count("destroy") == 3


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


def test_fence_of_a_vm_other_than_the_peer_is_refused(tmp_path: Path) -> None:
    vms = {n: vmspec(n) for n in ("web1", "web2", "db1")}
    drivers = {n: FakeDriver() for n in vms}
    engine = Engine(vms, POLICY, drivers, StateStore(tmp_path), Journal(tmp_path),
                    FakeClock())
    reply, job = engine.submit("web1", body(action="fence-peer", peer="db1"))
    assert reply.status == 202 and reply.body["state"] == "refused" and job is None
    assert "web1 may fence only its configured peer ('web2'), not 'db1'" in \
        reply.body["detail"], reply.body
    # db1 has no peer at all
    reply, job = engine.submit("db1", body("db1", action="fence-peer", peer="web1"))
    assert reply.body["state"] == "refused" and "none configured" in reply.body["detail"]
    assert all(d.calls == [] for d in drivers.values())


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


class Crash(BaseException):
    """hostd dying (SIGKILL) in the middle of a driver call: nothing after it runs."""


class CrashingDriver(FakeDriver):
    """Dies (raises Crash) at the ``at`` call: "destroy" (before it acts), "destroyed"
    (after it acted), "create" (before), "created" (after)."""

    def __init__(self, at: str, shared: FakeDriver) -> None:
        super().__init__()
        self.at = at
        self.shared = shared  # the domain itself outlives hostd

    def state(self) -> DomainState:
        return self.shared.state()

    def destroy(self) -> None:
        if self.at == "destroy":
            raise Crash
        self.shared.destroy()
        if self.at == "destroyed":
            raise Crash

    def create(self) -> None:
        if self.at == "create":
            raise Crash
        self.shared.create()
        if self.at == "created":
            raise Crash


@pytest.mark.parametrize("at", ["queued", "destroy", "destroyed", "create", "created"])
def test_hostd_killed_anywhere_in_a_recreate_resumes_to_exactly_one(
        tmp_path: Path, at: str) -> None:
    clock = FakeClock()
    vms = {"web1": vmspec("web1")}
    domain = FakeDriver()
    e1 = Engine(vms, POLICY, {"web1": CrashingDriver(at, domain)}, StateStore(tmp_path),
                Journal(tmp_path), clock, poll_interval=1.0)
    _, job = e1.submit("web1", body())
    assert job
    if at != "queued":  # "queued": hostd died between accepting and starting
        with pytest.raises(Crash):
            e1.execute(job)
    assert e1.status("web1", job).body["state"] in ("accepted", "in-progress")
    e2 = Engine(vms, POLICY, {"web1": domain}, StateStore(tmp_path), Journal(tmp_path),
                clock, poll_interval=1.0)
    assert e2.resumable() == [job] and e2.resumable() == []
    e2.execute(job)
    view = e2.status("web1", job).body
    assert view["state"] == "done" and view["incarnation"] == 1, view
    assert e2.store.incarnation("web1") == 1
    assert domain.calls.count("create") == 1, domain.calls
    assert domain.current is DomainState.RUNNING
    decisions = [r["decision"] for r in read_journal(tmp_path / "journal.jsonl")]
    assert decisions == ["accepted", "resumed", "finished"], decisions
    # a third hostd has nothing to resume
    e3 = Engine(vms, POLICY, {"web1": domain}, StateStore(tmp_path), Journal(tmp_path), clock)
    assert e3.resumable() == []


def test_resumed_create_with_unknown_state_fails_rather_than_doubling(tmp_path: Path) -> None:
    clock = FakeClock()
    vms = {"web1": vmspec("web1")}
    domain = FakeDriver()
    e1 = Engine(vms, POLICY, {"web1": CrashingDriver("create", domain)}, StateStore(tmp_path),
                Journal(tmp_path), clock, poll_interval=1.0)
    _, job = e1.submit("web1", body())
    assert job
    with pytest.raises(Crash):
        e1.execute(job)
    domain.current = DomainState.UNKNOWN  # the toolstack does not answer
    e2 = Engine(vms, POLICY, {"web1": domain}, StateStore(tmp_path), Journal(tmp_path), clock)
    (rid,) = e2.resumable()
    e2.execute(rid)
    view = e2.status("web1", rid).body
    assert view["state"] == "failed" and "never two instances" in view["detail"], view
    assert "create" not in domain.calls


def test_resumed_fence_after_confirmed_death_is_done(tmp_path: Path) -> None:
    clock = FakeClock()
    vms = {"web1": vmspec("web1"), "web2": vmspec("web2")}
    peer = FakeDriver()
    e1 = Engine(vms, POLICY, {"web1": FakeDriver(), "web2": peer}, StateStore(tmp_path),
                Journal(tmp_path), clock, poll_interval=1.0)
    _, job = e1.submit("web1", body(action="fence-peer", peer="web2"))
    assert job
    # died right after the incarnation was saved with phase "destroyed"
    e1.execute(job)
    with e1._lock:
        e1.store.requests[job].update(state="in-progress", phase="destroyed")
        e1.store.save()
    e2 = Engine(vms, POLICY, {"web1": FakeDriver(), "web2": peer}, StateStore(tmp_path),
                Journal(tmp_path), clock)
    e2.execute(e2.resumable()[0])
    assert e2.status("web1", job).body["state"] == "done"
    assert peer.calls.count("destroy") == 1 and "create" not in peer.calls
    assert e2.store.incarnation("web2") == 1
