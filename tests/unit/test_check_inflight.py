"""At most one run of a check is in flight; a hung probe delays no other check.

A blocking probe runs in a thread, and a thread cannot be killed: when it hangs
past its deadline, the next run of the same check does not start a second
thread: it waits for the first within its own deadline, runs a fresh probe if
that one returned in time, and answers CRITICAL "previous probe still running"
if it did not.
"""

from __future__ import annotations

import asyncio
import threading
import time

from checks import BlockingCheck, CheckResult, Options, Status, run_check


class HangingCheck(BlockingCheck):
    """Blocks on ``release`` while ``hang`` is set; counts the threads it ran in."""

    kind = "test-hanging"

    def __init__(self) -> None:
        self.hang = True
        self.release = threading.Event()
        self.threads: list[str] = []
        self.lock = threading.Lock()

    @classmethod
    def from_options(cls, opts: Options) -> HangingCheck:
        return cls()

    def probe_blocking(self, deadline: float) -> CheckResult:
        with self.lock:
            self.threads.append(threading.current_thread().name)
        if self.hang:
            self.release.wait(30.0)
        return CheckResult(Status.OK, "answered")


class QuickCheck(BlockingCheck):
    kind = "test-quick"

    @classmethod
    def from_options(cls, opts: Options) -> QuickCheck:
        return cls()

    def probe_blocking(self, deadline: float) -> CheckResult:
        time.sleep(0.005)
        return CheckResult(Status.OK, "quick")


def probe_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name.startswith("probe:HangingCheck") and t.is_alive()]


def test_hung_probe_is_not_run_twice_and_delays_no_other_check() -> None:
    hanging, quick = HangingCheck(), QuickCheck()

    async def scenario() -> None:
        quick_results: list[tuple[float, CheckResult]] = []

        async def quick_loop() -> None:
            while True:
                quick_results.append((time.monotonic(), await run_check(quick, 0.5)))
                await asyncio.sleep(0.01)

        other = asyncio.create_task(quick_loop())
        try:
            # 1. the probe hangs: CRITICAL at its deadline; its thread lives on
            t0 = time.monotonic()
            first = await run_check(hanging, 0.2)
            assert first.status is Status.CRITICAL
            assert "timed out after 0.2 s" in first.detail
            assert 0.15 <= time.monotonic() - t0 < 0.6
            assert len(hanging.threads) == 1 and len(probe_threads()) == 1

            # 2. the next runs start no second thread: each waits for the hung one
            #    within its own deadline, then answers CRITICAL (one slow answer is
            #    not judged twice)
            for _ in range(3):
                t1 = time.monotonic()
                again = await run_check(hanging, 0.2)
                assert 0.15 <= time.monotonic() - t1 < 0.3
                assert again.status is Status.CRITICAL
                assert "previous probe still running (hung for " in again.detail
            hung_for = float(again.detail.rsplit("hung for ", 1)[1].split(" s)")[0])
            assert hung_for >= 0.6
            assert len(hanging.threads) == 1 and len(probe_threads()) == 1

            # 3. meanwhile the other check kept answering on time
            during = [r for at, r in quick_results if at > t0]
            assert len(during) >= 10, len(during)
            assert all(r.status is Status.OK and r.duration < 0.2 for r in during)

            # 4. once the hung probe returns, runs resume normally
            hanging.hang = False
            hanging.release.set()
            deadline = time.monotonic() + 5.0
            while probe_threads() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert not probe_threads()
            resumed = await run_check(hanging, 0.2)
            assert resumed.status is Status.OK, resumed.detail
            assert resumed.detail == "answered"
            assert len(hanging.threads) == 2
        finally:
            hanging.release.set()
            other.cancel()

    asyncio.run(scenario())


def test_in_flight_is_per_check() -> None:
    """Another instance of the same check class is not held up by a hung one."""
    stuck, fresh = HangingCheck(), HangingCheck()
    fresh.hang = False

    async def scenario() -> None:
        try:
            assert (await run_check(stuck, 0.05)).status is Status.CRITICAL
            assert (await run_check(fresh, 0.5)).status is Status.OK
            assert (await run_check(fresh, 0.5)).status is Status.OK
            assert "previous probe still running" in (await run_check(stuck, 0.05)).detail
            assert len(fresh.threads) == 2 and len(stuck.threads) == 1
        finally:
            stuck.release.set()

    asyncio.run(scenario())


def test_quick_successive_runs_never_see_their_own_previous_thread() -> None:
    """The in-flight mark is cleared before the result is delivered: back-to-back
    runs of a healthy probe never report a 'previous probe still running'."""
    quick = QuickCheck()

    async def scenario() -> list[CheckResult]:
        return [await run_check(quick, 1.0) for _ in range(50)]

    results = asyncio.run(scenario())
    assert all(r.status is Status.OK for r in results), [r.detail for r in results]


class SlowOnceCheck(BlockingCheck):
    """The first probe answers 0.1 s after its deadline; later ones at once."""

    kind = "test-slow-once"

    def __init__(self) -> None:
        self.calls = 0

    @classmethod
    def from_options(cls, opts: Options) -> SlowOnceCheck:
        return cls()

    def probe_blocking(self, deadline: float) -> CheckResult:
        self.calls += 1
        if self.calls == 1:
            time.sleep(max(0.0, deadline - time.monotonic()) + 0.1)
        return CheckResult(Status.OK, f"answer {self.calls}")


def test_one_slow_answer_is_judged_once() -> None:
    """A probe that overruns its deadline by a little: the next run waits for it
    and then probes afresh, instead of a second CRITICAL for the same answer."""
    slow = SlowOnceCheck()

    async def scenario() -> tuple[CheckResult, CheckResult]:
        first = await run_check(slow, 0.2)
        second = await run_check(slow, 0.5)
        return first, second

    first, second = asyncio.run(scenario())
    assert first.status is Status.CRITICAL and "timed out" in first.detail
    assert second.status is Status.OK, second.detail
    assert second.detail == "answer 2"
