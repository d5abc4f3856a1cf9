"""The per-service state machine: verdicts in, actions out.

Pure: no I/O, no clock of its own.  Every input carries ``now`` (a
``time.monotonic()`` value, or a virtual clock in tests) and ``transition``
returns the actions to carry out.  The asyncio driver in ``_supervisor`` runs
those actions and feeds their outcome back as new inputs.  The ladder never
silently gives up: after the last rung it keeps probing, reports EXHAUSTED,
retries slowly, and recovers on its own when the service comes back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from checks import Status, format_duration

from ._model import LadderStep, ServiceSpec
from ._states import Mode, ServiceState

# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Verdict:
    check: str
    status: Status
    detail: str


@dataclass(frozen=True)
class UnitDown:
    """The service manager (or a pidfd) says the process is gone."""

    detail: str


@dataclass(frozen=True)
class RestartFinished:
    ok: bool
    detail: str


@dataclass(frozen=True)
class DepsChanged:
    """``down`` lists the required services that are not healthy now."""

    down: tuple[str, ...]


@dataclass(frozen=True)
class Tick:
    """Time passed; sent when ``Machine.wakeup`` is reached."""


Input = Verdict | UnitDown | RestartFinished | DepsChanged | Tick

# ---------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Restart:
    reason: str
    attempt: int          # restarts used in the window, this one included
    budget: int


@dataclass(frozen=True)
class RunStep:
    step: LadderStep
    reason: str
    incident_start: float
    restarts: int


@dataclass(frozen=True)
class StateChange:
    old: ServiceState
    new: ServiceState
    reason: str


@dataclass(frozen=True)
class WouldDo:
    """Shadow mode: what the machine would have done."""

    what: str
    reason: str


Action = Restart | RunStep | StateChange | WouldDo


@dataclass
class CheckCounters:
    ok: int = 0
    fail: int = 0
    last: Status | None = None
    detail: str = ""


@dataclass
class Machine:
    spec: ServiceSpec
    now: float
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.state = ServiceState.STARTING
        self.since = self.now
        self.reason = "guardian started"
        # observe-only checks (in a service that acts) are judged by the supervisor
        # on their own and never reach this machine
        self.counters: dict[str, CheckCounters] = {
            c.name: CheckCounters() for c in self.spec.checks
            if c.mode is Mode.ACT or self.spec.mode is Mode.OBSERVE}
        self.restarts: list[float] = []       # times of restarts, for the budget window
        self.shadow_restarts: list[float] = []  # observe mode: restarts it would have made
        self.incident_restarts = 0            # restarts in the current incident (for backoff)
        self.incident_start: float | None = None
        self.ladder_done = False
        self.deps_down: tuple[str, ...] = ()
        self.unit_detail = ""          # what the service manager said when the unit died
        self.unit_dead = False
        self.grace_end = self.now + self.spec.start_grace
        self.up_since: float | None = None
        self.wakeup: float | None = self.grace_end
        self.next_action = "waiting for checks to rise"
        self.would_do = 0

    # ------------------------------------------------------------ helpers
    @property
    def budget_used(self) -> int:
        return len(self.restarts)

    def _expire_restarts(self, now: float) -> None:
        cutoff = now - self.spec.restart.window
        self.restarts = [t for t in self.restarts if t > cutoff]

    def _is_down(self) -> bool:
        if self.unit_dead:
            return True
        return any(c.fail >= self.spec.fall for c in self.counters.values())

    def _is_up(self) -> bool:
        if self.unit_dead:
            return False
        if not self.counters:
            return True
        return all(c.ok >= self.spec.rise for c in self.counters.values())

    def _any_failing(self) -> bool:
        return self.unit_dead or any(c.fail > 0 for c in self.counters.values())

    def failing_summary(self) -> str:
        """``3/3 CRITICAL (http://127.0.0.1/ timed out after 1 s)`` for the worst check."""
        worst: tuple[str, CheckCounters] | None = None
        for name, c in self.counters.items():
            if c.fail and (worst is None or c.fail > worst[1].fail):
                worst = (name, c)
        if worst is None:
            return "no failing check"
        c = worst[1]
        verdict = c.last.value if c.last else "?"
        if c.fail <= self.spec.fall:
            return f"{c.fail}/{self.spec.fall} {verdict} ({c.detail})"
        return f"{verdict} {c.fail} times in a row ({c.detail})"

    def _set(self, new: ServiceState, now: float, reason: str, out: list[Action]) -> None:
        if new is not self.state:
            out.append(StateChange(self.state, new, reason))
            self.state = new
            self.since = now
        self.reason = reason

    def _reset_counters(self) -> None:
        for c in self.counters.values():
            c.ok = 0
            c.fail = 0

    # ------------------------------------------------------------ the one transition
    def transition(self, event: Input, now: float) -> list[Action]:
        out: list[Action] = []
        self.now = now
        self._expire_restarts(now)
        s = self.state
        S = ServiceState

        if isinstance(event, Verdict):
            c = self.counters.get(event.check)
            if c is not None:
                c.last = event.status
                c.detail = event.detail
                if event.status in (Status.OK, Status.WARNING):
                    c.ok += 1
                    c.fail = 0
                elif event.status is Status.CRITICAL:
                    c.fail += 1
                    c.ok = 0
                # UNKNOWN: the probe is broken, it says nothing about the service
            if event.status in (Status.OK, Status.WARNING) and self.unit_dead and self._all_ok():
                self.unit_dead = False
        elif isinstance(event, UnitDown):
            if s is not S.RESTARTING:
                self.unit_dead = True
                self.unit_detail = event.detail
        elif isinstance(event, DepsChanged):
            self.deps_down = event.down
        elif isinstance(event, RestartFinished):
            if s is S.RESTARTING:
                self.unit_dead = False
                self._reset_counters()
                if event.ok:
                    self.grace_end = now + self.spec.start_grace
                    self._set(S.RECOVERING, now, f"restarted: {event.detail}", out)
                    self.next_action = "waiting for checks to rise"
                else:
                    self._set(S.RECOVERING, now, f"restart failed: {event.detail}", out)
                    self.grace_end = now   # judge at once: a failed restart is a failure
                    self.unit_dead = True
                    self._on_failure(now, f"restart failed: {event.detail}", out)
                self._schedule(now)
                return out

        s = self.state
        if s in (S.STARTING, S.RECOVERING):
            if self._is_up():
                self._recovered(now, out)
            elif self._is_down() and (now >= self.grace_end or self.unit_dead):
                self._on_failure(now, self._why(), out)
            elif now >= self.grace_end and self._any_failing():
                self._on_failure(now, f"not healthy after the start grace: {self._why()}", out)
        elif s in (S.UP, S.FAILING):
            if self._is_down():
                self._on_failure(now, self._why(), out)
            elif self._any_failing():
                if s is S.UP:
                    self._open_incident(now)
                self._set(S.FAILING, now, self.failing_summary(), out)
                self.next_action = "probing"
            else:
                if s is S.FAILING:
                    self._recovered(now, out)
                self._healthy_reset(now)
        elif s is S.BACKOFF:
            if self._is_up():
                self._recovered(now, out)
            elif self.wakeup is not None and now >= self.wakeup:
                self._restart_now(now, self.reason, out)
        elif s is S.BLOCKED:
            if self._is_up():
                self._recovered(now, out)
            elif not self.deps_down:
                if self.unit_dead:
                    self._on_failure(now, f"dependency back; {self._why()}", out)
                else:
                    # it failed because of its dependency, most likely: now that the
                    # dependency is back, give it the start grace to recover by itself
                    # (exim answers again once named does) before restarting it
                    self._reset_counters()
                    self._set(S.RECOVERING, now, "dependency back; waiting for it to "
                              "recover by itself", out)
                    self.grace_end = now + self.spec.start_grace
        elif s is S.EXHAUSTED:
            if self._is_up():
                self._recovered(now, out)
            elif (self.wakeup is not None and now >= self.wakeup
                  and self.spec.restart.exhausted_retry > 0):
                if self.deps_down:
                    self._block(now, out)
                else:
                    self._restart_now(now, f"slow retry after the ladder: {self._why()}", out,
                                      force=True)
        self._schedule(now)
        return out

    # ------------------------------------------------------------ pieces
    def _all_ok(self) -> bool:
        return all(c.last in (Status.OK, Status.WARNING) for c in self.counters.values())

    def _why(self) -> str:
        if self.unit_dead:
            return self.unit_detail or "process exited"
        return self.failing_summary()

    def _open_incident(self, now: float) -> None:
        if self.incident_start is None:
            self.incident_start = now
            self.incident_restarts = 0
            self.ladder_done = False

    def _recovered(self, now: float, out: list[Action]) -> None:
        self.incident_start = None
        self.incident_restarts = 0
        self.up_since = now
        self._set(ServiceState.UP, now, "all checks passing", out)
        self.next_action = "probing"

    def _healthy_reset(self, now: float) -> None:
        if (self.up_since is not None and self.restarts
                and now - self.up_since >= self.spec.healthy_reset):
            self.restarts.clear()
            self.ladder_done = False

    def _block(self, now: float, out: list[Action]) -> None:
        deps = ", ".join(self.deps_down)
        self._set(ServiceState.BLOCKED, now, f"blocked by dependency {deps} (down); {self._why()}",
                  out)
        self.next_action = f"wait for {deps}"

    def _on_failure(self, now: float, reason: str, out: list[Action]) -> None:
        self._open_incident(now)
        self.up_since = None
        if self.deps_down:
            self._block(now, out)
            return
        if self.spec.mode is Mode.OBSERVE:
            # shadow mode: the whole policy is evaluated (budget, window, ladder) on
            # restarts that are only counted (shadow_restarts), never made
            policy = self.spec.restart
            cutoff = now - policy.window
            self.shadow_restarts = [t for t in self.shadow_restarts if t > cutoff]
            if len(self.shadow_restarts) < policy.budget:
                self.shadow_restarts.append(now)
                whats = ["restart"]
                note = f"would restart ({len(self.shadow_restarts)}/{policy.budget})"
            elif not self.ladder_done:
                self.ladder_done = True
                whats = [step.action.value for step in self.spec.ladder] or ["nothing"]
                note = (f"budget would be spent ({policy.budget} in "
                        f"{format_duration(policy.window)}): would run the ladder "
                        f"({', '.join(whats)})")
            else:
                whats = []
                note = "budget would be spent and the ladder run: would retry slowly"
            for what in whats:
                self.would_do += 1
                out.append(WouldDo(what, reason))
            self._set(ServiceState.FAILING, now, f"observe mode, {note}: {reason}", out)
            self._reset_counters()
            self.unit_dead = False
            return
        policy = self.spec.restart
        if len(self.restarts) >= policy.budget:
            self._exhausted(now, reason, out)
            return
        delay = policy.delay(self.incident_restarts)
        if delay > 0 and policy.jitter > 0:
            delay *= 1.0 + self.rng.uniform(-policy.jitter, policy.jitter)
        if delay <= 0:
            self._restart_now(now, reason, out)
        else:
            self._set(ServiceState.BACKOFF, now, reason, out)
            self.wakeup = now + delay
            self.next_action = f"restart in {format_duration(delay)}"

    def _restart_now(self, now: float, reason: str, out: list[Action],
                     force: bool = False) -> None:
        policy = self.spec.restart
        if not force and len(self.restarts) >= policy.budget:
            self._exhausted(now, reason, out)
            return
        self.restarts.append(now)
        self.incident_restarts += 1
        used = len(self.restarts)
        self._set(ServiceState.RESTARTING, now,
                  f"{reason}; budget {min(used, policy.budget)}/{policy.budget}", out)
        out.append(Restart(reason, used, policy.budget))
        self.next_action = "restart in progress"

    def _exhausted(self, now: float, reason: str, out: list[Action]) -> None:
        policy = self.spec.restart
        msg = (f"restart budget spent ({len(self.restarts)}/{policy.budget} in "
               f"{format_duration(policy.window)}): {reason}")
        if not self.ladder_done:
            self.ladder_done = True
            start = self.incident_start if self.incident_start is not None else now
            for step in self.spec.ladder:
                out.append(RunStep(step, msg, start, len(self.restarts)))
        self._set(ServiceState.EXHAUSTED, now, msg, out)
        if policy.exhausted_retry > 0:
            # the next retry comes when a budget slot frees up or after exhausted_retry
            oldest = min(self.restarts) if self.restarts else now
            retry_at = min(now + policy.exhausted_retry, oldest + policy.window)
            self.wakeup = max(retry_at, now + policy.backoff_max)
            self.next_action = f"probing; retry restart in {format_duration(self.wakeup - now)}"
        else:
            self.wakeup = None
            self.next_action = "probing; waiting for the service to come back"

    def _schedule(self, now: float) -> None:
        S = ServiceState
        if self.state in (S.STARTING, S.RECOVERING):
            self.wakeup = self.grace_end if self.grace_end > now else None
        elif self.state in (S.UP, S.FAILING):
            if self.restarts and self.up_since is not None:
                self.wakeup = self.up_since + self.spec.healthy_reset
                if self.wakeup <= now:
                    self.wakeup = None
            else:
                self.wakeup = None
        elif self.state in (S.RESTARTING, S.BLOCKED):
            self.wakeup = None
        # BACKOFF and EXHAUSTED keep the wakeup they set
