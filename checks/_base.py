"""The check interface and the hard wall-clock deadline every probe runs under.

A check is built once from its options (``from_options``) and then run many
times.  ``run_check`` is the single entry point the supervisor uses: it turns
the timeout into one absolute deadline, runs the probe, and guarantees an
answer by that deadline whatever the probe does (a blocking library stuck in
``recv`` included): a probe that does not finish in time is CRITICAL, a probe
that raises is UNKNOWN.
"""

from __future__ import annotations

import abc
import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from ._options import Options
from ._result import CheckResult, Status

C = TypeVar("C", bound="Check")


class ProbeError(Exception):
    """The probe itself could not run (local problem): the verdict is UNKNOWN."""


class Check(abc.ABC):
    """Base class of all probes (built-in and third-party).

    Subclasses set ``kind`` (the ``type`` used in config) and implement
    ``from_options`` and ``probe``.  ``probe`` receives an absolute deadline
    on the ``time.monotonic()`` clock and should pass what remains of it to
    every blocking call; ``run_check`` enforces it regardless.
    """

    kind: ClassVar[str] = ""

    @classmethod
    @abc.abstractmethod
    def from_options(cls: type[C], opts: Options) -> C:
        """Build the check from its config table (``build_check`` then calls ``opts.finish()``)."""

    @abc.abstractmethod
    async def probe(self, deadline: float) -> CheckResult:
        """Run once and return a verdict (``duration``/``started`` are filled in later)."""

    def describe(self) -> str:
        """The probe's target in a few words, for logs (``http://127.0.0.1/``)."""
        return self.kind


class BlockingCheck(Check):
    """A check written with a blocking library (requests, smtplib, dnspython).

    ``probe_blocking`` runs in a fresh daemon thread per run, so a probe stuck
    past its deadline occupies only its own thread and never a shared pool
    slot that another check needs.

    At most one run of a check is in flight.  A thread cannot be killed: when
    the previous run's thread still hangs past its deadline, the next run does
    not start a second one; it waits for it within its own deadline, and answers
    CRITICAL "previous probe still running" if it has not returned by then.
    """

    # the thread of the latest run: None before the first run
    _last_run: _ProbeThread[CheckResult] | None = None

    @abc.abstractmethod
    def probe_blocking(self, deadline: float) -> CheckResult:
        """Blocking body; use ``remaining(deadline)`` as the timeout of each call."""

    async def probe(self, deadline: float) -> CheckResult:
        last = self._last_run
        if last is not None and not last.finished.is_set():
            # The previous run's thread outlived its deadline (usually by a hair: its
            # socket timeout ends just after).  Give it this run's time to return
            # before judging: one slow answer must not count as two failures.
            until = deadline - _JUDGE_MARGIN
            while not last.finished.is_set() and time.monotonic() < until:
                await asyncio.sleep(_HUNG_POLL)
            if not last.finished.is_set():
                hung = time.monotonic() - last.started
                return CheckResult(Status.CRITICAL,
                                   f"{self.describe()}: previous probe still running "
                                   f"(hung for {hung:.1f} s)")
        run = _ProbeThread(self.probe_blocking, deadline)
        self._last_run = run
        return await run.result()


#: How often a run waiting for its predecessor's hung thread looks again (seconds),
#: and how long before its own deadline it gives up waiting and reports.
_HUNG_POLL = 0.01
_JUDGE_MARGIN = 0.02


def remaining(deadline: float, floor: float = 0.001) -> float:
    """Seconds left until ``deadline`` (never below ``floor``, for socket timeouts)."""
    return max(floor, deadline - time.monotonic())


T = TypeVar("T")


class _ProbeThread(Generic[T]):
    """``func(*args)`` in a new daemon thread; ``finished`` is set when it returns
    (before its result is handed to the loop, so an awaiter never sees it unset)."""

    def __init__(self, func: Callable[..., T], *args: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[T] = self.loop.create_future()
        self.finished = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._body, args=(func, args),
                                       name=f"probe:{getattr(func, '__qualname__', func)}",
                                       daemon=True)
        self.thread.start()

    def _deliver(self, ok: bool, value: Any) -> None:
        if self.future.done():
            return
        if ok:
            self.future.set_result(value)
        else:
            self.future.set_exception(value)

    def _body(self, func: Callable[..., T], args: tuple[Any, ...]) -> None:
        ok = True
        value: Any
        try:
            value = func(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            ok, value = False, exc
        finally:
            self.finished.set()
        try:
            self.loop.call_soon_threadsafe(self._deliver, ok, value)
        except RuntimeError:  # loop closed: nobody is waiting any more
            pass

    async def result(self) -> T:
        return await self.future


async def run_in_thread(func: Callable[..., T], *args: Any) -> T:
    """Run ``func(*args)`` in a new daemon thread and await its result.

    Cancelling the awaiting task abandons the thread (it finishes on its own
    and its result is dropped); nothing waits for it.
    """
    return await _ProbeThread(func, *args).result()


async def run_check(check: Check, timeout: float) -> CheckResult:
    """Run ``check`` with a hard deadline of ``timeout`` seconds from now.

    Always returns a result by the deadline (plus scheduling noise):
    CRITICAL "timed out" if the probe has not answered, UNKNOWN if it raised.
    """
    started = time.monotonic()
    deadline = started + timeout
    try:
        async with asyncio.timeout_at(_loop_time(deadline)):
            result = await check.probe(deadline)
    except TimeoutError:
        result = CheckResult(Status.CRITICAL,
                             f"{check.describe()} timed out after {timeout:g} s")
    except ProbeError as exc:
        result = CheckResult(Status.UNKNOWN, f"{check.describe()}: probe error: {exc}")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken probe is data, not a crash
        result = CheckResult(Status.UNKNOWN,
                             f"{check.describe()}: probe failed: {type(exc).__name__}: {exc}")
    duration = time.monotonic() - started
    return CheckResult(result.status, result.detail, duration, started, result.perfdata,
                       result.transcript)


def _loop_time(deadline: float) -> float:
    """Translate a ``time.monotonic()`` deadline onto the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())
