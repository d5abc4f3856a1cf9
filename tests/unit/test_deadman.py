"""The dead-man switch (``[watchdog]``): pets only while guardiand is fit, stops when a
critical service stays down past its grace, magic close on a clean stop.

No watchdog device exists on this machine (the kernel has no softdog; a Xen guest has
xen_wdt), so the device is stood in for by a FIFO whose other end the test reads: the
pets ("\\0") and the magic close ("V") are the bytes the kernel driver would get.  The
test of a real device runs only where one exists."""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Iterator
from pathlib import Path

import pytest
from unit_helpers import flag_service_toml, until

from checks import ConfigErrors
from guardian import Supervisor, config
from guardian._deadman import Deadman, Verdict, WatchdogError
from guardian._model import WatchdogSpec
from guardian.cli import format_status_table


class FifoDevice:
    """A FIFO standing in for /dev/watchdog; ``read()`` drains what was written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.data = b""

    def read(self) -> bytes:
        while select.select([self.fd], [], [], 0)[0]:
            chunk = os.read(self.fd, 4096)
            if not chunk:
                break
            self.data += chunk
        return self.data

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[FifoDevice]:
    dev = FifoDevice(tmp_path / "watchdog")
    yield dev
    dev.close()


def test_verdict_grace_per_critical_service() -> None:
    v = Verdict(WatchdogSpec(critical=("web", "dns"), critical_grace=10.0))
    assert v.fit(0.0, {"web": True, "dns": True}) == (True, "ok")
    assert v.fit(1.0, {"web": False, "dns": True}) == (True, "ok")    # web down since 1
    assert v.fit(11.0, {"web": False, "dns": False})[0] is True       # 10 s: not over
    fit, why = v.fit(11.5, {"web": False, "dns": False})
    assert not fit and why.startswith("critical service web down for 10s"), why
    assert v.fit(12.0, {"web": True, "dns": False}) == (True, "ok")   # dns: since 11
    assert not v.fit(21.5, {"web": True, "dns": False})[0]
    # a service that comes back resets its clock; one not configured is no outage
    assert v.fit(22.0, {"web": True, "dns": True}) == (True, "ok")
    assert v.fit(40.0, {"web": True}) == (True, "ok")
    assert v.fit(40.0, {"web": False})[0] and v.down_since == {"web": 40.0}


def test_pets_then_stops_then_magic_close(fifo: FifoDevice) -> None:
    now = [0.0]
    health = {"web": True}
    dm = Deadman(WatchdogSpec(device=str(fifo.path), critical=("web",), critical_grace=5.0),
                 lambda: health, clock=lambda: now[0])
    dm.open()
    assert dm.status()["armed"] and dm.device_timeout is None  # a FIFO takes no ioctl
    assert dm.pet_once() and fifo.read() == b"\0"
    health["web"] = False
    now[0] = 3.0
    assert dm.pet_once() and fifo.read() == b"\0\0"        # within the grace
    now[0] = 9.0
    assert not dm.pet_once() and fifo.read() == b"\0\0"    # past it: no pet
    st = dm.status()
    assert st["petting"] is False and "critical service web down for 6s" in st["reason"]
    assert st["pets"] == 2 and st["last_pet_age"] == 6.0
    health["web"] = True
    assert dm.pet_once() and fifo.read() == b"\0\0\0"
    dm.close()
    assert fifo.read() == b"\0\0\0V" and not dm.status()["armed"]


def test_close_without_disarm_leaves_it_armed(fifo: FifoDevice) -> None:
    dm = Deadman(WatchdogSpec(device=str(fifo.path), disarm_on_stop=False), dict)
    dm.open()
    assert dm.pet_once()
    dm.close()
    assert fifo.read() == b"\0" and dm.reason == "closed, still armed"


def test_missing_device_is_a_clear_error(tmp_path: Path) -> None:
    dm = Deadman(WatchdogSpec(device=str(tmp_path / "nope")), dict)
    with pytest.raises(WatchdogError, match=r"watchdog .*/nope: No such file"):
        dm.open()


def toml(device: Path, extra: str = "") -> str:
    return f"""
[guardian]
state_dir = "{device.parent}/state"

{flag_service_toml(device.parent / "broken", ladder="alert")}
[watchdog]
device = "{device}"
timeout = "0s"
interval = "50ms"
critical = ["web"]
critical_grace = "400ms"
{extra}"""


def test_supervisor_pets_while_fit_and_stops_when_critical_service_stays_down(
        fifo: FifoDevice) -> None:
    spec = config.loads(toml(fifo.path), "guardian.toml")
    broken = fifo.path.parent / "broken"

    async def scenario() -> None:
        sup = Supervisor(spec, control=False)
        task = asyncio.create_task(sup.run())
        try:
            async with asyncio.timeout(15):
                await sup.ready.wait()
                await until(lambda: len(fifo.read()) >= 4, 5, "pets")
                assert set(fifo.read()) == {0}
                st = sup.status()["watchdog"]
                assert st["petting"] and st["device"] == str(fifo.path)
                assert "PETTING" in format_status_table(sup.status())
                broken.touch()
                await until(lambda: not sup.status()["watchdog"]["petting"], 5,
                            "pets stopping")
                stopped_at = len(fifo.read())
                await asyncio.sleep(0.3)
                assert len(fifo.read()) == stopped_at     # no pet while unfit
                st = sup.status()["watchdog"]
                assert "critical service web down" in st["reason"], st
                assert "ARMED, NOT PETTING" in format_status_table(sup.status())
                broken.unlink()
                await until(lambda: len(fifo.read()) > stopped_at, 5, "pets again")
        finally:
            sup.stop()
            async with asyncio.timeout(10):
                await task
        assert fifo.read().endswith(b"V")  # clean stop: magic close

    asyncio.run(scenario())


def test_watchdog_config_errors_name_the_key(tmp_path: Path) -> None:
    dev = tmp_path / "watchdog"

    def errors(extra: str, base: str | None = None) -> list[str]:
        text = (base or toml(dev)) + extra
        with pytest.raises(ConfigErrors) as info:
            config.loads(text, "guardian.toml")
        return [str(e) for e in info.value.errors]

    assert errors("colour = 1\n") == ["guardian.toml: watchdog.colour: unknown key"]
    base = toml(dev).replace('critical = ["web"]', 'critical = ["mail"]')
    assert errors("", base) == [
        "guardian.toml: watchdog.critical[0]: 'mail' is not a configured service "
        "([services.NAME])"]
    base = toml(dev).replace('timeout = "0s"', 'timeout = "10s"').replace(
        'interval = "50ms"\ncritical', 'interval = "10s"\ncritical')
    assert errors("", base) == [
        "guardian.toml: watchdog.interval: must be shorter than timeout (10s)"]
    base = toml(dev).replace(f'device = "{dev}"', 'device = "watchdog"')
    assert errors("", base) == ["guardian.toml: watchdog.device: must be an absolute path"]
    spec = config.loads(toml(dev).replace('critical = ["web"]\n', ""), "g.toml")
    assert spec.watchdog is not None and spec.watchdog.critical == ()
    assert any("watchdog: no critical services" in w for w in spec.warnings)
    spec = config.loads(toml(dev).replace('timeout = "0s"\ninterval = "50ms"\n', ""), "g.toml")
    assert spec.watchdog is not None and spec.watchdog.period == 10.0  # timeout / 3


@pytest.mark.skipif(not os.path.exists("/dev/watchdog"),
                    reason="no /dev/watchdog on this machine (this kernel has no softdog "
                           "module; a Xen guest has xen_wdt)")
def test_real_watchdog_device_arms_pets_and_disarms() -> None:  # pragma: no cover
    dm = Deadman(WatchdogSpec(device="/dev/watchdog", timeout=60.0), dict)
    dm.open()
    try:
        assert dm.device_timeout is not None and dm.device_timeout > 0
        assert dm.pet_once() and dm.pet_once()
    finally:
        dm.close()
    assert dm.reason == "disarmed (clean stop)"
