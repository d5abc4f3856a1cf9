"""Smoke test of the escalation benchmark (guardian.lab.bench_escalation): one run of
guardian and of monit; checks the records' shape, that the phases add up, and the
report, not the figures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from guardian.lab import bench_escalation as be

pytestmark = pytest.mark.lab


def test_bench_escalation_one_run_each(tmp_path: Path) -> None:
    t0 = time.monotonic()
    records = be.run_benchmark(1, be.SYSTEMS, tmp_path, log=print)
    took = time.monotonic() - t0
    report = be.format_report(records)
    print(report)
    assert took < 90, took
    assert json.loads(json.dumps(records)) == records
    g, m = records
    assert (g["system"], m["system"]) == ("guardian", "monit")
    assert g["runs"] == m["runs"] == 1 and not g["failures"] and not m["failures"]
    (s,) = g["samples"]
    # the phases add up: spent -> boot begins -> serving
    assert s["spent_to_boot"] + s["boot_to_serving"] == pytest.approx(s["spent_to_serving"])
    assert s["fault_to_spent"] + s["spent_to_serving"] == pytest.approx(s["fault_to_serving"])
    assert all(v > 0 for k, v in s.items() if k != "spent_to_accepted")
    assert 0 <= s["spent_to_accepted"] < s["spent_to_boot"]
    assert m["samples"][0]["fault_to_request_out"] > 0
    assert isinstance(m["ratio_vs_guardian"], float)
    for line in ("budget spent -> request accepted by hostd", "VM boot begins -> serving",
                 "monit/guardian =", "6-8 s"):
        assert line in report, line
