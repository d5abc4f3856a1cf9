"""``xenstore``: the request written as JSON to this guest's own writable node
``data/guardian/escalation/<request_id>`` with ``xenstore-write``; dom0's answer
(a JSON object ``{"state", "detail", "decision"}``) read with ``xenstore-read``
from ``answer_path`` (``{request_id}`` filled in), a node dom0 owns and this
guest may only read.  The incarnation is read from ``data/guardian/incarnation``.
The tools come from Debian's ``xenstore-utils``."""

from __future__ import annotations

import json
import os
import shutil
import time

from .._model import EscalationSpec
from ._channel import Channel, ChannelConfigError, run_program
from ._request import Answer, AnswerState, EscalationError, Request

REQUEST_DIR = "data/guardian/escalation"
INCARNATION_KEY = "data/guardian/incarnation"


class NoNode(Exception):
    pass


class XenstoreChannel(Channel):
    name = "xenstore"

    @classmethod
    def from_spec(cls, spec: EscalationSpec) -> XenstoreChannel:
        if "{request_id}" not in spec.answer_path:
            raise ChannelConfigError("answer_path", "must contain {request_id}")
        return cls(spec)

    @staticmethod
    def tools_installed() -> bool:
        return all(shutil.which(t) for t in ("xenstore-write", "xenstore-read"))

    def describe(self) -> str:
        return "xenstore"

    async def _tool(self, argv: list[str], deadline: float) -> str:
        try:
            rc, out, err = await run_program(argv, b"", dict(os.environ), deadline)
        except TimeoutError:
            raise EscalationError(f"{argv[0]}: timed out") from None
        except FileNotFoundError:
            raise EscalationError(f"{argv[0]} not found (install xenstore-utils)") from None
        except OSError as exc:
            raise EscalationError(f"{argv[0]}: cannot run: {exc.strerror or exc}") from None
        if rc != 0:
            text = err.decode(errors="replace").strip()
            low = text.lower()
            # xenstore-read: "couldn't read path P" (a missing node, or no permission)
            if argv[0] == "xenstore-read" and ("read path" in low or "enoent" in low
                                                or "not exist" in low):
                raise NoNode(text)
            raise EscalationError(f"{argv[0]} exited {rc}: {text}")
        return out.decode(errors="replace").strip()

    async def send(self, request: Request, deadline: float) -> Answer:
        body = json.dumps(request.body(time.time()), separators=(",", ":"))
        await self._tool(["xenstore-write", f"{REQUEST_DIR}/{request.request_id}", body],
                         deadline)
        return Answer(AnswerState.SENT, "written to xenstore")

    async def poll(self, request_id: str, deadline: float) -> Answer:
        path = self.spec.answer_path.format(request_id=request_id)
        try:
            text = await self._tool(["xenstore-read", path], deadline)
        except NoNode:
            return Answer(AnswerState.SENT, "no answer yet")
        try:
            data = json.loads(text)
        except ValueError:
            raise EscalationError(f"{path}: not JSON: {text[:80]!r}") from None
        if not isinstance(data, dict):
            raise EscalationError(f"{path}: not a JSON object")
        return Answer.from_json(data, AnswerState.ACCEPTED)

    async def incarnation(self, deadline: float) -> int | None:
        try:
            return int(await self._tool(["xenstore-read", INCARNATION_KEY], deadline))
        except (NoNode, EscalationError, ValueError):
            return await super().incarnation(deadline)
