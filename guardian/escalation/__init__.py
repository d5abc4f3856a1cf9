"""Escalation to dom0: ask the host to recreate this VM (or fence a peer).

A ``Request`` goes into the durable ``Outbox``; an ``Escalator`` sends it through a
``Channel`` (``http``, ``exec``, ``xenstore``, a ``guardian.escalations`` entry
point, or ``module:Class``) with backoff until dom0 gives a final answer.
"""

from __future__ import annotations

from ._channel import (
    ENTRY_POINT_GROUP,
    Channel,
    ChannelConfigError,
    UnknownChannelError,
    available_channels,
    build_channel,
    load_channel_class,
    read_incarnation_file,
    vm_uuid,
)
from ._exec import ExecChannel
from ._http import HttpChannel, signature
from ._outbox import Entry, Escalator, Outbox, backoff
from ._request import ACTIONS, Answer, AnswerState, EscalationError, Reason, Request
from ._xenstore import XenstoreChannel

__all__ = [
    "ACTIONS",
    "ENTRY_POINT_GROUP",
    "Answer",
    "AnswerState",
    "Channel",
    "ChannelConfigError",
    "Entry",
    "EscalationError",
    "Escalator",
    "ExecChannel",
    "HttpChannel",
    "Outbox",
    "Reason",
    "Request",
    "UnknownChannelError",
    "XenstoreChannel",
    "available_channels",
    "backoff",
    "build_channel",
    "load_channel_class",
    "read_incarnation_file",
    "signature",
    "vm_uuid",
]
