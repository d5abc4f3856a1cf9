"""guardian's probes: real protocol checks that return verdicts.

Public API::

    from checks import Status, CheckResult, Check, BlockingCheck, Options
    from checks import load_check_class, build_check, run_check

    check = build_check("http", {"url": "http://127.0.0.1/"})
    result = await run_check(check, timeout=1.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._base import BlockingCheck, Check, ProbeError, remaining, run_check, run_in_thread
from ._options import ConfigError, ConfigErrors, Options, format_duration, parse_duration
from ._registry import (
    ENTRY_POINT_GROUP,
    UnknownCheckError,
    available_checks,
    load_check_class,
)
from ._result import CheckResult, Status, worst


def build_check(kind: str, options: Mapping[str, Any], path: str = "",
                source: str = "<options>") -> Check:
    """Resolve ``kind`` and build a check from a table of options.

    Raises ``ConfigError`` naming ``source`` and the key path on any bad option.
    """
    try:
        cls = load_check_class(kind)
    except UnknownCheckError as exc:
        raise ConfigError(source, f"{path}.type" if path else "type", str(exc)) from None
    opts = Options(options, path, source)
    check = cls.from_options(opts)
    opts.finish()
    return check


__all__ = [
    "ENTRY_POINT_GROUP",
    "BlockingCheck",
    "Check",
    "CheckResult",
    "ConfigError",
    "ConfigErrors",
    "Options",
    "ProbeError",
    "Status",
    "UnknownCheckError",
    "available_checks",
    "build_check",
    "format_duration",
    "load_check_class",
    "parse_duration",
    "remaining",
    "run_check",
    "run_in_thread",
    "worst",
]
