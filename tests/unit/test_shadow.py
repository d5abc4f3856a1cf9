"""Shadow mode in a running Supervisor: an observe-only check and a service in
observe mode are judged like the others, counted, reported, and never acted on."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import guardian

sys.path.insert(0, str(Path(__file__).parent / "plugin_pkg"))

CONFIG = """
[services.web]
backend = "command"
start_command = ["/bin/true"]
status_command = ["/bin/true"]
fall = 2
[[services.web.checks]]
name = "main"
type = "guardian_test_plugin:ConstantCheck"
status = "OK"
interval = "50ms"
timeout = "1s"
[[services.web.checks]]
name = "candidate"
type = "guardian_test_plugin:ConstantCheck"
status = "CRITICAL"
message = "the new check is too strict"
mode = "observe"
interval = "50ms"
timeout = "1s"

[services.db]
backend = "command"
start_command = ["/bin/true"]
status_command = ["/bin/true"]
mode = "observe"
fall = 1
start_grace = "200ms"
ladder = ["failover", "alert"]
[services.db.restart]
budget = 2
window = "5m"
[[services.db.checks]]
name = "main"
type = "guardian_test_plugin:ConstantCheck"
status = "CRITICAL"
interval = "50ms"
timeout = "1s"
"""


def test_shadow_mode_counts_and_never_acts() -> None:
    spec = guardian.config.loads(CONFIG)

    async def scenario() -> dict[str, dict[str, object]]:
        sup = guardian.Supervisor(spec, control=False)
        task = asyncio.create_task(sup.run())
        await asyncio.sleep(1.5)
        status = {s["name"]: s for s in sup.status()["services"]}
        scrape = sup.metrics.text()
        sup.stop()
        await task
        status["_metrics"] = {"text": scrape}
        return status

    st = asyncio.run(scenario())
    web, db = st["web"], st["db"]
    # the observe-only check failed the service in shadow (several times: fall 2,
    # counter reset after each), the service itself stayed up and was never restarted
    assert web["state"] == "up" and web["restarts_total"] == 0
    candidate = [c for c in web["checks"] if c["name"] == "candidate"][0]  # type: ignore[union-attr,index]
    assert candidate["would_fail"] >= 3
    # the service in observe mode: would restart twice, then would run its ladder
    assert db["restarts_total"] == 0 and db["mode"] == "observe"
    assert db["would_do"] == 4, db                      # restart, restart, failover, alert
    assert "would retry slowly" in str(db["reason"]) or "ladder" in str(db["reason"])
    text = str(st["_metrics"]["text"])
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.labels["service"], s.labels["action"], s.labels["check"]): s.value
               for s in fams["guardian_would_do"].samples if s.name.endswith("_total")}
    assert samples[("web", "restart", "candidate")] >= 3
    assert samples[("db", "restart", "")] == 2
    assert samples[("db", "failover", "")] == 1 and samples[("db", "alert", "")] == 1
