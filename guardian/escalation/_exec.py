"""``exec``: a local program.  The request as JSON on stdin, the essentials in
``GUARDIAN_ESCALATION_*`` variables (``..._MODE`` is ``send`` or ``poll``).
Exit 0 means accepted; stdout may be a JSON object ``{"state", "detail",
"decision", "retry_after"}`` to say more.  Any other exit status is a failed
attempt (retried)."""

from __future__ import annotations

import json
import os
import time

from .._model import EscalationSpec
from ._channel import Channel, ChannelConfigError, run_program
from ._request import Answer, AnswerState, EscalationError, Request


class ExecChannel(Channel):
    name = "exec"

    @classmethod
    def from_spec(cls, spec: EscalationSpec) -> ExecChannel:
        if not spec.command:
            raise ChannelConfigError("command", "is required for channel \"exec\"")
        return cls(spec)

    def describe(self) -> str:
        return f"exec {self.spec.command[0]}"

    async def send(self, request: Request, deadline: float) -> Answer:
        body = json.dumps(request.body(time.time())).encode()
        env = {
            "GUARDIAN_ESCALATION_MODE": "send",
            "GUARDIAN_ESCALATION_REQUEST_ID": request.request_id,
            "GUARDIAN_ESCALATION_VM": request.vm,
            "GUARDIAN_ESCALATION_VM_UUID": request.vm_uuid,
            "GUARDIAN_ESCALATION_INCARNATION": str(request.incarnation),
            "GUARDIAN_ESCALATION_ACTION": request.action,
            "GUARDIAN_ESCALATION_PEER": request.peer or "",
            "GUARDIAN_ESCALATION_SERVICE": request.reason.service,
            "GUARDIAN_ESCALATION_REASON": request.reason.detail,
        }
        return await self._run(body, env, deadline)

    async def poll(self, request_id: str, deadline: float) -> Answer:
        env = {"GUARDIAN_ESCALATION_MODE": "poll",
               "GUARDIAN_ESCALATION_REQUEST_ID": request_id}
        return await self._run(b"", env, deadline)

    async def _run(self, stdin: bytes, env: dict[str, str], deadline: float) -> Answer:
        argv = list(self.spec.command)
        full = dict(os.environ)
        full.update(env)
        try:
            rc, out, err = await run_program(argv, stdin, full, deadline)
        except TimeoutError:
            raise EscalationError(f"{argv[0]}: timed out") from None
        except OSError as exc:
            raise EscalationError(f"{argv[0]}: cannot run: {exc.strerror or exc}") from None
        if rc != 0:
            last = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise EscalationError(f"{argv[0]} exited {rc}: {last[0]}")
        text = out.decode(errors="replace").strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except ValueError:
                data = None
            if isinstance(data, dict):
                return Answer.from_json(data, AnswerState.ACCEPTED)
        return Answer(AnswerState.ACCEPTED, text.splitlines()[-1] if text else "")
