"""``[escalation]`` from TOML into an ``EscalationSpec``; errors name file and key."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from checks import ConfigError, Options

from .._model import EscalationSpec
from ._channel import ChannelConfigError, UnknownChannelError, load_channel_class

KEYS = ("channel", "vm", "vm_uuid", "url", "key_file", "command", "answer_path",
        "incarnation_file", "xenstore_client", "timeout", "retry_max")


def _command(value: object) -> tuple[str, ...]:
    import shlex

    if isinstance(value, str):
        parts = shlex.split(value)
        if not parts:
            raise ValueError("is empty")
        return tuple(parts)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(f"{value!r} is not a command (a string or a list of strings)")


def parse_escalation(tbl: Mapping[str, Any], source: str) -> EscalationSpec:
    """Build and validate (the channel is loaded and checked too)."""
    opts = Options(tbl, "escalation", source)
    channel = opts.str("channel")
    try:
        cls = load_channel_class(channel)
    except UnknownChannelError as exc:
        raise opts.error("channel", str(exc)) from None
    spec = EscalationSpec(
        channel=channel,
        vm=opts.str("vm", socket.gethostname()),
        vm_uuid=opts.str("vm_uuid", ""),
        url=opts.str("url", ""),
        key_file=opts.str("key_file", ""),
        command=opts.convert("command", _command, ()),
        answer_path=opts.str("answer_path", EscalationSpec.answer_path),
        incarnation_file=opts.str("incarnation_file", EscalationSpec.incarnation_file),
        xenstore_client=opts.choice("xenstore_client", ("wire", "tools"), "wire"),
        timeout=opts.duration("timeout", 10.0),
        retry_max=opts.duration("retry_max", 300.0),
        source=source,
    )
    if spec.timeout <= 0:
        raise opts.error("timeout", "must be positive")
    if spec.retry_max < 1.0:
        raise opts.error("retry_max", "must be at least 1 s")
    opts.finish()
    try:
        cls.from_spec(spec)
    except ChannelConfigError as exc:
        raise ConfigError(source, f"escalation.{exc.key}", exc.message) from None
    return spec
