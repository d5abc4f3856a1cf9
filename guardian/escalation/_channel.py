"""The ``Channel`` interface, finding a channel by name (built-ins, the
``guardian.escalations`` entry-point group, ``module:Class``), and where this
VM's identity (UUID, incarnation) comes from.

The incarnation: on Xen, guardian-hostd publishes it in XenStore
(``guardian/incarnation`` under the guest's domain path, owned by dom0 and only
readable by the guest), where a guest can read it but not forge it.  Every channel
reads it from there when XenStore is reachable (``$XENSTORED_PATH``, xenstored's
socket, or ``/dev/xen/xenbus``), and from ``incarnation_file`` otherwise (or when
the node is missing or unreadable)."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import time
from importlib.metadata import entry_points
from pathlib import Path

from checks._base import run_in_thread
from checks._registry import import_object, load_entry_point

from .. import xenstore
from .._model import EscalationSpec
from ._request import Answer, Request

ENTRY_POINT_GROUP = "guardian.escalations"

_BUILTINS = {
    "http": "guardian.escalation._http:HttpChannel",
    "exec": "guardian.escalation._exec:ExecChannel",
    "xenstore": "guardian.escalation._xenstore:XenstoreChannel",
}

HYPERVISOR_UUID = Path("/sys/hypervisor/uuid")
#: dom0's node with this VM's incarnation, relative to the guest's domain path
XENSTORE_INCARNATION = "guardian/incarnation"
#: the longest one read of it may take (a reply takes milliseconds; a hung xenstored
#: must not use up a whole escalation's time)
XENSTORE_READ_TIMEOUT = 2.0
_NIL_UUID = "00000000-0000-0000-0000-000000000000"


class ChannelConfigError(ValueError):
    """A channel cannot be built from the spec; ``key`` names the ``[escalation]`` key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class UnknownChannelError(LookupError):
    """No channel of that name is built in, published, or importable."""


class Channel(abc.ABC):
    """One way to reach dom0.  ``send`` and ``poll`` return an ``Answer`` or raise
    ``EscalationError`` (transient: retried).  Both honour ``deadline``
    (``time.monotonic()``)."""

    name = "channel"

    def __init__(self, spec: EscalationSpec) -> None:
        self.spec = spec

    @classmethod
    def from_spec(cls, spec: EscalationSpec) -> Channel:
        """Build and validate; raise ``ChannelConfigError`` for a bad setting."""
        return cls(spec)

    @abc.abstractmethod
    async def send(self, request: Request, deadline: float) -> Answer: ...

    @abc.abstractmethod
    async def poll(self, request_id: str, deadline: float) -> Answer: ...

    def describe(self) -> str:
        return self.name

    async def incarnation(self, deadline: float) -> int | None:
        """This VM's incarnation as published by dom0: XenStore's
        ``guardian/incarnation`` when XenStore is reachable and has it, else
        ``incarnation_file``; None when unknown.  Never raises; waits at most until
        ``deadline`` (and ``XENSTORE_READ_TIMEOUT``) in a worker thread."""
        if xenstore_reachable():
            found = await xenstore_incarnation(deadline)
            if found is not None:
                return found
        return read_incarnation_file(Path(self.spec.incarnation_file))

    async def vm_uuid(self, deadline: float) -> str:
        return vm_uuid(self.spec)


def xenstore_reachable() -> bool:
    """Whether this guest has a XenStore to ask: ``$XENSTORED_PATH`` set, or
    xenstored's socket or the xenbus device present (where ``guardian.xenstore.Client``
    connects)."""
    if os.environ.get("XENSTORED_PATH"):
        return True
    return os.path.exists(xenstore.DEFAULT_SOCKET) or os.path.exists(xenstore.XENBUS_DEVICE)


async def xenstore_incarnation(deadline: float,
                               timeout: float = XENSTORE_READ_TIMEOUT) -> int | None:
    """The incarnation dom0 published in XenStore, read in a worker thread until
    ``deadline`` (at most ``timeout`` seconds); None when it is missing, not a number,
    or XenStore does not answer in time."""
    left = min(deadline - time.monotonic(), timeout)
    if left <= 0:
        return None
    end = time.monotonic() + left

    def read() -> str:
        with xenstore.Client(timeout=left, deadline=end) as client:
            return client.read_text(XENSTORE_INCARNATION)

    try:
        async with asyncio.timeout(left + 0.5):
            text = await run_in_thread(read)
        return int(text.strip())
    except Exception:  # noqa: BLE001 - no answer, no node, no number: unknown
        return None


def read_incarnation_file(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def vm_uuid(spec: EscalationSpec, hypervisor: Path = HYPERVISOR_UUID) -> str:
    """``/sys/hypervisor/uuid`` inside a Xen guest, else the configured ``vm_uuid``."""
    with contextlib.suppress(OSError):
        text = hypervisor.read_text().strip()
        if text and text != _NIL_UUID:
            return text
    return spec.vm_uuid


def available_channels() -> dict[str, str]:
    found = dict(_BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def _check(obj: object, what: str) -> type[Channel]:
    if not (isinstance(obj, type) and issubclass(obj, Channel)):
        raise UnknownChannelError(f"{what} is not a guardian.escalation.Channel subclass")
    return obj


def load_channel_class(name: str) -> type[Channel]:
    """Resolve ``name`` (``http``, an entry-point name, or ``pkg.mod:Class``)."""
    if ":" in name:
        return _check(import_object(name, UnknownChannelError), repr(name))
    if name in _BUILTINS:
        return _check(import_object(_BUILTINS[name], UnknownChannelError), repr(name))
    obj = load_entry_point(ENTRY_POINT_GROUP, name, UnknownChannelError,
                           "escalation channel")
    if obj is not None:
        return _check(obj, f"entry point {name!r}")
    known = ", ".join(sorted(available_channels()))
    raise UnknownChannelError(
        f"unknown escalation channel {name!r} (known: {known}; or module:Class)")


def build_channel(spec: EscalationSpec) -> Channel:
    return load_channel_class(spec.channel).from_spec(spec)


async def run_program(argv: list[str], stdin: bytes, env: dict[str, str],
                      deadline: float) -> tuple[int, bytes, bytes]:
    """Run ``argv`` with ``stdin``; (exit status, stdout, stderr).  Kills its process
    group and raises TimeoutError at ``deadline``; OSError if it cannot start."""
    import time

    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            out, err = await proc.communicate(stdin)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err
