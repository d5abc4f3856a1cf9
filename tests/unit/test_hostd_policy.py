"""guardian.hostd policy around the engine: maintenance mode, the alert hook (a real
script), the journal across a restart, idempotency after a recreate, the CLI."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_hostd_engine import POLICY, FakeClock, FakeDriver, body, vmspec

from guardian.hostd import (
    Alerter,
    Engine,
    Journal,
    StateStore,
    read_journal,
    read_maintenance,
    set_maintenance,
)
from guardian.hostd.__main__ import main

ALERT_SCRIPT = """#!/bin/sh
# one line per alert: EVENT VM DETAIL, then the JSON from stdin
out="$1"
{ printf '%s|%s|%s\\n' "$GUARDIAN_HOSTD_EVENT" "$GUARDIAN_HOSTD_VM" "$GUARDIAN_HOSTD_DETAIL"
  cat; } >> "$out"
"""


def script(tmp_path: Path, text: str = ALERT_SCRIPT, name: str = "notify") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def alerts(out: Path) -> list[tuple[str, dict[str, Any]]]:
    """(EVENT|VM|DETAIL line, the JSON event) per alert the script got."""
    if not out.exists():
        return []
    lines = out.read_text().splitlines()
    return [(lines[i], json.loads(lines[i + 1])) for i in range(0, len(lines), 2)]


class Env:
    def __init__(self, tmp_path: Path, *, argv: list[str] | None = None) -> None:
        self.dir = tmp_path / "state"
        self.out = tmp_path / "alerts.txt"
        self.clock = FakeClock()
        self.mono = [0.0]
        self.drivers = {"web1": FakeDriver(), "web2": FakeDriver()}
        cmd = argv if argv is not None else [str(script(tmp_path)), str(self.out)]
        self.alerter = Alerter(cmd, timeout=5, monotonic=lambda: self.mono[0])
        self.journal = Journal(self.dir)
        self.engine = self.new_engine()

    def new_engine(self) -> Engine:
        return Engine({"web1": vmspec("web1"), "web2": vmspec("web2")}, POLICY, self.drivers,
                      StateStore(self.dir), self.journal, self.clock, poll_interval=1.0,
                      alerter=self.alerter)

    def decisions(self) -> list[str]:
        return [str(r["decision"]) for r in read_journal(self.dir / "journal.jsonl")]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.alerter.close(5)
    e.journal.close()


# --------------------------------------------------------------- maintenance mode


def test_maintenance_refuses_and_alerts(env: Env) -> None:
    assert set_maintenance(env.dir, "web1", True, reason="kernel upgrade", now=1.0)
    assert read_maintenance(env.dir) == {"web1": {"reason": "kernel upgrade", "since": 1.0}}
    rid = str(uuid.uuid4())
    reply, job = env.engine.submit("web1", body(rid=rid))
    assert reply.status == 202 and job is None
    assert reply.body["state"] == "refused" and "maintenance" in reply.body["detail"]
    assert "kernel upgrade" in reply.body["detail"]
    # kept: the same id again is the same answer, still nothing done
    again, _ = env.engine.submit("web1", body(rid=rid))
    assert again.body["state"] == "refused"
    # as a fence target too
    reply, job = env.engine.submit("web2", body("web2", action="fence-peer", peer="web1"))
    assert reply.body["state"] == "refused" and job is None
    assert env.drivers["web1"].calls == [] and env.drivers["web2"].calls == []
    assert env.decisions() == ["maintenance", "maintenance"]
    assert env.engine.counters["maintenance"] == 2
    assert env.alerter.wait_idle(10)
    got = alerts(env.out)
    # one alert per VM and event per minute: the second one (target web1 too) suppressed
    assert len(got) == 1 and env.alerter.counters["alerts_suppressed"] == 1
    line, event = got[0]
    assert line.startswith("maintenance|web1|web1 is in maintenance mode (kernel upgrade)")
    assert event["request_id"] == rid and event["event"] == "maintenance"
    # off again (while "running"): accepted at once
    assert set_maintenance(env.dir, "web1", False, now=2.0)
    assert not set_maintenance(env.dir, "web1", False, now=2.0)
    reply, job = env.engine.submit("web1", body())
    assert reply.status == 202 and job


def test_maintenance_marker_survives_and_is_read_fresh(env: Env) -> None:
    set_maintenance(env.dir, "web2", True, reason="", now=5.0)
    engine2 = env.new_engine()  # a restarted hostd sees it
    assert engine2.snapshot().maintenance == {"web2": {"reason": "", "since": 5.0}}
    (env.dir / "maintenance" / "web2").write_text("garbage")
    assert "unreadable" in read_maintenance(env.dir)["web2"]["reason"]
    with pytest.raises(ValueError):
        set_maintenance(env.dir, "../etc", True, now=1.0)


# ------------------------------------------------------------------- alert hook


def test_every_refusal_alerts_with_env_and_json(env: Env) -> None:
    e = env.engine
    _, job = e.submit("web1", body())
    assert job
    e.execute(job)
    e.submit("web1", body(incarnation=0))  # stale
    e.submit("web1", body(incarnation=1))  # rate-limited
    e.submit("web1", body(vm="web2"))  # identity mismatch
    e.submit("web1", body(incarnation=1, action="fence-peer", peer="db9"))  # refused
    e.submit("web2", body("web2", rid=job))  # conflict
    env.drivers["web2"].fail_create = True
    _, job2 = e.submit("web2", body("web2"))
    assert job2
    e.execute(job2)  # failed
    assert env.alerter.wait_idle(10)
    got = {line.split("|")[0]: ev for line, ev in alerts(env.out)}
    assert set(got) == {"stale", "rate-limited", "identity-mismatch", "refused", "conflict",
                        "failed"}
    assert got["failed"]["vm"] == "web2" and "boom" in got["failed"]["detail"]
    assert got["stale"]["vm"] == "web1" and got["stale"]["reason"]["service"] == "apache2"
    assert env.alerter.counters["alerts_sent"] == 6
    assert all(e.counters[k] == 1 for k in ("stale", "rate_limited", "identity_mismatch",
                                             "refused", "conflict"))


def test_alert_storm_suppressed_per_vm_and_event_per_minute(env: Env) -> None:
    _, job = env.engine.submit("web1", body())
    assert job
    env.engine.execute(job)
    for _ in range(20):
        env.engine.submit("web1", body(incarnation=1))  # rate-limited, every time
    env.mono[0] += 61
    env.engine.submit("web1", body(incarnation=1))
    assert env.alerter.wait_idle(10)
    assert [line.split("|")[0] for line, _ in alerts(env.out)] == ["rate-limited"] * 2
    assert env.alerter.counters["alerts_suppressed"] == 19
    assert env.decisions().count("rate-limited") == 21  # the journal has every one


def test_failing_alert_command_is_journaled_and_never_blocks(tmp_path: Path) -> None:
    slow = script(tmp_path, "#!/bin/sh\nsleep 30\n", "slow")
    env = Env(tmp_path, argv=[str(slow)])
    env.alerter.timeout = 0.3
    try:
        t0 = time.monotonic()
        env.engine.submit("web1", body(action="fence-peer", peer="db9"))
        env.engine.submit("web2", body("web2", action="fence-peer", peer="db9"))
        assert time.monotonic() - t0 < 0.25  # the engine did not wait for the command
        assert env.alerter.wait_idle(10)
        assert env.alerter.counters["alert_failures"] == 2
        assert env.engine.counters["alert_failures"] == 2
        failed = [r for r in read_journal(env.dir / "journal.jsonl")
                  if r["decision"] == "alert-failed"]
        assert len(failed) == 2 and "did not finish" in failed[0]["detail"]
    finally:
        env.alerter.close(5)
        env.journal.close()
    missing = Alerter([str(tmp_path / "nope")], monotonic=lambda: 0.0)
    seen: list[str] = []
    missing.on_failure = lambda ev, why: seen.append(why)
    missing.alert({"event": "stale", "vm": "web1"})
    assert missing.wait_idle(10)
    missing.close()
    assert seen and "cannot run" in seen[0]


def test_alert_queue_is_bounded(tmp_path: Path) -> None:
    gate = threading.Event()
    a = Alerter(["true"], queue_size=2, min_gap=0)

    def run(event: dict[str, Any]) -> None:
        gate.wait(10)

    a._run = run  # type: ignore[method-assign]
    results = [a.alert({"event": "stale", "vm": f"vm{i}"}) for i in range(10)]
    gate.set()
    assert a.wait_idle(10)
    a.close()
    assert results.count(True) in (2, 3)  # the worker may have taken one already
    assert a.counters["alerts_dropped"] == results.count(False)


# ------------------------------------------------- journal and idempotency on restart


def test_journal_and_requests_survive_a_restart(env: Env) -> None:
    rid = str(uuid.uuid4())
    _, job = env.engine.submit("web1", body(rid=rid))
    assert job
    env.engine.execute(job)
    env.journal.close()
    # hostd restarts: a new engine on the same directories
    env.journal = Journal(env.dir)
    drivers = {"web1": FakeDriver(), "web2": FakeDriver()}
    env.drivers = drivers
    e2 = env.new_engine()
    assert e2.status("web1", rid).body["state"] == "done"
    assert e2.store.incarnation("web1") == 1
    # a late duplicate of the old request, after the recreate: nothing happens
    env.clock.advance(86400 * 3)
    reply, job2 = e2.submit("web1", body(rid=rid, incarnation=0))
    assert reply.status == 202 and reply.body["state"] == "done" and job2 is None
    assert drivers["web1"].calls == []
    # a new request from the old incarnation: stale, nothing happens
    assert e2.submit("web1", body(incarnation=0))[0].status == 409
    assert drivers["web1"].calls == []
    recs = read_journal(env.dir / "journal.jsonl")
    assert [r["decision"] for r in recs] == ["accepted", "finished", "stale"]
    assert recs[0]["request_id"] == recs[1]["request_id"] == rid
    assert recs[1]["outcome"] == "done" and recs[1]["reason"]["service"] == "apache2"


def test_interrupted_action_resumed_once_on_restart(env: Env) -> None:
    rid = str(uuid.uuid4())
    _, job = env.engine.submit("web1", body(rid=rid))
    assert job  # hostd "dies" before execute()
    e2 = env.new_engine()
    assert e2.status("web1", rid).body["state"] == "accepted"
    assert e2.resumable() == [rid]
    recs = read_journal(env.dir / "journal.jsonl")
    assert [r["decision"] for r in recs] == ["accepted", "resumed"]
    assert recs[1]["phase"] == "queued"
    e2.execute(rid)
    assert e2.status("web1", rid).body["state"] == "done"
    # a third engine has nothing to resume, and resuming is no alert
    assert env.new_engine().resumable() == []
    assert [r["decision"] for r in read_journal(env.dir / "journal.jsonl")] == [
        "accepted", "resumed", "finished"]
    assert env.alerter.wait_idle(10)
    assert alerts(env.out) == []


def test_interrupted_managed_restart_is_not_repeated_and_alerted(env: Env) -> None:
    rid = str(uuid.uuid4())
    _, job = env.engine.submit("web1", body(rid=rid))
    assert job
    with env.engine._lock:
        env.engine.store.requests[rid].update(state="in-progress", phase="restarting")
        env.engine.store.save()
    e2 = env.new_engine()
    assert e2.resumable() == []
    assert e2.status("web1", rid).body["state"] == "failed"
    recs = read_journal(env.dir / "journal.jsonl")
    assert [r["decision"] for r in recs] == ["accepted", "interrupted"]
    assert "not repeated" in recs[1]["detail"]
    assert env.alerter.wait_idle(10)
    assert [line.split("|")[0] for line, _ in alerts(env.out)] == ["interrupted"]


# ------------------------------------------------------------------------- metrics


def test_new_decisions_are_counted_for_prometheus(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from guardian._metrics import Metrics
    from guardian.hostd._app import CountingJournal

    metrics = Metrics("test")
    journal = CountingJournal(tmp_path / "j", metrics)
    out = tmp_path / "alerts.txt"
    alerter = Alerter([str(script(tmp_path, "#!/bin/sh\nexit 3\n", "fail"))],
                      monotonic=lambda: 0.0)
    engine = Engine({"web1": vmspec("web1")}, POLICY, {"web1": FakeDriver()},
                    StateStore(tmp_path / "j"), journal, FakeClock(), alerter=alerter)
    set_maintenance(tmp_path / "j", "web1", True, now=0.0)
    engine.submit("web1", body())
    assert alerter.wait_idle(10)
    alerter.close()
    journal.close()
    assert not out.exists()
    fams = {f.name: f for f in text_string_to_metric_families(metrics.text())}
    got = {s.labels["decision"]: s.value for s in fams["guardian_hostd_decisions"].samples
           if s.name.endswith("_total")}
    assert got == {"maintenance": 1.0, "alert-failed": 1.0}


# ----------------------------------------------------------------------------- CLI

CONFIG = """
[hostd]
listen = "127.0.0.1:7080"
state_dir = "STATE"

[policy]
min_interval = "10m"
max_actions = 2

[vms.web1]
uuid = "6f1c1d1e-0000-4000-8000-000000000001"
key_file = "/nonexistent"
driver = "xl"
config = "/etc/xen/web1.cfg"
"""


def test_cli_maintenance_and_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "hostd.toml"
    state = tmp_path / "st"
    cfg.write_text(CONFIG.replace("STATE", str(state)))
    now = time.time()
    store = StateStore(state)
    store.set_actions("web1", [now - 100, now - 50])
    store.save()
    assert main(["--config", str(cfg), "maintenance", "web1", "on", "--reason", "upgrade"]) == 0
    assert "web1: maintenance on: upgrade" in capsys.readouterr().out
    assert main(["--config", str(cfg), "status"]) == 0
    out = capsys.readouterr().out
    assert "2/2 action(s) in the window, next action allowed at " in out
    assert "max_actions 2" in out
    assert "web1: MAINTENANCE since " in out and "upgrade" in out
    assert main(["--config", str(cfg), "status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["vms"]["web1"]["maintenance"]["reason"] == "upgrade"
    assert data["vms"]["web1"]["actions_in_window"] == 2
    assert data["vms"]["web1"]["next_allowed"] == pytest.approx(now - 100 + 86400, abs=5)
    assert main(["--config", str(cfg), "maintenance", "web1", "off"]) == 0
    assert "maintenance off" in capsys.readouterr().out
    assert main(["--config", str(cfg), "maintenance", "web1", "off"]) == 0
    assert "(already)" in capsys.readouterr().out
    assert not os.listdir(state / "maintenance")
    assert main(["--config", str(cfg), "maintenance", "db9", "on"]) == 2
    assert "not a VM" in capsys.readouterr().err
