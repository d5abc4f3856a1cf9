"""States and events of guardian's state machines.  Dependency-free on purpose."""

from __future__ import annotations

import enum


class ServiceState(enum.Enum):
    """Where one supervised service stands."""

    STARTING = "starting"      # daemon just started; waiting for the first healthy verdicts
    UP = "up"                  # every check has risen
    FAILING = "failing"        # failing verdicts, fall threshold not reached yet
    BACKOFF = "backoff"        # a restart is due, waiting out the backoff delay
    RESTARTING = "restarting"  # the backend is restarting the unit
    RECOVERING = "recovering"  # restarted; within the start grace, waiting to rise
    BLOCKED = "blocked"        # failing, but a required service is down: not restarted
    EXHAUSTED = "exhausted"    # restart budget spent, ladder run; still probing, slow retries

    @property
    def healthy(self) -> bool:
        """Can services that require this one count on it?  Only when it is up: a
        dependent failing while its dependency fails too (FAILING, not yet at its
        fall threshold) is most likely failing because of it, and is not restarted."""
        return self is ServiceState.UP


class LadderAction(enum.Enum):
    """Rungs run in order once the restart budget is spent."""

    FAILOVER = "failover"      # hand the service IP to the standby (ipfailover)
    ESCALATE = "escalate"      # ask dom0 to recreate this VM (guardian-hostd)
    EXEC = "exec"              # run a script; the incident in environment variables
    ALERT = "alert"            # log at error level and run the alert hook


class Mode(enum.Enum):
    ACT = "act"                # do what the ladder says
    OBSERVE = "observe"        # shadow mode: evaluate, log what would be done, do nothing
