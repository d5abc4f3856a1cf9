"""The asyncio driver: runs the checks, feeds the state machines, carries out
their actions through the backends, and answers the control socket.

One ``Supervisor`` per daemon; one ``ServiceRunner`` per service.  Every
long-lived activity lives in one TaskGroup.  Blocking work (probes, XML-RPC)
runs in worker threads under hard deadlines, so nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checks import CheckResult, Status, format_duration, run_check

from ._machine import (
    Action,
    DepsChanged,
    Input,
    Machine,
    Restart,
    RestartFinished,
    RunStep,
    StateChange,
    Tick,
    UnitDown,
    Verdict,
    WouldDo,
)
from ._model import CheckSpec, GuardianSpec, ServiceSpec
from ._states import LadderAction, Mode, ServiceState
from .backends import Backend, BackendError, Controller, UnitEvent, UnitState, load_backend_class
from .backends._proc import pid_alive, run_command

if TYPE_CHECKING:
    from ipfailover._engine import PairEngine, ServiceHooks
    from ipfailover._settings import GroupSettings

    from ._deadman import Deadman
    from .escalation import Entry, Escalator, Reason, Request

    EngineFactory = Callable[[GroupSettings, ServiceHooks], PairEngine]

log = logging.getLogger("guardian")

#: Shortest interval between probes of a service recovering from a restart (seconds).
RECOVERY_PROBE_MIN = 0.05
#: How many results (with transcripts) each check keeps for ``guardian status SERVICE``.
RECENT_RESULTS = 5

STALE_INTERVALS = 3


@dataclass
class CheckRecord:
    spec: CheckSpec
    result: CheckResult | None = None
    received: float = 0.0
    runs: int = 0
    #: the last few results with their transcripts, newest last: (received, result)
    recent: deque[tuple[float, CheckResult]] = field(
        default_factory=lambda: deque(maxlen=RECENT_RESULTS))
    #: shadow mode (an observe-only check): consecutive CRITICALs and how often the
    #: check alone would have brought the service down (fall reached)
    shadow_fails: int = 0
    would_fail: int = 0

    def stale(self, now: float) -> bool:
        if self.result is None:
            return False
        limit = STALE_INTERVALS * self.spec.interval + self.spec.timeout
        return now - self.received > limit


@dataclass(frozen=True)
class HistoryEntry:
    at: float
    old: str
    new: str
    reason: str


class ServiceRunner:
    """Runs one service: its check loops, its machine, and the actions."""

    def __init__(self, sup: Supervisor, spec: ServiceSpec, controller: Controller) -> None:
        self.sup = sup
        self.spec = spec
        self.controller = controller
        self.clock = sup.clock
        self.machine = Machine(spec, self.clock(), rng=sup.rng)
        self.inbox: asyncio.Queue[Input] = asyncio.Queue()
        self.checks = {c.name: CheckRecord(c) for c in spec.checks}
        self.history: deque[HistoryEntry] = deque(maxlen=50)
        self.pid: int | None = None
        self._pidfd: int | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._ladder_lock = asyncio.Lock()
        #: one per check loop, set after a restart: probe at once, then quickly until up
        self._kicks: list[asyncio.Event] = []
        self.restart_count_total = 0
        self.last_restart_duration: float | None = None
        self.timeline = sup.timeline.service(spec.name)
        sup.metrics.state(spec.name, self.machine.state.value)

    # ------------------------------------------------------------ lifecycle
    def start(self, tg: asyncio.TaskGroup) -> None:
        self._tasks.append(tg.create_task(self._drive(), name=f"drive:{self.spec.name}"))
        for rec in self.checks.values():
            self._tasks.append(tg.create_task(self._check_loop(rec),
                                              name=f"check:{self.spec.name}:{rec.spec.name}"))
        if self.spec.watch_pid:
            self._tasks.append(tg.create_task(self._pid_refresher(),
                                              name=f"pid:{self.spec.name}"))

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._close_pidfd()

    def post(self, item: Input) -> None:
        self.inbox.put_nowait(item)

    # ------------------------------------------------------------ checks
    async def _check_loop(self, rec: CheckRecord) -> None:
        # spread the first runs a little so checks do not all fire at once
        await asyncio.sleep(self.sup.rng.uniform(0, min(0.05, rec.spec.interval / 4)))
        kick = asyncio.Event()
        self._kicks.append(kick)
        next_run = self.clock()
        while True:
            result = await run_check(rec.spec.check, rec.spec.timeout)
            rec.result = result
            rec.received = self.clock()
            rec.runs += 1
            rec.recent.append((rec.received, result))
            self.sup.metrics.observe_probe(self.spec.name, rec.spec.name, rec.spec.check.kind,
                                           result)
            if rec.spec.mode is Mode.OBSERVE and self.spec.mode is Mode.ACT:
                self._shadow(rec, result)
            else:
                self.post(Verdict(rec.spec.name, result.status, result.detail))
            interval = rec.spec.interval
            if self.machine.state is ServiceState.RECOVERING:
                # right after a restart: see it serve as soon as it does
                interval = min(interval, max(RECOVERY_PROBE_MIN, interval / 5))
            next_run += interval
            now = self.clock()
            if next_run < now:
                next_run = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(kick.wait(), next_run - now)
                next_run = self.clock()
            kick.clear()

    def _shadow(self, rec: CheckRecord, result: CheckResult) -> None:
        """An observe-only check: judged like the others, acted on never."""
        if result.status is not Status.CRITICAL:
            rec.shadow_fails = 0
            return
        rec.shadow_fails += 1
        if rec.shadow_fails >= self.spec.fall:
            # as the service would have been restarted here, count afresh after it
            rec.shadow_fails = 0
            rec.would_fail += 1
            log.warning("%s: observe-only check %s would have failed the service "
                        "(%d CRITICAL in a row: %s); nothing done", self.spec.name,
                        rec.spec.name, self.spec.fall, result.detail)
            self.sup.metrics.would_do(self.spec.name, "restart", rec.spec.name)
            self.timeline.journal.append(
                "would_do", f"observe-only check {rec.spec.name} would have failed the "
                f"service: {result.detail}", now=rec.received, service=self.spec.name,
                would="restart", check=rec.spec.name)
        else:
            log.info("%s: observe-only check %s: %s", self.spec.name, rec.spec.name,
                     result.detail)

    # ------------------------------------------------------------ machine
    async def _drive(self) -> None:
        await self._initial_status()
        while True:
            wakeup = self.machine.wakeup
            timeout = None if wakeup is None else max(0.0, wakeup - self.clock())
            try:
                item: Input = await asyncio.wait_for(self.inbox.get(), timeout)
            except TimeoutError:
                item = Tick()
            now = self.clock()
            before = self.machine.state
            actions = self.machine.transition(item, now)
            try:
                self.timeline.feed(item, before, actions, now)
            except Exception:  # noqa: BLE001 - the record of an incident must not end it
                log.exception("%s: incident journal failed", self.spec.name)
            for action in actions:
                self._carry_out(action)

    async def _initial_status(self) -> None:
        try:
            st = await self.controller.status(self.clock() + 5.0)
        except BackendError as exc:
            log.warning("%s: cannot read status from %s: %s", self.spec.name,
                        self.controller.describe(), exc)
            return
        if st.state in (UnitState.STOPPED, UnitState.EXITED, UnitState.FAILED):
            self.post(UnitDown(f"{self.controller.describe()} is {st.state.value} at start"))
        elif st.pid:
            self._watch(st.pid)

    def _carry_out(self, action: Action) -> None:
        name = self.spec.name
        if isinstance(action, StateChange):
            now = self.clock()
            self.history.append(HistoryEntry(now, action.old.value, action.new.value,
                                             action.reason))
            level = logging.INFO
            if action.new in (ServiceState.EXHAUSTED, ServiceState.BLOCKED):
                level = logging.ERROR
            elif action.new in (ServiceState.FAILING, ServiceState.BACKOFF):
                level = logging.WARNING
            if action.new is ServiceState.RESTARTING:
                log.warning("restarting %s: %s", name, action.reason)
            else:
                log.log(level, "%s: %s -> %s: %s", name, action.old.value, action.new.value,
                        action.reason)
            self.sup.service_changed(self)
        elif isinstance(action, Restart):
            self.sup.spawn(self._restart(action), f"restart:{name}")
        elif isinstance(action, RunStep):
            self.sup.spawn(self._run_step(action), f"ladder:{name}:{action.step.action.value}")
        elif isinstance(action, WouldDo):
            log.warning("%s: observe mode: would %s: %s", name, action.what, action.reason)
            self.sup.metrics.would_do(name, action.what)

    async def _restart(self, action: Restart) -> None:
        started = self.clock()
        self._close_pidfd()
        old_pid = self.pid
        self.pid = None
        try:
            await self.controller.restart(started + self.spec.restart.timeout)
        except BackendError as exc:
            self.post(RestartFinished(False, str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - a backend bug must not kill the daemon
            log.exception("%s: restart raised", self.spec.name)
            self.post(RestartFinished(False, f"{type(exc).__name__}: {exc}"))
            return
        self.restart_count_total += 1
        self.last_restart_duration = self.clock() - started
        detail = f"{self.controller.describe()} in {format_duration(self.last_restart_duration)}"
        gone: str | None = None
        with contextlib.suppress(BackendError):
            st = await self.controller.status(self.clock() + 2.0)
            if st.pid and st.pid != old_pid:
                self._watch(st.pid)
                detail += f", pid {st.pid}"
            elif st.state in (UnitState.STOPPED, UnitState.EXITED, UnitState.FAILED):
                # died at once (a broken config): say so now, not after the start grace
                gone = (f"{self.controller.describe()} {st.state.value} right after the "
                        f"restart ({st.detail})")
        self.post(RestartFinished(True, detail))
        for kick in self._kicks:   # probe the restarted service now, not at the next interval
            kick.set()
        if gone is not None:
            self.post(UnitDown(gone))

    async def _run_step(self, action: RunStep) -> None:
        async with self._ladder_lock:   # rungs run in order
            step = action.step
            name = self.spec.name
            env = self.incident_env(action)
            if step.action is LadderAction.ALERT:
                log.error("ALERT %s: %s", name, action.reason)
                if self.sup.spec.alert_command:
                    await self._hook(list(self.sup.spec.alert_command), env,
                                     self.sup.spec.hook_timeout, "alert hook")
            elif step.action is LadderAction.EXEC:
                await self._hook(list(step.command), env, step.timeout, "ladder exec")
            else:
                handler = self.sup.ladder_handlers.get(step.action)
                if handler is None:
                    log.error("%s: ladder step %s requested but not available in this "
                              "configuration: %s", name, step.action.value, action.reason)
                else:
                    try:
                        await handler(self, action)
                    except Exception:  # noqa: BLE001
                        log.exception("%s: ladder step %s failed", name, step.action.value)

    def incident_env(self, action: RunStep) -> dict[str, str]:
        m = self.machine
        return {
            "GUARDIAN_SERVICE": self.spec.name,
            "GUARDIAN_STATE": m.state.value,
            "GUARDIAN_ACTION": action.step.action.value,
            "GUARDIAN_REASON": action.reason,
            "GUARDIAN_RESTARTS": str(action.restarts),
            "GUARDIAN_BUDGET": str(self.spec.restart.budget),
            "GUARDIAN_INCIDENT_AGE": f"{self.clock() - action.incident_start:.3f}",
            "GUARDIAN_UNIT": self.controller.describe(),
            "GUARDIAN_VERDICTS": "; ".join(
                f"{n}={r.result.status.value}: {r.result.detail}"
                for n, r in self.checks.items() if r.result is not None),
        }

    async def _hook(self, argv: list[str], env: dict[str, str], timeout: float,
                    what: str) -> None:
        full_env = dict(os.environ)
        full_env.update(env)
        try:
            res = await run_command(argv, self.clock() + timeout, env=full_env)
        except BackendError as exc:
            log.error("%s: %s %s failed: %s", self.spec.name, what, argv[0], exc)
            return
        if res.returncode != 0:
            log.error("%s: %s %s exited %s: %s", self.spec.name, what, argv[0],
                      res.returncode, res.stderr.strip().splitlines()[-1:] or "")
        else:
            log.info("%s: %s %s done", self.spec.name, what, argv[0])

    # ------------------------------------------------------------ pid watching
    async def _pid_refresher(self) -> None:
        """Keep a pidfd on the unit's main process, so an exit is seen at once."""
        while True:
            await asyncio.sleep(2.0)
            if self.machine.state is ServiceState.RESTARTING:
                continue
            try:
                st = await self.controller.status(self.clock() + 2.0)
            except BackendError:
                continue
            if st.pid and st.pid != self.pid:
                self._watch(st.pid)

    def _watch(self, pid: int) -> None:
        self._close_pidfd()
        self.pid = pid
        if not self.spec.watch_pid or not self.controller.local_pids:
            return
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            return
        self._pidfd = fd
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, self._pid_exited, fd, pid)

    def _pid_exited(self, fd: int, pid: int) -> None:
        if fd != self._pidfd:
            return   # an older watch
        self._close_pidfd()
        # A restart closes the old watch first, so this is the current process,
        # even while the machine is still RESTARTING (the new process died at
        # once): the inbox is FIFO, so RestartFinished is seen before this.
        self.post(UnitDown(f"{self.controller.describe()}: process {pid} exited"))

    def _close_pidfd(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    def unit_event(self, ev: UnitEvent) -> None:
        if ev.state in (UnitState.EXITED, UnitState.FAILED, UnitState.STOPPED):
            if self.machine.state is ServiceState.RESTARTING:
                return
            if ev.pid is not None and self.pid is not None and ev.pid != self.pid:
                return   # about an older process
            self.post(UnitDown(f"{self.controller.describe()}: {ev.detail or ev.state.value}"))
        elif (ev.state is UnitState.RUNNING and ev.pid and ev.pid != self.pid
              and pid_alive(ev.pid)):
            # (a late RUNNING event of a process that already died must not
            # replace the watch on its successor)
            self._watch(ev.pid)

    # ------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        now = self.clock()
        m = self.machine
        checks = []
        for name, rec in self.checks.items():
            r = rec.result
            checks.append({
                "name": name,
                "type": rec.spec.check.kind,
                "target": rec.spec.check.describe(),
                "status": None if r is None else r.status.value,
                "detail": None if r is None else r.detail,
                "duration": None if r is None else round(r.duration, 6),
                "age": None if r is None else round(now - rec.received, 3),
                "stale": rec.stale(now),
                "runs": rec.runs,
                "interval": rec.spec.interval,
                "mode": rec.spec.mode.value,
                "would_fail": rec.would_fail,
                "recent": [
                    {"ago": round(now - at, 3), "status": r.status.value, "detail": r.detail,
                     "duration": round(r.duration, 6), "transcript": list(r.transcript)}
                    for at, r in rec.recent],
            })
        verdict = "UNKNOWN"
        fresh = [c for c in checks if c["status"] is not None and not c["stale"]]
        if m.state in (ServiceState.EXHAUSTED, ServiceState.BLOCKED, ServiceState.BACKOFF,
                       ServiceState.RESTARTING):
            verdict = "CRITICAL"
        elif fresh:
            statuses = [Status(c["status"]) for c in fresh]
            verdict = max(statuses, key=lambda s: s.severity).value
        return {
            "name": self.spec.name,
            "state": m.state.value,
            "verdict": verdict,
            "since": round(now - m.since, 3),
            "reason": m.reason,
            "next_action": m.next_action,
            "restarts_used": m.budget_used,
            "restart_budget": self.spec.restart.budget,
            "restarts_total": self.restart_count_total,
            "blocked_by": list(m.deps_down),
            "requires": list(self.spec.requires),
            "mode": self.spec.mode.value,
            "would_do": m.would_do,
            "unit": self.controller.describe(),
            "backend": self.spec.backend,
            "pid": self.pid,
            "checks": checks,
            "history": [
                {"ago": round(now - h.at, 3), "from": h.old, "to": h.new, "reason": h.reason}
                for h in list(self.history)[-10:]
            ],
        }


LadderHandler = Callable[[ServiceRunner, RunStep], Any]


class Supervisor:
    """guardian as a library: build from a ``GuardianSpec`` and ``await run()``.

    ``run()`` returns when ``stop()`` is called.  ``reload(spec)`` applies a new
    configuration by diff: services whose configuration did not change keep
    their state and counters.
    """

    def __init__(self, spec: GuardianSpec, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, control: bool = True,
                 engine_factory: EngineFactory | None = None,
                 journal: bool | None = None) -> None:
        self.spec = spec
        #: builds the failover groups' engines (tests pass one with a fake kernel)
        self.engine_factory = engine_factory
        self.clock = clock
        self.rng = rng or random.Random()
        self.control_enabled = control
        self.backends: dict[str, Backend] = {}
        self.runners: dict[str, ServiceRunner] = {}
        self.ladder_handlers: dict[LadderAction, LadderHandler] = {
            LadderAction.FAILOVER: self._failover_rung,
            LadderAction.ESCALATE: self._escalate_rung,
        }
        #: failover groups by name (``ipfailover.PairEngine``)
        self.engines: dict[str, PairEngine] = {}
        #: tracked services whose ladder ran its failover rung, until they are up again
        self._failed_over: dict[str, str] = {}
        #: cold services a failover group started (supervised while it holds the VIPs)
        self._cold_active: set[str] = set()
        self.started_at = clock()
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self._backend_tasks: dict[str, asyncio.Task[Any]] = {}
        self._spawned: set[asyncio.Task[Any]] = set()
        self.ready = asyncio.Event()
        self.reloads = 0
        from ._journal import Journal, MemoryJournal
        from ._metrics import Metrics
        from ._timeline import Timeline

        #: incident journal (state_dir/journal; in memory only when ``journal`` is False,
        #: which is the default for library use without the control socket), timeline
        #: trackers and metrics
        on_disk = control if journal is None else journal
        self.journal = (Journal(Path(spec.state_dir) / "journal", clock=clock) if on_disk
                        else MemoryJournal(clock=clock))
        self.metrics = Metrics(_version())
        self.metrics.watch_journal(self.journal)
        self.timeline = Timeline(self.journal, self.metrics)
        self._metrics_server: Any = None
        self.last_reload_error: str | None = None
        #: escalation to dom0 (``[escalation]``): the outbox pump and its task
        self.escalator: Escalator | None = None
        #: ``[watchdog]``: the dead-man switch (``guardian._deadman``)
        self.deadman: Deadman | None = None
        #: fence-peer requests in flight (request id -> the failover engine's answer)
        self._fence_waiters: dict[str, asyncio.Future[tuple[bool, str]]] = {}
        self._escalation_task: asyncio.Task[Any] | None = None

    # ------------------------------------------------------------ public
    async def run(self) -> None:
        from ._control import ControlServer

        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            server: ControlServer | None = None
            if self.control_enabled:
                server = ControlServer(self, self.spec.control_socket)
                await server.start()
            self._apply(self.spec, first=True)
            self._apply_escalation(self.spec)
            self._start_deadman(self.spec)
            await self._serve_metrics()
            self.ready.set()
            notify("READY=1\nSTATUS=supervising "
                   f"{len(self.runners)} service(s)")
            self.spawn(self._watchdog(), "sd-watchdog")
            await self._stop.wait()
            notify("STOPPING=1")
            await self._stop_engines()
            for runner in self.runners.values():
                runner.stop()
            for task in self._backend_tasks.values():
                task.cancel()
            for b in self.backends.values():
                with contextlib.suppress(Exception):
                    await b.aclose()
            if server is not None:
                await server.close()
            if self._metrics_server is not None:
                await self._metrics_server.close()
            self.timeline.close(self.clock())
            if self.deadman is not None:
                self.deadman.close()
            # our own tasks only: another Supervisor may share the loop (library use)
            for task in list(self._spawned):
                if task is not asyncio.current_task() and task.get_name().startswith(
                        ("restart:", "ladder:", "sd-watchdog", "failover:",
                         "escalation:", "deadman")):
                    task.cancel()

    def stop(self) -> None:
        self._stop.set()

    async def _serve_metrics(self) -> None:
        listen = self.spec.metrics_listen
        if not listen:
            return
        from ._metrics import MetricsError

        try:
            self._metrics_server = await self.metrics.serve(
                listen, allow_remote=self.spec.metrics_allow_remote)
            log.info("metrics on %s", listen)
        except MetricsError as exc:
            log.error("metrics listener not started: %s", exc)

    def reload(self, spec: GuardianSpec) -> None:
        old_escalation = self.spec.escalation
        self._apply(spec, first=False)
        if spec.escalation != old_escalation:
            self._apply_escalation(spec)
        if spec.watchdog != self.spec.watchdog:
            new, dm = spec.watchdog, self.deadman
            if dm is not None and new is not None and new.device == dm.spec.device:
                dm.spec = dm.verdict.spec = new
                log.info("watchdog: settings reloaded (critical: %s)",
                         ", ".join(new.critical) or "none")
            else:
                log.warning("watchdog: [watchdog] added, removed or given another device: "
                            "takes effect when guardiand restarts")
        self.spec = spec
        self.reloads += 1

    def spawn(self, coro: Any, name: str) -> None:
        assert self._tg is not None
        task = self._tg.create_task(coro, name=name)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    def status(self) -> dict[str, Any]:
        return {
            "version": _version(),
            "pid": os.getpid(),
            "uptime": round(self.clock() - self.started_at, 3),
            "config": list(self.spec.sources),
            "reloads": self.reloads,
            "last_reload_error": self.last_reload_error,
            "journal": self.journal.stats(),
            "warnings": list(self.spec.warnings),
            "services": [self.runners[n].status() for n in self.spec.start_order()
                         if n in self.runners],
            "failover": [e.status() for _, e in sorted(self.engines.items())],
            "escalations": self.escalator.status() if self.escalator is not None else [],
            "watchdog": self.deadman.status() if self.deadman is not None else None,
        }

    # ------------------------------------------------------------ dead-man switch
    def _start_deadman(self, spec: GuardianSpec) -> None:
        """``[watchdog]``: open (arm) the device and pet it from this loop while the
        critical services are not down for longer than their grace."""
        from ._deadman import Deadman, WatchdogError

        if spec.watchdog is None:
            return
        dm = Deadman(spec.watchdog, self._health, clock=self.clock)
        try:
            dm.open()
        except WatchdogError as exc:
            log.error("%s; the dead-man switch is off", exc.strerror)
            dm.reason = f"not armed: {exc.strerror}"
            self.deadman = dm
            return
        self.deadman = dm
        self.spawn(dm.run(), "deadman")

    def _health(self) -> dict[str, bool | None]:
        return {name: r.machine.state.healthy for name, r in self.runners.items()}

    # ------------------------------------------------------------ internals
    def _backend(self, name: str, spec: GuardianSpec) -> Backend:
        if name not in self.backends:
            from checks import Options

            cls = load_backend_class(name)
            opts = Options(spec.backends.get(name, {}), f"backends.{name}", "config")
            self.backends[name] = cls.from_options(opts)
            assert self._tg is not None
            self._backend_tasks[name] = self._tg.create_task(
                self._pump_events(name, self.backends[name]), name=f"events:{name}")
        return self.backends[name]

    async def _pump_events(self, name: str, backend: Backend) -> None:
        while True:
            try:
                async for ev in backend.events():
                    for runner in self.runners.values():
                        if runner.spec.backend == name and runner.controller.unit == ev.unit:
                            runner.unit_event(ev)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep listening
                log.warning("events from %s backend failed: %s; retrying", name, exc)
                await asyncio.sleep(1.0)

    def _apply(self, spec: GuardianSpec, first: bool) -> None:
        from checks import Options

        old = self.runners
        new: dict[str, ServiceRunner] = {}
        backends_changed = {n for n in set(spec.backends) | set(self.spec.backends)
                            if spec.backends.get(n) != self.spec.backends.get(n)}
        for name in backends_changed:
            if name in self.backends and not first:
                self._backend_tasks.pop(name).cancel()
                self.backends.pop(name)
        for name in spec.start_order():
            sspec = spec.services[name]
            prev = old.get(name)
            if (spec.failover is not None and spec.failover.cold_group(name) is not None
                    and name not in self._cold_active):
                # a cold service: supervised only while its group holds the VIPs
                continue
            if (prev is not None and prev.spec.fingerprint == sspec.fingerprint
                    and sspec.backend not in backends_changed):
                new[name] = prev
                continue
            if prev is not None:
                log.info("%s: configuration changed, restarting its supervision", name)
                prev.stop()
            backend = self._backend(sspec.backend, spec)
            controller = backend.controller(
                name, Options(dict(sspec.controller_options), f"services.{name}", sspec.source))
            runner = ServiceRunner(self, sspec, controller)
            new[name] = runner
        for name, runner in old.items():
            if name not in new or new[name] is not runner:
                if name not in new:
                    log.info("%s: removed from the configuration; no longer supervised", name)
                    self.metrics.forget_service(name)
                runner.stop()
        self.runners = new
        self.spec = spec
        assert self._tg is not None
        for name, runner in new.items():
            if old.get(name) is not runner:
                runner.start(self._tg)
        for runner in new.values():
            self._update_deps(runner)
        self._apply_failover(spec, first)

    def service_changed(self, runner: ServiceRunner) -> None:
        for other in self.runners.values():
            if runner.spec.name in other.spec.requires:
                self._update_deps(other)
        name = runner.spec.name
        if runner.machine.state is ServiceState.UP and name in self._failed_over:
            del self._failed_over[name]
            for engine in self.engines.values():
                if name in engine.settings.services:
                    engine.service_recovered(name)

    # ------------------------------------------------------------ failover
    def _apply_failover(self, spec: GuardianSpec, first: bool) -> None:
        groups = spec.failover.groups if spec.failover is not None else {}
        if not groups and not self.engines:
            return
        for name, settings in groups.items():
            engine = self.engines.get(name)
            if engine is not None and engine.settings == settings and engine.error is None:
                if not first:
                    engine.reload_keys()
                continue
            new = self._make_engine(settings)
            self.engines[name] = new
            if engine is None:
                self.spawn(new.run(), f"failover:{name}")
            else:
                log.info("failover %s: configuration changed, restarting the group", name)
                self.spawn(self._replace_engine(engine, new), f"failover:{name}")
        for name in [n for n in self.engines if n not in groups]:
            log.info("failover %s: removed from the configuration; releasing", name)
            engine = self.engines.pop(name)
            self.spawn(engine.shutdown("group removed from the configuration"),
                       f"failover:{name}:shutdown")

    def _make_engine(self, settings: GroupSettings) -> PairEngine:
        from ipfailover._engine import PairEngine

        hooks = _ColdHooks(self)
        if self.engine_factory is not None:
            engine = self.engine_factory(settings, hooks)
        else:
            engine = PairEngine(settings, services=hooks, clock=self.clock)
        # a takeover's incident ends at the convergence proof when the engine checks it
        # (set on every engine: a reload may have changed ``verify``)
        tracker = self.timeline.group(settings.group)
        tracker.convergence = bool(getattr(engine, "verify_pairs", ()))
        engine.observer = tracker
        if settings.fence == "dom0":
            group = settings.group

            async def fencer(vm: str, reason: str) -> tuple[bool, str]:
                return await self._fence_peer(group, vm, reason)

            engine.fencer = fencer
        self.metrics.on_scrape(
            lambda: self.metrics.pair_status(settings.group, engine.status()))
        for service, reason in self._failed_over.items():
            if service in settings.services:
                engine.service_failed(service, reason)
        return engine

    async def _replace_engine(self, old: PairEngine, new: PairEngine) -> None:
        await old.shutdown("configuration changed")
        await new.run()

    async def _stop_engines(self) -> None:
        if self.engines:
            await asyncio.gather(*(e.shutdown() for e in self.engines.values()),
                                 return_exceptions=True)

    async def _failover_rung(self, runner: ServiceRunner, action: RunStep) -> None:
        name = runner.spec.name
        engines = [e for e in self.engines.values() if name in e.settings.services]
        if not engines:
            log.error("%s: ladder step failover: no failover group tracks this service: %s",
                      name, action.reason)
            return
        self._failed_over[name] = action.reason
        for engine in engines:
            log.warning("%s: ladder step failover: group %s yields the VIPs", name,
                        engine.name)
            engine.service_failed(name, action.reason)

    # ------------------------------------------------------------ escalation
    def _apply_escalation(self, spec: GuardianSpec) -> None:
        """(Re)build the channel and the outbox pump from ``[escalation]``."""
        from .escalation import Escalator, Outbox, build_channel

        if self._escalation_task is not None:
            self._escalation_task.cancel()
            self._escalation_task = None
        self.escalator = None
        esc = spec.escalation
        if esc is None:
            return
        try:
            channel = build_channel(esc)
            self.escalator = Escalator(
                Outbox(Path(spec.state_dir) / "outbox"), channel, clock=self.clock,
                rng=self.rng, timeout=esc.timeout, retry_max=esc.retry_max,
                on_event=self._escalation_event, before_send=self.journal.flush)
        except (LookupError, ValueError, OSError) as exc:
            log.error("escalation: channel %s not available: %s", esc.channel, exc)
            return
        assert self._tg is not None
        task = self._tg.create_task(self.escalator.run(), name="escalation:pump")
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
        self._escalation_task = task

    def _escalation_event(self, entry: Entry, outcome: str, detail: str) -> None:
        if outcome == "retry":
            return
        waiter = self._fence_waiters.get(entry.request.request_id)
        if waiter is not None:
            if outcome in ("done", "failed", "refused", "stale", "rejected") \
                    and not waiter.done():
                waiter.set_result((outcome == "done", f"dom0: {outcome}: {detail}"))
            return
        tracker = self.timeline.service(entry.request.reason.service)
        tracker.escalation(self.clock(), outcome, detail, request=entry.request.request_id,
                           action=entry.request.action)

    async def _fence_peer(self, group: str, vm: str, reason: str) -> tuple[bool, str]:
        """``fence = "dom0"``: a ``fence-peer`` request for ``vm`` through the escalation
        outbox; (True, detail) once dom0 answers ``done`` (the peer destroyed and its
        death confirmed), (False, detail) on any other final answer.  The pair machine
        bounds the wait (``fence_timeout``); the request stays in the outbox either way,
        so a fence dom0 accepts is carried out and recorded even when it comes late."""
        from .escalation import Reason

        esc, escalator = self.spec.escalation, self.escalator
        if esc is None or escalator is None:
            return False, "no escalation channel to dom0 is available"
        service = f"failover:{group}"
        waiter: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        existing = escalator.outbox.open_for(service)
        if existing is not None and existing.request.peer == vm:
            # an earlier fence of this peer (timed out here, or from before a restart)
            # is still open at dom0: its answer is this fence's answer
            rid = existing.request.request_id
            log.warning("failover %s: fence-peer %s: waiting for the open request %s (%s)",
                        group, vm, rid, existing.state)
        else:
            if existing is not None:
                return False, (f"request {existing.request.request_id} to fence "
                               f"{existing.request.peer} is still open")
            request = await self._ask_dom0("fence-peer", Reason(service=service,
                                                                detail=reason), peer=vm)
            if request is None:
                return False, "a fence request for this group is already open"
            rid = request.request_id
        self._fence_waiters[rid] = waiter
        try:
            return await waiter
        finally:
            self._fence_waiters.pop(rid, None)

    async def _escalate_rung(self, runner: ServiceRunner, action: RunStep) -> None:
        from .escalation import Reason

        name = runner.spec.name
        esc, escalator = self.spec.escalation, self.escalator
        if esc is None or escalator is None:
            log.error("%s: ladder step escalate: no escalation channel is configured "
                      "([escalation]): %s", name, action.reason)
            return
        existing = escalator.outbox.open_for(name)
        if existing is not None:
            log.warning("%s: ladder step escalate: request %s is still open (%s); "
                        "not asking again", name, existing.request.request_id, existing.state)
            return
        request = await self._ask_dom0("recreate", Reason(
            service=name, verdicts=runner.incident_env(action)["GUARDIAN_VERDICTS"],
            restarts=action.restarts, detail=action.reason))
        if request is None:
            log.warning("%s: ladder step escalate: a request is already open", name)

    async def _ask_dom0(self, action: str, reason: Reason,
                        peer: str | None = None) -> Request | None:
        """A new request to dom0 in this VM's current incarnation, queued in the
        outbox (None: one for ``reason.service`` is open already)."""
        from .escalation import Request

        esc, escalator = self.spec.escalation, self.escalator
        assert esc is not None and escalator is not None
        deadline = time.monotonic() + esc.timeout
        incarnation = await escalator.channel.incarnation(deadline)
        if incarnation is None:
            log.warning("%s: escalate: this VM's incarnation is unknown (%s); sending 0",
                        reason.service, esc.incarnation_file)
            incarnation = 0
        request = Request(vm=esc.vm, vm_uuid=await escalator.channel.vm_uuid(deadline),
                          incarnation=incarnation, action=action, peer=peer, reason=reason)
        # what led here is on disk before a request that may end this VM leaves
        await self.journal.flush()
        if escalator.submit(request) is None:
            return None
        log.warning("%s: escalation %s%s: request %s (incarnation %d) queued for %s",
                    reason.service, action, f" {peer}" if peer else "", request.request_id,
                    incarnation, escalator.channel.describe())
        return request

    async def switchover(self, group: str | None) -> dict[str, Any]:
        """Move the VIPs of ``group`` (default: the only group) to the other node."""
        if not self.engines:
            return {"ok": False, "error": "no failover group is configured"}
        if group is None:
            if len(self.engines) > 1:
                return {"ok": False, "error": "several failover groups: name one ("
                        + ", ".join(sorted(self.engines)) + ")"}
            group = next(iter(self.engines))
        engine = self.engines.get(group)
        if engine is None:
            return {"ok": False, "error": f"no failover group named {group!r}"}
        ok, detail = await engine.switchover()
        return {"ok": True, "group": group, "outcome": {"ok": ok, "detail": detail}}

    # cold services (``_ColdHooks``): supervised only while their group is master
    async def _start_cold(self, name: str, timeout: float) -> None:
        from checks import Options

        sspec = self.spec.services.get(name)
        if sspec is None:
            raise BackendError(f"{name}: not configured")
        self._cold_active.add(name)
        if name in self.runners:
            await self.runners[name].controller.start(self.clock() + timeout)
            return
        backend = self._backend(sspec.backend, self.spec)
        controller = backend.controller(
            name, Options(dict(sspec.controller_options), f"services.{name}", sspec.source))
        await controller.start(self.clock() + timeout)
        if name not in self._cold_active or name in self.runners:
            return  # released meanwhile, or started twice
        runner = ServiceRunner(self, sspec, controller)
        self.runners[name] = runner
        assert self._tg is not None
        runner.start(self._tg)
        log.info("%s: cold service started for its failover group; supervising it", name)
        for other in self.runners.values():
            self._update_deps(other)

    async def _stop_cold(self, name: str, timeout: float) -> None:
        from checks import Options

        self._cold_active.discard(name)
        runner = self.runners.pop(name, None)
        if runner is not None:
            runner.stop()
            controller = runner.controller
        else:
            sspec = self.spec.services.get(name)
            if sspec is None:
                return
            controller = self._backend(sspec.backend, self.spec).controller(
                name, Options(dict(sspec.controller_options), f"services.{name}", sspec.source))
        try:
            await controller.stop(self.clock() + timeout)
            log.info("%s: cold service stopped (its failover group released the VIPs)", name)
        finally:
            self._cold_released(name)

    def _cold_released(self, name: str) -> None:
        if name in self._failed_over:
            self.spawn(self._standby_again(name), f"failover:{name}:standby")

    async def _standby_again(self, name: str) -> None:
        """A cold service does not run on a backup: once its failure has sent the VIPs
        to the peer, that failure says nothing about this node's fitness to take them
        back later (the service is started afresh on the next takeover).  So leave
        FAULT for BACKUP when the peer is master; if the peer never takes over, retry
        here after the service's ``exhausted_retry`` (a slow retry, not a flap)."""
        spec = self.spec.services.get(name)
        hold = max(5.0, spec.restart.exhausted_retry if spec is not None else 60.0)
        engines = [e for e in self.engines.values() if name in e.settings.services]
        deadline = self.clock() + hold
        while self.clock() < deadline:
            if engines and all(
                    (e.status().get("peer") or {}).get("state") == "master" for e in engines):
                break
            await asyncio.sleep(0.05)
        if self._failed_over.pop(name, None) is None:
            return
        log.info("%s: failed over and stopped here; this node is a standby again", name)
        for engine in engines:
            engine.service_recovered(name)

    async def _wait_cold(self, name: str, timeout: float) -> bool:
        deadline = self.clock() + timeout
        while True:
            runner = self.runners.get(name)
            if runner is not None and runner.machine.state is ServiceState.UP:
                return True
            if self.clock() >= deadline:
                return False
            await asyncio.sleep(0.02)

    def _update_deps(self, runner: ServiceRunner) -> None:
        down = tuple(d for d in runner.spec.requires
                     if d in self.runners and not self.runners[d].machine.state.healthy)
        if down != runner.machine.deps_down:
            runner.post(DepsChanged(down))

    async def _watchdog(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC")
        if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
            await asyncio.Event().wait()
        period = int(usec or "0") / 1e6 / 2
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(period)


class _ColdHooks:
    """``ipfailover.ServiceHooks`` through the Supervisor (cold services)."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    async def start_service(self, name: str, timeout: float) -> None:
        await self.sup._start_cold(name, timeout)

    async def stop_service(self, name: str, timeout: float) -> None:
        await self.sup._stop_cold(name, timeout)

    async def wait_service_up(self, name: str, timeout: float) -> bool:
        return await self.sup._wait_cold(name, timeout)


def notify(state: str) -> None:
    """sd_notify through python3-systemd when present; silently nothing otherwise."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    try:
        from systemd import daemon
    except ImportError:
        _notify_socket(state)
        return
    daemon.notify(state)


def _notify_socket(state: str) -> None:
    import socket

    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(state.encode(), addr)


def _version() -> str:
    from . import __version__

    return __version__
