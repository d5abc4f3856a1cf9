"""The escalate rung in a running Supervisor: a command-backend service whose check
always fails, restart budget 0, ladder ["escalate"], and the exec channel writing
what it gets to a file -> exactly one request, accepted, visible in status."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from unit_helpers import until

from checks import Check, CheckResult, Options, Status
from guardian import CheckSpec, GuardianSpec, LadderStep, RestartPolicy, ServiceSpec, Supervisor
from guardian._model import EscalationSpec
from guardian._states import LadderAction


class AlwaysCritical(Check):
    kind = "always-critical"

    @classmethod
    def from_options(cls, opts: Options) -> AlwaysCritical:
        return cls()

    def describe(self) -> str:
        return "always critical"

    async def probe(self, deadline: float) -> CheckResult:
        return CheckResult(Status.CRITICAL, "connection refused")


def make_spec(tmp_path: Path) -> GuardianSpec:
    record = tmp_path / "requests.jsonl"
    prog = tmp_path / "escalate"
    prog.write_text('#!/bin/sh\n[ "$GUARDIAN_ESCALATION_MODE" = send ] || exit 0\n'
                    f'cat >> {record}; echo >> {record}\n')
    prog.chmod(0o755)
    inc = tmp_path / "incarnation"
    inc.write_text("9\n")
    return GuardianSpec(
        state_dir=tmp_path / "state",
        services={"web": ServiceSpec(
            name="web", backend="command", controller_options={"start_command": ["true"]},
            checks=(CheckSpec("probe", AlwaysCritical(), interval=0.05, timeout=1.0),),
            rise=1, fall=1, start_grace=0.2, watch_pid=False,
            restart=RestartPolicy(budget=0, exhausted_retry=0.2),
            ladder=(LadderStep(LadderAction.ESCALATE),))},
        escalation=EscalationSpec(channel="exec", vm="vm01", vm_uuid="uuid-of-vm01",
                                  command=(str(prog),), incarnation_file=str(inc),
                                  timeout=5.0),
    )


def test_escalate_rung_sends_exactly_one_request(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    record = tmp_path / "requests.jsonl"

    async def scenario() -> dict[str, Any]:
        sup = Supervisor(spec, control=False)
        task = asyncio.create_task(sup.run())
        try:
            async with asyncio.timeout(10):
                await sup.ready.wait()
            status = await until(
                lambda: (s := sup.status())["escalations"]
                and s["escalations"][0]["state"] == "accepted" and s,
                10.0, "an accepted escalation", sup.status)
            # the service stays exhausted and retries slowly: no second request
            await asyncio.sleep(1.0)
            journal = [(r["kind"], r.get("request")) for r in sup.journal.read(service="web")
                       if str(r["kind"]).startswith("escalation_")]
            return dict(status) | {"final": sup.status(), "journal": journal}
        finally:
            sup.stop()
            async with asyncio.timeout(10):
                await task

    status = asyncio.run(scenario())
    (esc,) = status["escalations"]
    assert esc["service"] == "web" and esc["action"] == "recreate"
    assert esc["incarnation"] == 9 and esc["attempts"] >= 1
    assert "next_retry" in esc
    assert [e["request_id"] for e in status["final"]["escalations"]] == [esc["request_id"]]
    lines = [json.loads(x) for x in record.read_text().splitlines() if x.strip()]
    assert len(lines) == 1
    (req,) = lines
    assert req["request_id"] == esc["request_id"] and req["vm"] == "vm01"
    assert req["incarnation"] == 9 and req["action"] == "recreate"
    assert req["reason"]["service"] == "web"
    assert "probe=CRITICAL: connection refused" in req["reason"]["verdicts"]
    assert req["reason"]["restarts"] == 0
    # the incident timeline records the request going out and being accepted
    assert status["journal"] == [("escalation_sent", esc["request_id"]),
                                 ("escalation_accepted", esc["request_id"])]
    stored = json.loads((tmp_path / "state" / "outbox" /
                         f"{esc['request_id']}.json").read_text())
    assert stored["state"] == "accepted"

    # a restarted daemon resumes the open request (polls it) and sends nothing new
    status2 = asyncio.run(scenario())
    assert [e["request_id"] for e in status2["final"]["escalations"]] == [esc["request_id"]]
    assert len([x for x in record.read_text().splitlines() if x.strip()]) == 1


def test_fence_peer_goes_through_the_outbox_and_waits_for_dom0(tmp_path: Path) -> None:
    """``fence = "dom0"``'s fencer: a fence-peer request through the escalation channel;
    (True, ...) only on dom0's ``done``, (False, ...) on a refusal."""
    record = tmp_path / "fences.jsonl"
    answer = tmp_path / "answer"
    prog = tmp_path / "escalate"
    prog.write_text('#!/bin/sh\nif [ "$GUARDIAN_ESCALATION_MODE" = send ]; then\n'
                    f'  cat >> {record}; echo >> {record}; echo \'{{"state": "accepted"}}\'\n'
                    f'else cat {answer}; fi\n')
    prog.chmod(0o755)
    spec = GuardianSpec(
        state_dir=tmp_path / "state", services={},
        escalation=EscalationSpec(channel="exec", vm="vm02", vm_uuid="uuid-of-vm02",
                                  command=(str(prog),), timeout=5.0, retry_max=0.2))

    async def scenario() -> list[tuple[bool, str]]:
        sup = Supervisor(spec, control=False)
        task = asyncio.create_task(sup.run())
        out = []
        try:
            async with asyncio.timeout(10):
                await sup.ready.wait()
                answer.write_text('{"state": "done", "detail": "vm01 destroyed"}')
                out.append(await sup._fence_peer("web", "vm01", "peer declared dead"))
                answer.write_text('{"state": "refused", "detail": "vm01: maintenance"}')
                out.append(await sup._fence_peer("web", "vm01", "peer declared dead"))
        finally:
            sup.stop()
            async with asyncio.timeout(10):
                await task
        return out

    ok, refused = asyncio.run(scenario())
    assert ok == (True, "dom0: done: vm01 destroyed")
    assert refused == (False, "dom0: refused: vm01: maintenance")
    lines = [json.loads(x) for x in record.read_text().splitlines() if x.strip()]
    assert [(r["action"], r["peer"], r["vm"], r["reason"]["service"]) for r in lines] == [
        ("fence-peer", "vm01", "vm02", "failover:web")] * 2
    assert lines[0]["request_id"] != lines[1]["request_id"]
