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
from typing import Any, ClassVar, TypeVar

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
    """

    @abc.abstractmethod
    def probe_blocking(self, deadline: float) -> CheckResult:
        """Blocking body; use ``remaining(deadline)`` as the timeout of each call."""

    async def probe(self, deadline: float) -> CheckResult:
        return await run_in_thread(self.probe_blocking, deadline)


def remaining(deadline: float, floor: float = 0.001) -> float:
    """Seconds left until ``deadline`` (never below ``floor``, for socket timeouts)."""
    return max(floor, deadline - time.monotonic())


T = TypeVar("T")


async def run_in_thread(func: Callable[..., T], *args: Any) -> T:
    """Run ``func(*args)`` in a new daemon thread and await its result.

    Cancelling the awaiting task abandons the thread (it finishes on its own
    and its result is dropped); nothing waits for it.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def body() -> None:
        try:
            value = func(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            try:
                loop.call_soon_threadsafe(deliver, False, exc)
            except RuntimeError:  # loop closed: nobody is waiting any more
                pass
        else:
            try:
                loop.call_soon_threadsafe(deliver, True, value)
            except RuntimeError:
                pass

    thread = threading.Thread(target=body, name=f"probe:{getattr(func, '__qualname__', func)}",
                              daemon=True)
    thread.start()
    return await future


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
