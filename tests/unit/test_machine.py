"""The service state machine as scenario tables on a virtual clock (no sleeps)."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from unit_helpers import service_spec

from checks import Status
from guardian import (
    LadderAction,
    LadderStep,
    Machine,
    Mode,
    RestartPolicy,
    ServiceSpec,
    ServiceState,
)
from guardian._machine import (
    DepsChanged,
    Restart,
    RestartFinished,
    RunStep,
    StateChange,
    Tick,
    UnitDown,
    Verdict,
    WouldDo,
)

S = ServiceState
OK = Verdict("http", Status.OK, "200 OK")
BAD = Verdict("http", Status.CRITICAL, "http://127.0.0.1/ timed out after 1 s")
UNK = Verdict("http", Status.UNKNOWN, "probe error")


def spec(**kw: Any) -> ServiceSpec:
    return service_spec(**kw)


def run(machine: Machine, steps: list[tuple[float, object, ServiceState, list[type]]]) -> None:
    """Each step: (time, input, state after, kinds of actions other than StateChange)."""
    for i, (t, event, state, kinds) in enumerate(steps):
        actions = machine.transition(event, t)  # type: ignore[arg-type]
        got = [type(a) for a in actions if not isinstance(a, StateChange)]
        assert machine.state is state, f"step {i} at t={t}: {machine.state} ({machine.reason})"
        assert got == kinds, f"step {i} at t={t}: actions {got}, expected {kinds}"


def up_machine() -> Machine:
    m = Machine(spec(), 0.0, rng=random.Random(1))
    run(m, [(0.1, OK, S.STARTING, []), (1.1, OK, S.UP, [])])
    return m


def test_rise_then_fall_then_restart_then_recover() -> None:
    m = up_machine()
    run(m, [
        (2.1, BAD, S.FAILING, []),
        (3.1, BAD, S.RESTARTING, [Restart]),
        (3.2, RestartFinished(True, "ok"), S.RECOVERING, []),
        (4.2, OK, S.RECOVERING, []),
        (5.2, OK, S.UP, []),
    ])
    assert m.budget_used == 1


def test_restart_reason_names_the_check_and_budget() -> None:
    m = up_machine()
    m.transition(BAD, 2.0)
    actions = m.transition(BAD, 3.0)
    change = [a for a in actions if isinstance(a, StateChange)][0]
    assert change.new is S.RESTARTING
    assert "2/2 CRITICAL (http://127.0.0.1/ timed out after 1 s)" in change.reason
    assert "budget 1/3" in change.reason


def test_single_failure_below_fall_does_not_restart() -> None:
    m = up_machine()
    run(m, [(2.0, BAD, S.FAILING, []), (3.0, OK, S.UP, []), (4.0, BAD, S.FAILING, []),
             (5.0, OK, S.UP, [])])
    assert m.budget_used == 0


def test_unknown_never_restarts() -> None:
    m = up_machine()
    run(m, [(2.0 + i, UNK, S.UP, []) for i in range(10)])
    assert m.budget_used == 0


def test_unit_down_restarts_at_once_without_waiting_for_fall() -> None:
    m = up_machine()
    run(m, [(2.0, UnitDown("process 42 exited"), S.RESTARTING, [Restart])])


def test_backoff_grows_and_budget_leads_to_ladder_once() -> None:
    m = up_machine()
    run(m, [
        (10.0, UnitDown("died"), S.RESTARTING, [Restart]),           # 1st: immediate
        (10.1, RestartFinished(True, "ok"), S.RECOVERING, []),
        (10.2, UnitDown("died"), S.BACKOFF, []),                      # 2nd waits 1 s
        (10.5, Tick(), S.BACKOFF, []),
        (11.2, Tick(), S.RESTARTING, [Restart]),
        (11.3, RestartFinished(True, "ok"), S.RECOVERING, []),
        (11.4, UnitDown("died"), S.BACKOFF, []),                      # 3rd waits 2 s
        (12.4, Tick(), S.BACKOFF, []),
        (13.4, Tick(), S.RESTARTING, [Restart]),
        (13.5, RestartFinished(True, "ok"), S.RECOVERING, []),
        (13.6, UnitDown("died"), S.EXHAUSTED, [RunStep, RunStep]),    # budget spent: ladder
    ])
    assert m.budget_used == 3
    # still probing: verdicts keep coming, nothing more happens, state says so
    run(m, [(14.0, BAD, S.EXHAUSTED, []), (15.0, BAD, S.EXHAUSTED, [])])
    assert m.wakeup is not None and m.wakeup > 15.0
    # and it recovers by itself when the service comes back
    run(m, [(16.0, OK, S.EXHAUSTED, []), (17.0, OK, S.UP, [])])


def test_exhausted_retries_slowly_and_does_not_rerun_ladder() -> None:
    m = up_machine()
    m.spec = spec(restart=replace(m.spec.restart, budget=1, exhausted_retry=60, backoff_max=30))
    run(m, [
        (10.0, UnitDown("died"), S.RESTARTING, [Restart]),
        (10.1, RestartFinished(False, "spawn error"), S.EXHAUSTED, [RunStep, RunStep]),
    ])
    assert m.wakeup == pytest.approx(70.1)
    run(m, [(70.1, Tick(), S.RESTARTING, [Restart]),
            (70.2, RestartFinished(False, "spawn error"), S.EXHAUSTED, [])])


def test_failed_restart_counts_and_backs_off() -> None:
    m = up_machine()
    run(m, [
        (10.0, UnitDown("died"), S.RESTARTING, [Restart]),
        (10.1, RestartFinished(False, "ERROR (spawn error)"), S.BACKOFF, []),
    ])
    assert "restart failed" in m.reason


def test_start_grace_hides_failures_until_it_ends() -> None:
    m = Machine(spec(), 0.0)
    run(m, [(1.0, BAD, S.STARTING, []), (2.0, BAD, S.STARTING, []), (3.0, BAD, S.STARTING, []),
             (5.0, Tick(), S.RESTARTING, [Restart])])


def test_dependency_down_blocks_instead_of_restarting() -> None:
    m = up_machine()
    run(m, [
        (2.0, DepsChanged(("db",)), S.UP, []),
        (3.0, BAD, S.FAILING, []),
        (4.0, BAD, S.BLOCKED, []),
        (5.0, BAD, S.BLOCKED, []),
        # the dependency is back: the start grace to recover by itself, then a restart
        (6.0, DepsChanged(()), S.RECOVERING, []),
        (7.0, BAD, S.RECOVERING, []),
        (8.0, BAD, S.RECOVERING, []),
    ])
    grace_end = 6.0 + m.spec.start_grace
    run(m, [(grace_end + 0.1, BAD, S.RESTARTING, [Restart])])
    assert "db" not in m.reason


def test_dead_dependent_is_restarted_when_its_dependency_is_back() -> None:
    m = up_machine()
    run(m, [(2.0, DepsChanged(("db",)), S.UP, []),
             (3.0, UnitDown("gone"), S.BLOCKED, []),
             (4.0, DepsChanged(()), S.RESTARTING, [Restart])])


def test_blocked_service_that_recovers_with_its_dependency() -> None:
    m = up_machine()
    run(m, [(2.0, DepsChanged(("db",)), S.UP, []), (3.0, BAD, S.FAILING, []),
             (4.0, BAD, S.BLOCKED, []), (5.0, OK, S.BLOCKED, []), (6.0, OK, S.UP, [])])
    assert m.budget_used == 0


def test_budget_window_slides_and_healthy_period_resets() -> None:
    m = up_machine()
    run(m, [(10.0, UnitDown("d"), S.RESTARTING, [Restart]),
             (10.1, RestartFinished(True, "ok"), S.RECOVERING, []),
             (11.0, OK, S.RECOVERING, []), (12.0, OK, S.UP, [])])
    assert m.budget_used == 1
    assert m.wakeup == pytest.approx(612.0)     # healthy_reset after up_since
    m.transition(Tick(), 612.0)
    assert m.budget_used == 0


def test_observe_mode_never_acts_but_counts() -> None:
    m = Machine(spec(mode=Mode.OBSERVE), 0.0)
    run(m, [(0.5, OK, S.STARTING, []), (1.0, OK, S.UP, []), (2.0, BAD, S.FAILING, []),
             (3.0, BAD, S.FAILING, [WouldDo]), (4.0, BAD, S.FAILING, []),
             (5.0, BAD, S.FAILING, [WouldDo])])
    assert m.would_do == 2
    assert m.budget_used == 0


def test_jitter_spreads_backoff_deterministically() -> None:
    pol = RestartPolicy(budget=5, backoff=2.0, jitter=0.5)
    delays = []
    for seed in range(20):
        m = Machine(spec(restart=pol), 0.0, rng=random.Random(seed))
        m.transition(OK, 0.1)
        m.transition(OK, 1.1)
        m.transition(UnitDown("d"), 2.0)
        m.transition(RestartFinished(True, "ok"), 2.1)
        m.transition(UnitDown("d"), 2.2)
        assert m.state is S.BACKOFF
        assert m.wakeup is not None
        delays.append(m.wakeup - 2.2)
    assert min(delays) >= 1.0 - 1e-9 and max(delays) <= 3.0 + 1e-9
    assert len({round(d, 6) for d in delays}) > 10


def test_policy_delay_sequence() -> None:
    pol = RestartPolicy(backoff=0.5, factor=3, backoff_max=10)
    assert [pol.delay(k) for k in range(5)] == [0.0, 0.5, 1.5, 4.5, 10.0]


def test_observe_mode_evaluates_budget_and_ladder() -> None:
    """Shadow mode runs the whole policy on would-be restarts: once the budget would
    be spent, it reports the ladder it would run, once per incident."""
    m = Machine(spec(mode=Mode.OBSERVE, restart=RestartPolicy(budget=2, window=300),
                     ladder=(LadderStep(LadderAction.FAILOVER), LadderStep(LadderAction.ALERT))),
                0.0)
    m.transition(OK, 0.5)
    m.transition(OK, 1.0)
    whats: list[str] = []
    t = 2.0
    for _ in range(10):
        for action in m.transition(BAD, t):
            if isinstance(action, WouldDo):
                whats.append(action.what)
        t += 1.0
    assert whats == ["restart", "restart", "failover", "alert"]
    assert m.budget_used == 0 and m.would_do == 4
    assert "would run the ladder (failover, alert)" in m.reason or "retry slowly" in m.reason
