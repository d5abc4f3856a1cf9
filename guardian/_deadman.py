"""The dead-man switch: guardiand pets a watchdog device (``/dev/watchdog``; in a Xen
guest the ``xen_wdt`` driver, which arms Xen's per-domain watchdog through
SCHEDOP_watchdog) only while it is fit to ask for help itself.

Petting stops -- and the hypervisor's ``on_watchdog`` action (xl.cfg) ends the guest
``timeout`` seconds later -- when:

* guardiand's event loop is wedged: the pets come from a task on that loop, so a
  loop that no longer runs its timers no longer pets;
* a **critical** service has been down (its state machine not healthy) for longer
  than ``critical_grace``: restarts and the escalation ladder had their chance, and a
  guest whose escalation channel is dead can still be recreated this way;
* guardiand itself dies or hangs (no process pets any more).

A clean stop disarms the device with the "magic close" (write ``V``, then close;
kernels built with ``CONFIG_WATCHDOG_NOWAYOUT`` ignore it), unless
``disarm_on_stop = false``.  ``[watchdog]`` in guardian.toml::

    [watchdog]
    device = "/dev/watchdog"
    timeout = "30s"          # set on the device (WDIOC_SETTIMEOUT); "0s": keep its own
    interval = "10s"         # pet period (default timeout / 3)
    critical = ["apache2"]   # services whose long outage stops the pets
    critical_grace = "5m"
    disarm_on_stop = true

The matching xl.cfg lines: ``on_watchdog = "restart"`` (the toolstack reboots the
guest from its config) and, where guardian-hostd owns restarts, ``on_crash =
"destroy"`` so that only one actor recreates domains.
"""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Callable, Mapping
from typing import Any

from ._model import WatchdogSpec

log = logging.getLogger("guardian.watchdog")

#: <linux/watchdog.h>: _IOWR('W', 6, int) and _IOR('W', 7, int)
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707


class Verdict:
    """Decides, pet by pet, whether guardiand is fit: the critical services' outages.
    Pure: fed the services' health and a clock."""

    def __init__(self, spec: WatchdogSpec) -> None:
        self.spec = spec
        self.down_since: dict[str, float] = {}

    def fit(self, now: float, healthy: Mapping[str, bool | None]) -> tuple[bool, str]:
        """``healthy``: service -> is its state machine healthy (None: not configured)."""
        worst: tuple[float, str] | None = None
        for name in self.spec.critical:
            ok = healthy.get(name)
            if ok is None:
                # a critical service missing from the configuration is not an outage
                self.down_since.pop(name, None)
                continue
            if ok:
                self.down_since.pop(name, None)
                continue
            since = self.down_since.setdefault(name, now)
            if worst is None or since < worst[0]:
                worst = (since, name)
        if worst is not None and now - worst[0] > self.spec.critical_grace:
            return False, (f"critical service {worst[1]} down for "
                           f"{now - worst[0]:.0f}s (critical_grace "
                           f"{self.spec.critical_grace:g}s)")
        return True, "ok"


class WatchdogError(OSError):
    pass


class Deadman:
    """Owns the open device; ``run()`` pets it from the event loop."""

    def __init__(self, spec: WatchdogSpec,
                 health: Callable[[], Mapping[str, bool | None]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.health = health
        self.clock = clock
        self.verdict = Verdict(spec)
        self.fd: int | None = None
        self.pets = 0
        self.last_pet: float | None = None
        self.petting = False
        self.reason = "not started"
        self.device_timeout: int | None = None
        self.error: str | None = None

    def open(self) -> None:
        """Open (which arms) the device and set its timeout; raises WatchdogError."""
        try:
            fd = os.open(self.spec.device, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise WatchdogError(exc.errno, f"watchdog {self.spec.device}: "
                                f"{exc.strerror or exc}") from None
        self.fd = fd
        if stat.S_ISCHR(os.fstat(fd).st_mode):
            if self.spec.timeout > 0:
                buf = array.array("i", [int(round(self.spec.timeout))])
                try:
                    fcntl.ioctl(fd, WDIOC_SETTIMEOUT, buf, True)
                except OSError as exc:
                    log.warning("watchdog %s: cannot set the timeout to %gs: %s; keeping "
                                "the device's own", self.spec.device, self.spec.timeout,
                                exc.strerror or exc)
            buf = array.array("i", [0])
            try:
                fcntl.ioctl(fd, WDIOC_GETTIMEOUT, buf, True)
                self.device_timeout = int(buf[0])
            except OSError:
                self.device_timeout = None
            if self.device_timeout and self.spec.period >= self.device_timeout:
                log.warning("watchdog %s: pet period %gs is not shorter than the device's "
                            "timeout %ds", self.spec.device, self.spec.period,
                            self.device_timeout)
        self.reason = "armed"
        log.info("watchdog %s armed (timeout %s, pet every %gs, critical: %s)",
                 self.spec.device,
                 f"{self.device_timeout}s" if self.device_timeout else "device default",
                 self.spec.period, ", ".join(self.spec.critical) or "none")

    def pet_once(self) -> bool:
        """One decision: pet if fit.  Returns whether it petted."""
        assert self.fd is not None
        now = self.clock()
        fit, why = self.verdict.fit(now, self.health())
        if not fit:
            if self.petting or self.reason != why:
                log.error("watchdog: not petting %s: %s; the hypervisor acts when it "
                          "expires", self.spec.device, why)
            self.petting = False
            self.reason = why
            return False
        try:
            os.write(self.fd, b"\0")
        except OSError as exc:
            if self.error is None:
                log.error("watchdog %s: write failed: %s", self.spec.device,
                          exc.strerror or exc)
            self.error = exc.strerror or str(exc)
            self.petting = False
            self.reason = f"write failed: {self.error}"
            return False
        if not self.petting:
            log.info("watchdog %s: petting", self.spec.device)
        self.error = None
        self.petting = True
        self.reason = "ok"
        self.pets += 1
        self.last_pet = now
        return True

    async def run(self) -> None:
        while True:
            self.pet_once()
            await asyncio.sleep(self.spec.period)

    def close(self, *, disarm: bool | None = None) -> None:
        """Stop: with ``disarm`` (default ``disarm_on_stop``) the magic close."""
        if self.fd is None:
            return
        disarm = self.spec.disarm_on_stop if disarm is None else disarm
        try:
            if disarm:
                try:
                    os.write(self.fd, b"V")
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.EBADF):
                        log.warning("watchdog %s: magic close failed: %s", self.spec.device,
                                    exc.strerror or exc)
        finally:
            os.close(self.fd)
            self.fd = None
        self.petting = False
        self.reason = "disarmed (clean stop)" if disarm else "closed, still armed"
        log.info("watchdog %s %s", self.spec.device,
                 "disarmed" if disarm else "left armed: the hypervisor acts when it expires")

    def status(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "device": self.spec.device,
            "armed": self.fd is not None,
            "petting": self.petting,
            "reason": self.reason,
            "pets": self.pets,
            "last_pet_age": None if self.last_pet is None else round(now - self.last_pet, 3),
            "period": self.spec.period,
            "timeout": self.device_timeout,
            "critical": list(self.spec.critical),
            "critical_down": {n: round(now - t, 1) for n, t in self.verdict.down_since.items()},
        }
