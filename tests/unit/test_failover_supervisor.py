"""guardian's Supervisor with a failover group: two Supervisors (vm01, vm02) in one loop,
their engines on loopback with the fake kernel of test_failover_engine.  A tracked
service's ladder rung ``failover`` yields the VIP; its recovery makes the node a
backup again; status, the status table, switchover and reload."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from test_failover_engine import FakeLan, FakeVipOps, free_port
from unit_helpers import flag_service_toml, until

from guardian import Supervisor, config
from guardian.cli import format_status_table
from ipfailover._engine import PairEngine, ServiceHooks
from ipfailover._settings import GroupSettings

KEY = "1 " + "ab" * 32 + "\n"


def toml(node: str, peer: str, port: int, tmp: Path, flag: Path, priority: int) -> str:
    me, other = ("127.0.0.1", "127.0.0.2") if node == "vm01" else ("127.0.0.2", "127.0.0.1")
    return f"""
[guardian]
state_dir = "{tmp}/{node}"

{flag_service_toml(f"{flag}.{node}", ladder="failover")}
[failover]
node = "{node}"
key_file = "{tmp}/failover.key"
port = {port}

[failover.groups.web]
peer = "{peer}"
priority = {priority}
interface = "lo"
vips = ["192.0.2.100/24"]
paths = [{{ local = "{me}", peer = "{other}" }}]
interval = "50ms"
init_dead = "300ms"
services = ["web"]
"""


@contextlib.asynccontextmanager
async def running(spec: Any, lan: FakeLan, node: str) -> AsyncIterator[Supervisor]:
    def factory(settings: GroupSettings, hooks: ServiceHooks) -> PairEngine:
        return PairEngine(settings, ops=FakeVipOps(node, lan), services=hooks, netlink=False)

    sup = Supervisor(spec, control=False, engine_factory=factory)
    task = asyncio.create_task(sup.run())
    await asyncio.wait_for(sup.ready.wait(), 10)
    try:
        yield sup
    finally:
        sup.stop()
        await asyncio.wait_for(task, 10)


def group(sup: Supervisor) -> dict[str, Any]:
    groups = sup.status()["failover"]
    assert len(groups) == 1
    return dict(groups[0])


def test_ladder_failover_rung_moves_the_vip_and_recovery_returns(tmp_path: Path) -> None:
    (tmp_path / "failover.key").write_text(KEY)
    (tmp_path / "failover.key").chmod(0o600)
    flag = tmp_path / "broken"
    port = free_port()
    lan = FakeLan()
    spec1 = config.loads(toml("vm01", "vm02", port, tmp_path, flag, 150), "vm01.toml")
    spec2 = config.loads(toml("vm02", "vm01", port, tmp_path, flag, 100), "vm02.toml")
    assert not [w for w in spec1.warnings if "failover" in w], spec1.warnings

    async def scenario() -> None:
        async with running(spec1, lan, "vm01") as s1, running(spec2, lan, "vm02") as s2:
            await until(lambda: group(s1)["state"] == "master"
                        and group(s2)["state"] == "backup", 5, "vm01 master")
            await until(lambda: group(s1)["vips_held"] == ["192.0.2.100/24"], 2, "VIP on vm01")
            table = format_status_table(s1.status())
            assert "failover web: MASTER (node vm01, priority 150)" in table, table
            assert "held here: 192.0.2.100/24" in table and "path 0:" in table, table

            flag.with_suffix(".vm01").touch()  # web fails on vm01: budget 0 -> ladder
            await until(lambda: group(s2)["state"] == "master", 5, "vm02 master")
            g1 = group(s1)
            assert g1["state"] == "fault" and "service web" in g1["reason"], g1["reason"]
            await until(lambda: lan.holders.get("192.0.2.100") == {"vm02"}, 2, "on vm02")

            flag.with_suffix(".vm01").unlink()  # web is up again: a healthy backup
            await until(lambda: group(s1)["state"] == "backup"
                        and group(s2)["peer"]["state"] == "backup", 5, "vm01 backup")
            assert lan.overlaps == []

            reply = await s1.switchover(None)  # from the standby: pull
            assert reply["ok"] and reply["outcome"]["ok"], reply
            await until(lambda: lan.holders.get("192.0.2.100") == {"vm01"}, 2, "back")
            assert (await s1.switchover("mail"))["error"] == "no failover group named 'mail'"

            # reload: an unchanged group keeps its engine; a changed one is replaced
            engine = s1.engines["web"]
            s1.reload(config.loads(toml("vm01", "vm02", port, tmp_path, flag, 150)))
            assert s1.engines["web"] is engine
            s1.reload(config.loads(toml("vm01", "vm02", port, tmp_path, flag, 160)))
            assert s1.engines["web"] is not engine
            await until(lambda: group(s1)["priority"] == 160
                        and group(s1)["state"] in ("master", "backup"), 5, "new engine")
        # both stopped: the VIP released, nobody holds it
        assert lan.holders.get("192.0.2.100") == set(), "\n".join(map(str, lan.ops[-12:]))
        assert lan.overlaps == []

    asyncio.run(scenario())


def test_cold_service_failure_leaves_a_standby_not_a_fault_for_good(tmp_path: Path) -> None:
    """A cold (master-only) tracked service fails: the VIP moves to the peer, which
    starts it there; this node stops it and, though the service would still fail
    here, becomes a standby again rather than staying FAULT forever."""
    (tmp_path / "failover.key").write_text(KEY)
    (tmp_path / "failover.key").chmod(0o600)
    flag = tmp_path / "broken"
    port = free_port()
    lan = FakeLan()

    def cold(node: str, peer: str, priority: int) -> str:
        return toml(node, peer, port, tmp_path, flag, priority).replace(
            'services = ["web"]\n', 'services = ["web"]\ncold = ["web"]\ncold_timeout = "2s"\n')

    spec1 = config.loads(cold("vm01", "vm02", 150), "vm01.toml")
    spec2 = config.loads(cold("vm02", "vm01", 100), "vm02.toml")

    async def scenario() -> None:
        async with running(spec1, lan, "vm01") as s1, running(spec2, lan, "vm02") as s2:
            await until(lambda: group(s1)["state"] == "master"
                        and group(s2)["state"] == "backup", 5, "vm01 master")
            await until(lambda: "web" in s1.runners and "web" not in s2.runners, 5,
                        "web supervised on the master only (cold)")
            flag.with_suffix(".vm01").touch()     # web fails on vm01, for good
            await until(lambda: group(s2)["state"] == "master", 5, "vm02 master")
            await until(lambda: "web" in s2.runners and "web" not in s1.runners, 5,
                        "web moved with the VIP",
                        lambda: {"s1": list(s1.runners), "s2": list(s2.runners),
                                 "g1": group(s1)["state"], "g2": group(s2)["state"]})
            await until(lambda: group(s1)["state"] == "backup", 5, "vm01 a standby again")
            await until(lambda: lan.holders.get("192.0.2.100") == {"vm02"}, 2, "on vm02")
            assert lan.overlaps == []

    asyncio.run(scenario())
