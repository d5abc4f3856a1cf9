"""``xenstore``: the request written as JSON to this guest's own writable node
``data/guardian/escalation/<request_id>``; dom0's answer (a JSON object ``{"state",
"detail", "decision", "incarnation"}``) read from ``answer_path``
(``guardian/answer/{request_id}``) and this VM's incarnation from
``guardian/incarnation``.  Relative paths are under ``/local/domain/<domid>``;
guardian-hostd creates ``guardian/`` owned by dom0 and only readable by the guest
(permissions ``n0 r<domid>``), so a guest can forge neither.  (``data/`` is the
guest's own: a number it could write there would prove nothing.)

``xenstore_client = "wire"`` (default) speaks XenStore's protocol itself
(``guardian.xenstore``: ``$XENSTORED_PATH``, xenstored's socket, or
``/dev/xen/xenbus``); ``"tools"`` runs ``xenstore-write``/``xenstore-read`` from
Debian's ``xenstore-utils``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from checks._base import run_in_thread

from .._model import EscalationSpec
from ..xenstore import Client, XenstoreError
from ._channel import (
    XENSTORE_INCARNATION,
    Channel,
    ChannelConfigError,
    read_incarnation_file,
    run_program,
)
from ._request import Answer, AnswerState, EscalationError, Request

REQUEST_DIR = "data/guardian/escalation"
INCARNATION_KEY = XENSTORE_INCARNATION
ANSWER_DIR = "guardian/answer"
CLIENTS = ("wire", "tools")
T = TypeVar("T")


class NoNode(Exception):
    pass


class XenstoreChannel(Channel):
    name = "xenstore"

    @classmethod
    def from_spec(cls, spec: EscalationSpec) -> XenstoreChannel:
        if "{request_id}" not in spec.answer_path:
            raise ChannelConfigError("answer_path", "must contain {request_id}")
        if spec.xenstore_client not in CLIENTS:
            raise ChannelConfigError("xenstore_client", "must be \"wire\" or \"tools\"")
        return cls(spec)

    @staticmethod
    def tools_installed() -> bool:
        return all(shutil.which(t) for t in ("xenstore-write", "xenstore-read"))

    def describe(self) -> str:
        return "xenstore" if self.spec.xenstore_client == "wire" else "xenstore (tools)"

    # ------------------------------------------------------------------ two clients
    async def _read(self, path: str, deadline: float) -> str:
        """The node's value; NoNode when it does not exist (yet)."""
        if self.spec.xenstore_client == "tools":
            return await self._tool(["xenstore-read", path], deadline)
        return await self._wire(lambda c: c.read_text(path), deadline)

    async def _write(self, path: str, value: str, deadline: float) -> None:
        if self.spec.xenstore_client == "tools":
            await self._tool(["xenstore-write", path, value], deadline)
            return
        await self._wire(lambda c: c.write(path, value), deadline)

    @staticmethod
    async def _wire(op: Callable[[Client], T], deadline: float) -> T:
        """``op(client)`` in a worker thread, connected for this one call."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise EscalationError("xenstore: no time left")

        def call() -> T:
            with Client(timeout=left, deadline=deadline) as client:
                return op(client)

        try:
            async with asyncio.timeout(left + 0.5):
                return await run_in_thread(call)
        except TimeoutError:
            raise EscalationError("xenstore: timed out") from None
        except XenstoreError as exc:
            if exc.name == "ENOENT":
                raise NoNode(str(exc)) from None
            raise EscalationError(f"xenstore: {exc}") from None

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

    # ------------------------------------------------------------------ Channel
    async def send(self, request: Request, deadline: float) -> Answer:
        body = json.dumps(request.body(time.time()), separators=(",", ":"))
        await self._write(f"{REQUEST_DIR}/{request.request_id}", body, deadline)
        return Answer(AnswerState.SENT, "written to xenstore")

    async def poll(self, request_id: str, deadline: float) -> Answer:
        path = self.spec.answer_path.format(request_id=request_id)
        try:
            text = await self._read(path, deadline)
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
            return int(await self._read(INCARNATION_KEY, deadline))
        except (NoNode, EscalationError, ValueError):
            pass
        if self.spec.xenstore_client == "wire":   # asked just now: only the file is left
            return read_incarnation_file(Path(self.spec.incarnation_file))
        return await super().incarnation(deadline)
