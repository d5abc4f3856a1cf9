"""Smoke test of the failover benchmark (guardian.lab.bench_failover): keepalived at
100 ms adverts, one "VM dies" run and a 5 s random-loss window; checks the records'
shape and the report, not the figures (the whole test stays under a minute)."""

from __future__ import annotations

import json
import math
import time

import pytest

from guardian.lab import bench_failover as bf

pytestmark = pytest.mark.lab

REQUIRED = {"scenario", "system", "runs", "median_s", "max_s"}


def test_keepalived_config_is_vrrp3_unicast() -> None:
    text = bf.keepalived_config("vm01", "192.0.2.11", "192.0.2.12", 150, 0.1, bf.FAST)
    for line in ("version 3", "priority 150", "advert_int 0.1", "unicast_src_ip 192.0.2.11",
                 "192.0.2.12", f"{bf.VIP}/24 dev eth0", "state BACKUP"):
        assert line in text, line
    assert "nopreempt" not in text  # keepalived's default: preempt
    assert "advert_int 1\n" in bf.keepalived_config("vm02", "192.0.2.12", "192.0.2.11", 100,
                                                     1.0, bf.DEFAULTS)
    assert bf.vrrp_master_down(0.1, 100) == pytest.approx(0.3609, abs=1e-4)


def test_loss_table_and_overlap() -> None:
    table = bf.loss_table("guardianbench_g00000", "ip protocol 112", 10)
    assert table.count("numgen random mod 100 < 10 counter drop") == 2  # in and out
    assert "hook input" in table and "hook output" in table
    assert bf.overlap([(0.0, 1.0), (2.0, 3.0)], [(0.5, 2.5)]) == pytest.approx(1.0)
    assert bf.total([(0.0, 1.0), (2.0, 2.5)]) == pytest.approx(1.5)


def test_bench_failover_keepalived_runs_and_reports() -> None:
    t0 = time.monotonic()
    records = bf.run_benchmark(
        1,
        systems=(bf.KEEPALIVED,),
        scenarios=(bf.VM_DIES, bf.FALSE_FAILOVERS),
        profiles=(bf.FAST,),
        loss_seconds=5,
        run_timeout=10,
        log=print,
    )
    took = time.monotonic() - t0
    report = bf.format_report(records)
    print(report)
    print(f"took {took:.1f} s")
    assert took < 60
    assert json.loads(json.dumps(records)) == records

    by = {r["scenario"]: r for r in records}
    assert set(by) == {"vm-dies-100ms", "false-failovers-100ms"}
    for r in records:
        assert REQUIRED <= r.keys()
        assert r["system"] == bf.KEEPALIVED and r["profile"] == bf.FAST
        assert r["failures"] == 0, r["failure_reasons"]
        assert "version 3" in r["configs"]["vm01"] and "priority 100" in r["configs"]["vm02"]

    dies = by["vm-dies-100ms"]
    assert dies["runs"] == 1 and dies["samples"] == [dies["median_s"]]
    for key in ("median_s", "max_s", "vip_on_standby_median_s"):
        assert isinstance(dies[key], float) and math.isfinite(dies[key]) and 0 < dies[key] < 10
    assert dies["takeovers"] == ["vm01->vm02, settled on vm01"]  # preempt: back to vm01
    assert "ratio_vs_guardian" not in dies  # guardian not run

    loss = by["false-failovers-100ms"]
    assert loss["runs"] == 1 and loss["median_s"] is None
    assert isinstance(loss["false_failovers"], int) and loss["false_failovers"] >= 0
    assert loss["master"] == "vm01" and loss["backup"] == "vm02"
    assert 4.5 < loss["seconds"] < 6
    assert 30 < loss["heartbeats_to_backup"] < 70  # 100 ms adverts for 5 s
    assert 0 <= loss["dropped_to_backup"] < loss["heartbeats_to_backup"]

    assert "vm-dies-100ms" in report and "keepalived" in report
    assert "goals and earlier measurements" in report
