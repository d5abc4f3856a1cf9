"""The incident journal (bounded JSON lines on disk) and the incident timeline
(trackers fed by the real state machines on a virtual clock; phases; rendering)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from unit_helpers import NullCheck
from unit_helpers import service_spec as make_spec

from checks import Status
from guardian import CheckSpec, LadderAction, LadderStep, Machine, RestartPolicy, ServiceSpec
from guardian._journal import Journal, ReadStats, boot_id, journal_files, read_journal
from guardian._machine import (
    Input,
    RestartFinished,
    Tick,
    UnitDown,
    Verdict,
)
from guardian._states import ServiceState
from guardian._timeline import (
    PairTracker,
    Phases,
    ServiceTracker,
    Timeline,
    events_command,
    format_timeline,
    load_events,
    open_incidents,
    parse_since,
    phases,
    render_events,
    split_incidents,
)
from ipfailover._machine import (
    Notice,
    ReleaseVIPs,
    RunNotify,
    StateChange,
    TakeVIPs,
)
from ipfailover._states import PairState

S = ServiceState


class Clock:
    """A virtual clock (monotonic and wall) that tests move by hand."""

    def __init__(self, t: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self.t = t
        self.wall0 = wall - t

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.wall0 + self.t


def journal(path: Path, clock: Clock | None = None, **kw: Any) -> Journal:
    c = clock or Clock()
    kw.setdefault("boot", "boot-1")
    return Journal(path, clock=c, wall_clock=c.wall, **kw)


# ============================================================ the journal


def test_append_and_read_back(tmp_path: Path) -> None:
    clock = Clock(12.3456789)
    j = journal(tmp_path, clock)
    rec = j.append("verdict", "CRITICAL http: timed out", service="web", incident=1,
                   check="http", status="CRITICAL")
    clock.t += 0.5
    j.append("state", "up", group="pair")
    j.close()
    got = list(read_journal(tmp_path))
    assert got[0] == rec
    assert got[0]["t_ms"] == pytest.approx(12345.679)
    assert got[0]["wall"] == pytest.approx(clock.wall0 + 12.346, abs=1e-3)
    assert got[0]["boot"] == "boot-1"
    assert list(got[0])[:7] == ["t_ms", "wall", "boot", "service", "incident", "kind", "reason"]
    assert got[1]["group"] == "pair" and "incident" not in got[1]
    assert (tmp_path / "journal.jsonl").read_text().count("\n") == 2


def test_boot_id_is_this_boots() -> None:
    bid = boot_id()
    if os.path.exists("/proc/sys/kernel/random/boot_id"):
        assert len(bid) == 36 and bid == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_rotation_keeps_the_newest_within_bounds(tmp_path: Path) -> None:
    j = journal(tmp_path, max_bytes=2048, keep=2)
    for i in range(200):
        j.append("verdict", f"record {i:03d} " + "x" * 60, service="web", seq=i)
    j.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["journal.1.jsonl", "journal.2.jsonl", "journal.jsonl"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 2048
    assert j.rotations >= 5
    seqs = [r["seq"] for r in read_journal(tmp_path) if r["kind"] == "verdict"]
    # the newest records, oldest first, nothing missing in between
    assert seqs[-1] == 199
    assert seqs == list(range(seqs[0], 200))
    size = len((tmp_path / "journal.1.jsonl").read_bytes().splitlines()[1]) + 1
    assert 2 * (2048 // size - 1) <= len(seqs) <= 3 * (2048 // size)
    files = journal_files(tmp_path)
    assert [p.name for p in files] == ["journal.2.jsonl", "journal.1.jsonl", "journal.jsonl"]


def test_keep_zero_keeps_one_file(tmp_path: Path) -> None:
    j = journal(tmp_path, max_bytes=1024, keep=0)
    for i in range(50):
        j.append("state", "y" * 100, seq=i)
    j.close()
    assert [p.name for p in tmp_path.iterdir()] == ["journal.jsonl"]


def test_torn_last_line_is_skipped_counted_and_not_glued(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.append("verdict", "before the crash", service="web")
    j.close()
    with open(tmp_path / "journal.jsonl", "ab") as f:
        f.write(b'{"t_ms": 1.0, "kind": "restart_iss')       # the crash, mid-write
    j2 = journal(tmp_path)
    assert j2.torn_seen == 1
    j2.append("restart_done", "after the restart", service="web")
    j2.close()
    stats = ReadStats()
    got = [r["reason"] for r in read_journal(tmp_path, stats=stats)]
    assert got == ["before the crash", "after the restart"]
    assert stats.torn == 1 and stats.records == 2 and stats.files == 1


def test_incident_ids_continue_after_a_restart(tmp_path: Path) -> None:
    j = journal(tmp_path)
    assert j.new_incident() == 1
    j.append("verdict", "x", service="web", incident=1)
    j.append("verdict", "y", service="web", incident=j.new_incident())
    j.close()
    j2 = journal(tmp_path)
    assert j2.last_incident == 2
    assert j2.new_incident() == 3


def test_incident_ids_continue_when_their_records_rotated_away(tmp_path: Path) -> None:
    j = journal(tmp_path, max_bytes=1024, keep=1)
    j.append("verdict", "x", service="web", incident=j.new_incident())   # 1
    j.append("verdict", "x", service="web", incident=41)                 # adopted
    for i in range(100):
        j.append("state", "filler " * 10, seq=i)
    j.close()
    assert not any(r.get("incident") for r in read_journal(tmp_path))
    headers = [r for r in read_journal(tmp_path) if r["kind"] == "journal"]
    assert headers and all(h["last_incident"] == 41 for h in headers)
    assert journal(tmp_path).new_incident() == 42


def test_since_and_service_filters(tmp_path: Path) -> None:
    clock = Clock()
    j = journal(tmp_path, clock)
    for i in range(10):
        clock.t += 60
        j.append("state", f"{i}", service="web" if i % 2 else None, group=None if i % 2 else "vip")
    j.close()
    walls = [r["wall"] for r in j.read()]
    since = walls[6]
    assert [r["reason"] for r in j.read(since=since)] == ["6", "7", "8", "9"]
    assert [r["reason"] for r in j.read(service="web")] == ["1", "3", "5", "7", "9"]
    assert [r["reason"] for r in j.read(since=since, service="vip")] == ["6", "8"]


def test_an_io_error_is_counted_and_logged_once(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the directory should be")
    j = journal(blocker / "journal")
    caplog.set_level(logging.INFO, logger="guardian.journal")
    j.append("verdict", "lost 1")
    j.append("verdict", "lost 2")
    assert j.write_errors == 2 and j.records_written == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "write failed" in errors[0].getMessage()
    blocker.unlink()
    j.append("verdict", "kept")
    assert j.records_written == 1
    assert "writing again" in caplog.records[-1].getMessage()
    j.close()
    assert [r["reason"] for r in j.read()] == ["kept"]


def test_an_oversized_record_is_cut_down(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.append("verdict", "r" * 100_000, service="web", blob="b" * 100_000)
    j.close()
    (rec,) = j.read()
    assert rec["service"] == "web" and len(rec["reason"]) < 3000
    assert "blob" not in rec and (tmp_path / "journal.jsonl").stat().st_size < 16 * 1024
    j2 = journal(tmp_path)
    j2.append("verdict", "r", service="web", blob="b" * 20_000)
    j2.close()
    assert list(j2.read())[-1].get("truncated") is True


def test_sync_runs_off_the_loop_and_on_a_timer(tmp_path: Path) -> None:
    async def main() -> None:
        j = Journal(tmp_path, sync_interval=0.02, boot="b")
        j.append("verdict", "one")
        assert j._dirty and j._timer is not None
        await asyncio.sleep(0.1)
        assert not j._dirty and j._pool is not None          # the timer fsynced
        j.append("escalation_sent", "two")
        assert await j.flush() is True
        assert not j._pending and j.write_errors == 0
        j.close()
        j.append("verdict", "after close: ignored")

    asyncio.run(main())
    assert [r["reason"] for r in read_journal(tmp_path)] == ["one", "two"]


def test_reading_a_missing_journal_is_empty(tmp_path: Path) -> None:
    assert list(read_journal(tmp_path / "nothing")) == []
    assert journal(tmp_path / "nothing").last_incident == 0


# ============================================================ phases


def recs(*steps: tuple[float, str], boot: str = "b", wall0: float = 1e9,
         **close: Any) -> list[dict[str, Any]]:
    out = [{"t_ms": t * 1000, "wall": wall0 + t, "boot": boot, "incident": 1, "service": "web",
            "kind": k, "reason": k} for t, k in steps]
    out[-1].update(close)
    return out


def test_phases_split_the_incident_and_add_up() -> None:
    p = phases(recs((10.0, "verdict"), (10.5, "threshold"), (10.5, "restart_issued"),
                    (10.6, "restart_done"), (11.0, "verdict"), (11.5, "recovered"),
                    serving_t_ms=11_000.0))
    assert (p.detect, p.decide, p.act, p.serving) == pytest.approx((0.5, 0.0, 0.1, 0.4))
    assert p.total == pytest.approx(1.0)
    assert p.detect + p.decide + p.act + p.serving == pytest.approx(p.total, abs=1e-9)
    assert p.confirm == pytest.approx(0.5) and not p.open


@pytest.mark.parametrize("steps,expect", [
    # a blip: never decided, all of it was detection
    ([(0.0, "verdict"), (0.3, "recovered")], (0.3, 0, 0, 0)),
    # blocked by a dependency: decided nothing, waited
    ([(0.0, "unit_down"), (0.0, "threshold"), (2.0, "recovered")], (0, 2.0, 0, 0)),
    # backoff, a failed restart, a second one that worked
    ([(0.0, "verdict"), (1.0, "threshold"), (3.0, "restart_issued"), (3.1, "restart_failed"),
      (5.0, "restart_issued"), (5.2, "restart_done"), (6.0, "recovered")], (1.0, 2.0, 2.2, 0.8)),
    # still open: up to the last record
    ([(0.0, "verdict"), (0.5, "threshold"), (0.5, "ladder")], (0.5, 0, 0, 0)),
])
def test_phases_with_missing_boundaries(steps: list[tuple[float, str]],
                                        expect: tuple[float, ...]) -> None:
    p = phases(recs(*steps))
    assert (p.detect, p.decide, p.act, p.serving) == pytest.approx(expect)
    assert sum(expect) == pytest.approx(p.total)


def test_phases_across_a_reboot_use_wall_time() -> None:
    before = recs((100.0, "verdict"), (100.0, "threshold"), (100.2, "ladder"),
                  (100.3, "escalation_sent"), boot="b1")
    # the recreated VM: its monotonic clock starts again near zero
    after = [{"t_ms": 5000.0, "wall": 1e9 + 130.0, "boot": "b2", "incident": 1,
              "service": "web", "kind": "resumed", "reason": ""},
             {"t_ms": 5500.0, "wall": 1e9 + 130.5, "boot": "b2", "incident": 1,
              "service": "web", "kind": "recovered", "reason": "", "serving_t_ms": 5300.0}]
    p = phases(before + after)
    assert p.total == pytest.approx(30.3)
    # no restart_done: the recreation is all "act"
    assert p.decide == pytest.approx(0.2) and p.act == pytest.approx(30.1) and p.serving == 0
    assert p.confirm == pytest.approx(0.2)
    text = format_timeline(before + after)
    assert "(after a reboot)" in text and "+30.000 s" in text


# ============================================================ the service tracker


def service_spec(**kw: Any) -> ServiceSpec:
    return make_spec(interval=0.1, **kw)


OK = Verdict("http", Status.OK, "200 OK")
BAD = Verdict("http", Status.CRITICAL, "http://127.0.0.1/ timed out after 1 s")


class Driven:
    """The real machine and a tracker, driven like ServiceRunner._drive does."""

    def __init__(self, j: Journal, clock: Clock, spec: ServiceSpec | None = None,
                 tracker: ServiceTracker | None = None) -> None:
        self.clock = clock
        self.machine = Machine(spec or service_spec(), clock(), rng=random.Random(1))
        self.tracker = tracker or ServiceTracker("web", j)

    def at(self, t: float, item: Input) -> None:
        self.clock.t = t
        before = self.machine.state
        actions = self.machine.transition(item, t)
        self.tracker.feed(item, before, actions, t)

    def up(self, t: float) -> None:
        self.at(t, OK)
        self.at(t + 0.1, OK)
        assert self.state() is S.UP

    def state(self) -> ServiceState:
        return self.machine.state


def incident_records(j: Journal, n: int | None = None) -> list[dict[str, Any]]:
    incidents, _ = split_incidents(j.read())
    inc = incidents[-1] if n is None else next(i for i in incidents if i.id == n)
    return inc.records


def test_a_sigkilled_service_timeline_adds_up_to_the_outage(tmp_path: Path) -> None:
    clock = Clock(0.0)
    j = journal(tmp_path, clock)
    d = Driven(j, clock)
    d.up(1.0)
    killed = 20.0                                    # SIGKILL; the pidfd sees it at once
    d.at(killed, UnitDown("command web: process 4242 exited"))
    assert d.state() is S.RESTARTING
    d.at(20.031, RestartFinished(True, "command web in 31ms, pid 4250"))
    d.at(20.05, BAD)                                 # not listening yet
    d.at(20.15, OK)                                  # serving again
    d.at(20.25, OK)
    assert d.state() is S.UP
    records = incident_records(j)
    assert [r["kind"] for r in records] == ["unit_down", "threshold", "restart_issued",
                                            "restart_done", "verdict", "verdict", "recovered"]
    assert records[-1]["serving_t_ms"] == pytest.approx(20_150.0)
    p = phases(records)
    outage = 20.15 - killed                          # what a client measured
    assert p.total == pytest.approx(outage)
    assert p.detect + p.decide + p.act + p.serving == pytest.approx(outage)
    assert (p.detect, p.decide, p.act, p.serving) == pytest.approx((0, 0, 0.031, 0.119))
    assert p.confirm == pytest.approx(0.1)
    assert d.tracker.last_phases == p
    assert d.tracker.incident is None


def test_failing_verdicts_threshold_and_recovery(tmp_path: Path) -> None:
    clock = Clock(0.0)
    j = journal(tmp_path, clock)
    d = Driven(j, clock)
    d.up(1.0)
    d.at(10.0, BAD)
    d.at(10.1, BAD)                                  # fall = 2: restart
    d.at(10.2, BAD)                                  # during the restart: same status
    d.at(10.3, RestartFinished(True, "restarted"))
    d.at(10.4, OK)
    d.at(10.5, OK)
    records = incident_records(j)
    kinds = [r["kind"] for r in records]
    assert kinds == ["verdict", "state", "threshold", "restart_issued", "restart_done",
                     "verdict", "recovered"]
    assert records[0]["reason"].startswith("CRITICAL http: ") and records[0]["check"] == "http"
    assert records[1]["reason"].startswith("up -> failing")
    assert records[2]["old"] == "failing" and records[2]["new"] == "restarting"
    assert records[3]["attempt"] == 1 and records[3]["budget"] == 3
    p = phases(records)
    assert (p.detect, p.decide, p.act, p.serving, p.total) == pytest.approx(
        (0.1, 0.0, 0.2, 0.1, 0.4))
    text = format_timeline(records)
    assert text.splitlines()[0].startswith("incident #1  service web  ")
    assert "   +0.000 s  verdict            CRITICAL http: http://127.0.0.1/ timed out" in text
    assert ("phases: detect 0.100 s -> decide 0.000 s -> act 0.200 s -> serving again "
            "0.100 s = 0.400 s; up confirmed 0.100 s later") in text


def test_serving_again_waits_for_every_check(tmp_path: Path) -> None:
    clock = Clock(0.0)
    j = journal(tmp_path, clock)
    spec = service_spec(checks=(CheckSpec("http", NullCheck(), 0.1, 1.0),
                                CheckSpec("tcp", NullCheck(), 0.1, 1.0)))
    d = Driven(j, clock, spec)
    tcp_ok = Verdict("tcp", Status.OK, "connected")
    for t in (1.0, 1.1):
        d.at(t, OK)
        d.at(t, tcp_ok)
    assert d.state() is S.UP
    d.at(5.0, UnitDown("gone"))
    d.at(5.02, RestartFinished(True, "ok"))
    d.at(5.1, OK)
    d.at(5.12, Verdict("tcp", Status.UNKNOWN, "probe error"))   # says nothing
    d.at(5.15, tcp_ok)
    d.at(5.2, OK)
    d.at(5.25, tcp_ok)
    assert d.state() is S.UP
    records = incident_records(j)
    assert records[-1]["serving_t_ms"] == pytest.approx(5150.0)
    p = phases(records)
    assert p.total == pytest.approx(0.15) and p.confirm == pytest.approx(0.1)


def test_a_blip_is_an_incident_of_detection_only(tmp_path: Path) -> None:
    clock = Clock(0.0)
    j = journal(tmp_path, clock)
    d = Driven(j, clock, service_spec(fall=3))
    d.up(1.0)
    d.at(5.0, BAD)
    d.at(5.1, OK)
    d.at(5.2, OK)
    records = incident_records(j)
    assert [r["kind"] for r in records] == ["verdict", "state", "verdict", "recovered"]
    p = phases(records)
    assert p.detect == pytest.approx(0.1) and p.total == pytest.approx(0.1)


def test_failure_at_start_is_back_dated_to_the_first_failing_verdict(tmp_path: Path) -> None:
    clock = Clock(0.0)
    j = journal(tmp_path, clock)
    d = Driven(j, clock, service_spec(start_grace=1.0))
    d.at(0.2, BAD)                                   # within the start grace: no action
    assert d.tracker.incident is None
    d.at(0.5, BAD)
    d.at(1.0, Tick())                                # grace over: restart
    assert d.state() is S.RESTARTING
    records = incident_records(j)
    assert [(r["kind"], r["t_ms"]) for r in records][:2] == [("verdict", 200.0),
                                                             ("threshold", 1000.0)]


def test_passing_again_forgets_a_failure_at_start(tmp_path: Path) -> None:
    clock = Clock(0.0)
    j = journal(tmp_path, clock)
    d = Driven(j, clock)
    d.at(0.2, BAD)
    d.at(0.3, OK)
    d.at(0.4, OK)
    assert d.state() is S.UP
    assert [(r["kind"], r.get("incident")) for r in j.read()] == [("state", None)]


def test_ladder_and_escalation_are_recorded(tmp_path: Path) -> None:
    clock = Clock(0.0)
    j = journal(tmp_path, clock)
    spec = service_spec(restart=RestartPolicy(budget=1, window=300, backoff=1.0, factor=2.0,
                                              backoff_max=30, jitter=0.0, timeout=10,
                                              exhausted_retry=60),
                        ladder=(LadderStep(LadderAction.ESCALATE), LadderStep(LadderAction.ALERT)))
    d = Driven(j, clock, spec)
    d.up(1.0)
    d.at(10.0, UnitDown("gone"))
    d.at(10.1, RestartFinished(False, "exit status 1"))
    assert d.state() is S.EXHAUSTED
    d.tracker.escalation(10.2, "sent", "request 7f3a to dom0", request="7f3a")
    d.tracker.escalation(10.4, "accepted", "dom0 recreates the VM")
    kinds = [r["kind"] for r in incident_records(j)]
    assert kinds == ["unit_down", "threshold", "restart_issued", "restart_failed", "ladder",
                     "ladder", "state", "escalation_sent", "escalation_accepted"]
    assert d.tracker.incident == 1


def test_observe_mode_would_do_is_the_threshold(tmp_path: Path) -> None:
    from guardian import Mode

    clock = Clock(0.0)
    j = journal(tmp_path, clock)
    d = Driven(j, clock, service_spec(mode=Mode.OBSERVE))
    d.up(1.0)
    d.at(5.0, BAD)
    d.at(5.1, BAD)
    d.at(5.2, OK)
    d.at(5.3, OK)
    records = incident_records(j)
    assert [r["kind"] for r in records] == ["verdict", "state", "threshold", "verdict",
                                            "recovered"]
    assert records[2]["would"] == "restart"


def test_the_incident_survives_a_daemon_restart_and_a_reboot(tmp_path: Path) -> None:
    clock = Clock(0.0, wall=1_700_000_000.0)
    j = journal(tmp_path, clock)
    tl = Timeline(j)
    d = Driven(j, clock, tracker=tl.service("web"))
    d.up(1.0)
    d.at(10.0, UnitDown("gone"))
    assert d.tracker.incident == 1
    tl.close(10.5)                                   # dom0 recreates the VM ...
    clock2 = Clock(3.0, wall=1_700_000_000.0 + 40.0)  # ... which boots 30 s later
    j2 = Journal(tmp_path, clock=clock2, wall_clock=clock2.wall, boot="boot-2")
    tl2 = Timeline(j2)
    d2 = Driven(j2, clock2, tracker=tl2.service("web"))
    assert d2.tracker.incident == 1
    d2.at(3.2, OK)
    d2.at(3.3, OK)
    records = incident_records(j2, 1)
    kinds = [r["kind"] for r in records]
    assert kinds[-4:] == ["state", "resumed", "verdict", "recovered"]
    assert records[-3]["reason"].startswith("guardian started after a reboot")
    p = phases(records)
    assert p.total == pytest.approx(30.2)
    assert p.detect + p.decide + p.act + p.serving == pytest.approx(p.total)
    assert j2.new_incident() == 2


def test_an_old_open_incident_is_not_resumed(tmp_path: Path) -> None:
    clock = Clock(0.0)
    j = journal(tmp_path, clock)
    t = ServiceTracker("web", j)
    t.open(1.0, "unit_down", "gone")
    j.close()
    assert open_incidents(j.read(), now_wall=clock.wall() + 60) != {}
    assert open_incidents(j.read(), now_wall=clock.wall() + 3600, max_age=600) == {}


# ============================================================ the pair tracker


def test_a_takeover_timeline(tmp_path: Path) -> None:
    clock = Clock(0.0)
    j = journal(tmp_path, clock)
    t = PairTracker("vip", j)
    t.feed([StateChange(PairState.INIT, PairState.BACKUP, "peer is master")], 1.0)
    t.feed([Notice("suspect", "peer 'vm01' silent for 0.150 s")], 100.0)
    t.feed([Notice("peer-dead", "10 probes unanswered"), TakeVIPs("peer 'vm01' is dead"),
            StateChange(PairState.BACKUP, PairState.MASTER, "peer 'vm01' is dead"),
            RunNotify(PairState.MASTER, "x")], 100.06)
    t.vips_configured(100.0615)
    t.announced(100.063)
    t.announced(100.3)                               # later rounds: not recorded
    records = incident_records(j)
    assert [r["kind"] for r in records] == ["suspect", "threshold", "takeover", "state",
                                            "vip_taken", "announce", "recovered"]
    assert all(r["group"] == "vip" for r in records)
    p = phases(records)
    assert (p.detect, p.decide, p.act, p.serving) == pytest.approx((0.06, 0, 0.0015, 0.0015))


def test_a_suspicion_that_clears_leaves_no_trace(tmp_path: Path) -> None:
    j = journal(tmp_path)
    t = PairTracker("vip", j)
    t.feed([StateChange(PairState.INIT, PairState.BACKUP, "x")], 1.0)
    for i in range(100):
        t.feed([Notice("suspect", "silent")], 2.0 + i)
        t.feed([Notice("peer-alive", "talking again")], 2.01 + i)
    assert [r["kind"] for r in j.read()] == ["state"]


def test_a_master_fault_takeover_and_a_release(tmp_path: Path) -> None:
    j = journal(tmp_path)
    t = PairTracker("vip", j)
    t.feed([StateChange(PairState.INIT, PairState.BACKUP, "x")], 1.0)
    t.feed([TakeVIPs("peer 'vm01' is fault: apache2 failed"),
            StateChange(PairState.BACKUP, PairState.MASTER, "peer is fault")], 5.0)
    assert t.incident is not None
    t.vips_configured(5.002)
    t.announced(5.003)
    assert t.incident is None
    t.feed([ReleaseVIPs("shutting down"),
            StateChange(PairState.MASTER, PairState.STOPPED, "shutting down")], 9.0)
    incidents, other = split_incidents(j.read())
    assert len(incidents) == 1 and incidents[0].records[0]["kind"] == "takeover"
    assert [r["kind"] for r in other] == ["state", "vip_released", "state"]


def test_a_silent_peer_at_start_is_not_an_incident(tmp_path: Path) -> None:
    j = journal(tmp_path)
    t = PairTracker("vip", j)
    t.feed([Notice("suspect", "never heard the peer")], 2.0)
    t.feed([Notice("peer-dead", "never heard the peer; 10 probes unanswered"),
            TakeVIPs("no peer"), StateChange(PairState.INIT, PairState.MASTER, "no peer")], 2.1)
    t.vips_configured(2.101)
    t.announced(2.102)
    assert t.incidents == 0
    assert [r["kind"] for r in j.read()] == ["notice", "takeover", "state", "vip_taken",
                                            "announce"]


def test_an_announcement_alone_closes_the_takeover(tmp_path: Path) -> None:
    j = journal(tmp_path)
    t = PairTracker("vip", j)
    t.feed([StateChange(PairState.INIT, PairState.BACKUP, "x")], 1.0)
    t.feed([Notice("peer-dead", "silent"), TakeVIPs("dead")], 10.0)
    t.announced(10.004)
    assert t.incident is None and t.last_phases is not None
    assert t.last_phases.total == pytest.approx(0.004)


def test_foreign_node_notices_are_rate_limited(tmp_path: Path) -> None:
    j = journal(tmp_path)
    t = PairTracker("vip", j)
    for i in range(50):
        t.feed([Notice("foreign-node", "message from 'intruder'")], 1.0 + i * 0.1)
    assert len(list(j.read())) == 1


def test_convergence_closes_the_takeover_when_checked(tmp_path: Path) -> None:
    j = journal(tmp_path)
    t = PairTracker("vip", j, convergence=True)
    t.feed([StateChange(PairState.INIT, PairState.BACKUP, "x")], 1.0)
    t.feed([Notice("peer-dead", "silent"), TakeVIPs("dead")], 10.0)
    t.vips_configured(10.001)
    t.announced(10.002)
    assert t.incident is not None
    t.converged(10.05, True, "192.0.2.1 maps 192.0.2.100 to us")
    assert t.incident is None
    p = t.last_phases
    assert isinstance(p, Phases)
    assert p.total == pytest.approx(0.05) and p.serving == pytest.approx(0.049)


# ============================================================ guardian events


def scripted_journal(tmp_path: Path) -> tuple[Journal, Clock]:
    clock = Clock(0.0)
    j = journal(tmp_path, clock)
    d = Driven(j, clock)
    d.up(1.0)
    d.at(10.0, UnitDown("process 1 exited"))
    d.at(10.03, RestartFinished(True, "restarted"))
    d.at(10.1, OK)
    d.at(10.2, OK)
    clock.t = 4000.0
    d.at(4000.0, BAD)
    d.at(4000.1, BAD)
    j.close()
    return j, clock


def test_render_events_text_and_json(tmp_path: Path) -> None:
    j, _ = scripted_journal(tmp_path)
    text = render_events(j.read())
    blocks = text.split("\n\n")
    assert len(blocks) == 3
    assert blocks[0].endswith("  web  state  starting -> up: all checks passing")
    assert "incident #1  service web" in blocks[1] and "recovered after 0.100 s" in blocks[1]
    assert "     +0.030 s  restart_done       restarted" in blocks[1]
    assert "incident #2  service web" in blocks[2] and "still open" in blocks[2]
    assert blocks[2].rstrip().endswith("(still open)")
    doc = json.loads(render_events(j.read(), as_json=True))
    assert [i["incident"] for i in doc["incidents"]] == [1, 2]
    first = doc["incidents"][0]
    assert first["service"] == "web" and first["open"] is False
    assert first["phases"]["total"] == pytest.approx(0.1)
    assert [e["kind"] for e in doc["events"]] == ["state"]
    assert render_events([]) == "no events recorded"


def test_load_events_keeps_whole_incidents(tmp_path: Path) -> None:
    j, clock = scripted_journal(tmp_path)
    since = clock.wall0 + 10.05                      # in the middle of incident 1
    got = load_events(tmp_path, since=since)
    incidents, other = split_incidents(got)
    assert [i.id for i in incidents] == [1, 2]
    assert incidents[0].records[0]["kind"] == "unit_down"
    assert other == []                               # the start record is older
    assert load_events(tmp_path, service="other") == []
    assert load_events(tmp_path, since=clock.wall0 + 5000) == []


def test_events_command(tmp_path: Path) -> None:
    scripted_journal(tmp_path)
    with open(tmp_path / "journal.jsonl", "ab") as f:
        f.write(b"{torn")
    text = events_command(tmp_path, since="100000d", service="web")
    assert "incident #1  service web" in text
    assert text.endswith("(1 damaged journal line(s) skipped)")
    doc = json.loads(events_command(tmp_path, as_json=True))
    assert len(doc["incidents"]) == 2
    assert events_command(tmp_path, service="nothing").startswith("no events recorded\n(1 ")
    with pytest.raises(ValueError, match="--since"):
        events_command(tmp_path, since="soon")


def test_parse_since() -> None:
    now = 1_700_000_000.0
    assert parse_since("10m", now) == now - 600
    assert parse_since("90", now) == now - 90
    assert parse_since("1d", now) == now - 86400
    assert parse_since("1700000123.5", now) == 1700000123.5
    expected = time.mktime(time.strptime("2024-05-01 12:00", "%Y-%m-%d %H:%M"))
    assert parse_since("2024-05-01 12:00", now) == expected
    assert parse_since("2024-05-01T12:00:00+00:00", now) == 1714564800.0
    with pytest.raises(ValueError, match="--since 'yesterday'"):
        parse_since("yesterday", now)


def test_records_keep_their_order_over_many_incidents(tmp_path: Path) -> None:
    clock = Clock(0.0)
    j = journal(tmp_path, clock, max_bytes=4096, keep=8)
    d = Driven(j, clock, service_spec(restart=RestartPolicy(
        budget=1000, window=300, backoff=1.0, factor=2.0, backoff_max=30, jitter=0.0,
        timeout=10, exhausted_retry=60)))
    d.up(1.0)
    for n in range(20):
        t = 10.0 + n * 10
        d.at(t, UnitDown("gone"))
        d.at(t + 0.02, RestartFinished(True, "ok"))
        d.at(t + 0.1, OK)
        d.at(t + 0.2, OK)
    j.close()
    incidents, _ = split_incidents(j.read())
    assert [i.id for i in incidents][-1] == 20
    for inc in incidents:
        if inc.records[0]["kind"] == "unit_down":
            assert inc.phases().total == pytest.approx(0.1)
