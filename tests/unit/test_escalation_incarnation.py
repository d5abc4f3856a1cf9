"""Where every escalation channel (http, exec; xenstore has its own reader) gets this
VM's incarnation: dom0's XenStore node ``guardian/incarnation`` when XenStore is
reachable and has it (a guest can read it, not forge it), else ``incarnation_file``.
Against the stand-in xenstored, and a "xenstored" that never answers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import guardian.xenstore
from guardian._model import EscalationSpec
from guardian.escalation import Channel, ExecChannel, HttpChannel
from guardian.escalation._channel import xenstore_incarnation, xenstore_reachable
from guardian.xenstore import StandIn

UUID = "6c1b3f0e-0000-4000-8000-000000000001"


@pytest.fixture
def no_xen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No XenStore here: no $XENSTORED_PATH, no xenstored socket, no xenbus device."""
    monkeypatch.delenv("XENSTORED_PATH", raising=False)
    monkeypatch.setattr(guardian.xenstore, "DEFAULT_SOCKET", str(tmp_path / "no-socket"))
    monkeypatch.setattr(guardian.xenstore, "XENBUS_DEVICE", str(tmp_path / "no-xenbus"))


@pytest.fixture
def inc_file(tmp_path: Path) -> Path:
    path = tmp_path / "incarnation"
    path.write_text("5\n")
    return path


def channels(inc_file: Path) -> list[Channel]:
    http = EscalationSpec(channel="http", vm="vm01", url="http://192.0.2.2:8740",
                          key_file="/nonexistent", incarnation_file=str(inc_file))
    exe = EscalationSpec(channel="exec", vm="vm01", command=("true",),
                         incarnation_file=str(inc_file))
    return [HttpChannel.from_spec(http), ExecChannel.from_spec(exe)]


def incarnations(chans: list[Channel], timeout: float = 5.0) -> list[int | None]:
    async def all_of() -> list[int | None]:
        deadline = time.monotonic() + timeout
        return [await ch.incarnation(deadline) for ch in chans]

    return asyncio.run(all_of())


@pytest.fixture
def standin(tmp_path: Path, no_xen: None) -> Iterator[tuple[StandIn, int]]:
    with StandIn(tmp_path / "xs") as xs:
        yield xs, xs.create_domain("vm01", UUID)


def test_without_xenstore_the_file_is_read(no_xen: None, inc_file: Path) -> None:
    assert not xenstore_reachable()
    chans = channels(inc_file)
    assert incarnations(chans) == [5, 5]
    inc_file.unlink()
    assert incarnations(chans) == [None, None]


def test_reachable_by_environment_socket_or_xenbus(
        tmp_path: Path, no_xen: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not xenstore_reachable()
    dev = tmp_path / "xenbus"
    dev.touch()
    monkeypatch.setattr(guardian.xenstore, "XENBUS_DEVICE", str(dev))
    assert xenstore_reachable()
    monkeypatch.setattr(guardian.xenstore, "XENBUS_DEVICE", str(tmp_path / "none"))
    monkeypatch.setattr(guardian.xenstore, "DEFAULT_SOCKET", str(dev))
    assert xenstore_reachable()
    monkeypatch.setattr(guardian.xenstore, "DEFAULT_SOCKET", str(tmp_path / "none"))
    monkeypatch.setenv("XENSTORED_PATH", str(tmp_path / "anything"))
    assert xenstore_reachable()


def test_dom0s_node_wins_over_the_file(
        standin: tuple[StandIn, int], inc_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    xs, domid = standin
    top = f"/local/domain/{domid}"
    monkeypatch.setenv("XENSTORED_PATH", str(xs.name_socket("vm01")))
    chans = channels(inc_file)
    assert incarnations(chans) == [5, 5]                        # not published yet
    xs.daemon.write(f"{top}/data/guardian/incarnation", "9")    # guest-writable: ignored
    assert incarnations(chans) == [5, 5]
    xs.daemon.write(f"{top}/guardian/incarnation", "7", ["n0", f"r{domid}"])
    assert incarnations(chans) == [7, 7]
    inc_file.unlink()                                           # the file is not needed
    assert incarnations(chans) == [7, 7]
    xs.daemon.write(f"{top}/guardian/incarnation", "garbage", ["n0", f"r{domid}"])
    assert incarnations(chans) == [None, None]
    inc_file.write_text("6\n")
    assert incarnations(chans) == [6, 6]


def test_another_domains_node_is_not_read(
        standin: tuple[StandIn, int], inc_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The node is read relative to this guest's own domain path: vm02's incarnation,
    published for vm02, is not vm01's (and vm01 may not read it anyway)."""
    xs, _ = standin
    other = xs.create_domain("vm02", "6c1b3f0e-0000-4000-8000-000000000002")
    xs.daemon.write(f"/local/domain/{other}/guardian/incarnation", "3", ["n0", f"r{other}"])
    monkeypatch.setenv("XENSTORED_PATH", str(xs.name_socket("vm01")))
    assert incarnations(channels(inc_file)) == [5, 5]


def test_a_missing_socket_falls_back_to_the_file(
        tmp_path: Path, no_xen: None, inc_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENSTORED_PATH", str(tmp_path / "gone.sock"))
    assert xenstore_reachable()
    assert incarnations(channels(inc_file)) == [5, 5]


def test_a_silent_xenstored_costs_at_most_the_read_timeout_and_blocks_no_loop(
        tmp_path: Path, no_xen: None, inc_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A xenstored that accepts and never answers: the file's value after the
    deadline, while the event loop keeps running."""
    path = tmp_path / "silent.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    monkeypatch.setenv("XENSTORED_PATH", str(path))
    ch = channels(inc_file)[0]

    async def scenario() -> tuple[int | None, float, int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        t0 = time.monotonic()
        got = await ch.incarnation(t0 + 0.4)
        took = time.monotonic() - t0
        stop.set()
        await task
        return got, took, ticks

    try:
        got, took, ticks = asyncio.run(scenario())
        assert got == 5
        assert 0.3 < took < 1.5
        assert ticks >= 10                                      # the loop was not blocked
        # the cap: even with a long deadline, one read waits XENSTORE_READ_TIMEOUT at most
        t0 = time.monotonic()
        assert asyncio.run(xenstore_incarnation(t0 + 60, timeout=0.3)) is None
        assert time.monotonic() - t0 < 1.5
    finally:
        srv.close()


def test_no_time_left_reads_the_file_without_waiting(
        standin: tuple[StandIn, int], inc_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    xs, domid = standin
    xs.daemon.write(f"/local/domain/{domid}/guardian/incarnation", "7", ["n0", f"r{domid}"])
    monkeypatch.setenv("XENSTORED_PATH", str(xs.name_socket("vm01")))
    assert incarnations(channels(inc_file), timeout=-1.0) == [5, 5]
    assert incarnations(channels(inc_file)) == [7, 7]
