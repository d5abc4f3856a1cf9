"""Smoke test of the benchmark (guardian.lab.bench): one run of guardiand and supervisord
alone on SIGKILL, a 2 s idle measurement; checks the records' shape, not the figures."""

from __future__ import annotations

import json
import math
import time

import pytest

from guardian.config import loads
from guardian.lab import bench

pytestmark = pytest.mark.lab

REQUIRED = {"scenario", "system", "runs", "median_s", "max_s"}


def test_bench_config_changes_only_what_it_says() -> None:
    spec = loads(bench.guardiand_bench_config())
    apache = spec.services["apache2"]
    assert apache.restart.budget == 1000
    assert [(c.interval, c.timeout) for c in apache.checks] == [(0.5, 0.5)]
    assert apache.fall == 2
    assert spec.services["named"].checks[0].interval == 1.0  # the rest as shipped


def test_bench_runs_and_reports() -> None:
    t0 = time.monotonic()
    records = bench.run_benchmark(
        1,
        idle_seconds=2,
        systems=(bench.GUARDIAND, bench.SUPERVISORD),
        scenarios=(bench.SIGKILL,),
        run_timeout=10,
        log=print,
    )
    took = time.monotonic() - t0
    print(bench.format_report(records))
    print(f"took {took:.1f} s")
    assert json.loads(json.dumps(records)) == records

    outage = [r for r in records if r["scenario"] == bench.SIGKILL]
    assert [r["system"] for r in outage] == [bench.GUARDIAND, bench.SUPERVISORD]
    for r in outage:
        assert REQUIRED <= r.keys()
        assert r["runs"] == 1 and r["failures"] == 0, r
        for key in ("median_s", "max_s"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and 0 < r[key] < 10
        assert r["samples"] == [r["median_s"]]
    assert "ratio_vs_guardiand" in outage[1] and math.isfinite(outage[1]["ratio_vs_guardiand"])

    (idle,) = [r for r in records if r["scenario"].startswith("idle-")]
    assert idle["scenario"] == "idle-2s" and idle["system"] == bench.GUARDIAND
    assert 5 < idle["rss_mib"] < 500
    assert math.isfinite(idle["cpu_percent"]) and 0 <= idle["cpu_percent"] < 100
