"""The alert hook: ``[hostd] alert_command`` run on every refusal.

The command gets the event as one JSON object on stdin and, for simple scripts,
``GUARDIAN_HOSTD_EVENT`` (the decision: ``stale``, ``rate-limited``, ``refused``,
``conflict``, ``maintenance``, ``identity-mismatch``, ``failed``, ...),
``GUARDIAN_HOSTD_VM`` (the VM concerned) and ``GUARDIAN_HOSTD_DETAIL`` in its
environment.

It never blocks the engine: ``Alerter.alert()`` only puts the event on a bounded
queue that one worker thread drains; the command is killed after ``timeout``.  At
most one alert per VM and event per ``min_gap`` (a minute) goes out; the others
are counted as suppressed.  A full queue drops the event (counted); a command that
fails is logged, counted and reported through ``on_failure`` (the engine journals
it as ``alert-failed``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

log = logging.getLogger("guardian.hostd")

QUEUE_SIZE = 64
MIN_GAP = 60.0
_STOP = object()


class Alerter:
    def __init__(self, argv: Sequence[str], *, timeout: float = 10.0,
                 min_gap: float = MIN_GAP, queue_size: int = QUEUE_SIZE,
                 monotonic: Callable[[], float] = time.monotonic,
                 on_failure: Callable[[dict[str, Any], str], None] | None = None) -> None:
        if not argv:
            raise ValueError("alert_command is empty")
        self.argv = tuple(argv)
        self.timeout = timeout
        self.min_gap = min_gap
        self.monotonic = monotonic
        self.on_failure = on_failure
        self.counters: dict[str, int] = {}
        self._queue: queue.Queue[object] = queue.Queue(queue_size)
        self._last: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition(self._lock)
        self._pending = 0

    def _count(self, name: str) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + 1

    def alert(self, event: Mapping[str, Any]) -> bool:
        """Queue ``event`` (never blocks); returns whether it will be sent."""
        key = (str(event.get("vm", "")), str(event.get("event", "")))
        now = self.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.min_gap:
                self.counters["alerts_suppressed"] = self.counters.get("alerts_suppressed", 0) + 1
                return False
            try:
                self._queue.put_nowait(dict(event))
            except queue.Full:
                self.counters["alerts_dropped"] = self.counters.get("alerts_dropped", 0) + 1
                return False
            self._last[key] = now
            self._pending += 1
            if len(self._last) > 4096:  # forget old keys; bounded memory
                self._last = {k: t for k, t in self._last.items() if now - t < self.min_gap}
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="hostd-alert",
                                                daemon=True)
                self._thread.start()
        return True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued alert has been run (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Let queued alerts go out (up to ``timeout``), then stop the worker."""
        self.wait_idle(timeout)
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            try:
                self._queue.put_nowait(_STOP)
            except queue.Full:
                return  # a daemon thread: it dies with the process
            thread.join(timeout)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, dict)
            try:
                self._run(item)
            except Exception:  # noqa: BLE001 - the worker must survive anything
                log.exception("hostd: alert worker error")
                self._count("alert_failures")
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _run(self, event: dict[str, Any]) -> None:
        env = dict(os.environ)
        env["GUARDIAN_HOSTD_EVENT"] = str(event.get("event", ""))
        env["GUARDIAN_HOSTD_VM"] = str(event.get("vm", ""))
        env["GUARDIAN_HOSTD_DETAIL"] = str(event.get("detail", ""))[:1000]
        data = json.dumps(event, sort_keys=True, default=str).encode() + b"\n"
        why = ""
        try:
            proc = subprocess.run(self.argv, input=data, env=env, timeout=self.timeout,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  check=False, close_fds=True)
            if proc.returncode != 0:
                err = proc.stderr.decode("utf-8", "replace").strip()[-300:]
                why = f"exit status {proc.returncode}" + (f": {err}" if err else "")
        except subprocess.TimeoutExpired:
            why = f"did not finish within {self.timeout:g}s (killed)"
        except OSError as exc:
            why = f"cannot run {self.argv[0]}: {exc}"
        if not why:
            self._count("alerts_sent")
            return
        self._count("alert_failures")
        log.warning("hostd: alert command failed: %s", why)
        if self.on_failure is not None:
            try:
                self.on_failure(event, why)
            except Exception:  # noqa: BLE001
                log.exception("hostd: error while recording an alert failure")
