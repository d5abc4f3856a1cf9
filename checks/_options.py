"""Named converters for configuration values and the error that names the key.

Every value in a check's table (and in guardian's config) goes through one of
these converters, so an error always names the file, the key path and what was
wrong: ``guardian.toml: services.web.checks[0].timeout: "2 parsecs" is not a
duration``.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING: Any = object()


class ConfigError(ValueError):
    """A configuration value is wrong.  Carries the file and the key path."""

    def __init__(self, source: str, path: str, message: str) -> None:
        self.source = source
        self.path = path
        self.message = message
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {message}")


class ConfigErrors(ValueError):
    """Several configuration errors at once (validation reports them all)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in errors))


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """``"250ms"``, ``"1.5s"``, ``"5m"``, ``2`` (seconds) -> seconds as float."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{value!r} is not a duration (negative)")
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration (try \"500ms\", \"2s\", \"5m\")")


def format_duration(seconds: float) -> str:
    """A duration for people: "250ms", "1.5s", "4m51s", "2h" (rounded)."""
    if seconds < 1.0:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{round(seconds, 1):g}s"
    minutes, secs = divmod(round(seconds), 60)
    if secs == 0 and minutes % 60 == 0:
        return f"{minutes // 60}h"
    return f"{minutes}m" if secs == 0 else f"{minutes}m{secs}s"


class Options:
    """A typed view of one TOML table that records which keys were used.

    Call the getters for every key the table may hold, then ``finish()``:
    any key that nobody asked for is an error (a typo must not pass).
    """

    def __init__(self, data: Mapping[str, Any], path: str = "", source: str = "<config>") -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(source, path, f"expected a table, got {type(data).__name__}")
        self._data = dict(data)
        self.path = path
        self.source = source
        self._used: set[str] = set()

    # -- plumbing ---------------------------------------------------------
    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.source, self.key_path(key), message)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def keys(self) -> list[str]:
        return list(self._data)

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self._used.add(key)
        if key in self._data:
            return self._data[key]
        if default is _MISSING:
            raise self.error(key, "is required")
        return default

    def convert(self, key: str, converter: Callable[[Any], T], default: Any = _MISSING) -> T:
        """Fetch ``key`` and pass it through ``converter``; ValueError/TypeError name the key."""
        self._used.add(key)
        if key not in self._data:
            if default is _MISSING:
                raise self.error(key, "is required")
            return default  # type: ignore[no-any-return]
        try:
            return converter(self._data[key])
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise self.error(key, str(exc)) from None

    def sub(self, key: str, default: Mapping[str, Any] | None = None) -> Options:
        """A nested table as its own Options (its own unknown-key check)."""
        self._used.add(key)
        value = self._data.get(key, default if default is not None else _MISSING)
        if value is _MISSING:
            raise self.error(key, "is required")
        return Options(value, self.key_path(key), self.source)

    def finish(self) -> None:
        """Raise for the first key that no getter consumed."""
        for key in self._data:
            if key not in self._used:
                raise self.error(key, "unknown key")

    # -- typed getters ----------------------------------------------------
    # (annotations say builtins.str etc.: inside the class the bare names are these methods)
    def str(self, key: builtins.str, default: Any = _MISSING) -> Any:
        return self.convert(key, to_str, default)

    def bool(self, key: builtins.str, default: Any = _MISSING) -> Any:
        return self.convert(key, to_bool, default)

    def int(self, key: builtins.str, default: Any = _MISSING, *,
            minimum: builtins.int | None = None, maximum: builtins.int | None = None) -> Any:
        return self.convert(key, lambda v: to_int(v, minimum, maximum), default)

    def float(self, key: builtins.str, default: Any = _MISSING) -> Any:
        return self.convert(key, to_float, default)

    def duration(self, key: builtins.str, default: Any = _MISSING) -> Any:
        return self.convert(key, parse_duration, default)

    def str_list(self, key: builtins.str, default: Any = _MISSING) -> Any:
        return self.convert(key, to_str_list, default)

    def int_set(self, key: builtins.str, default: Any = _MISSING) -> Any:
        return self.convert(key, to_int_set, default)

    def regex(self, key: builtins.str, default: Any = _MISSING) -> Any:
        return self.convert(key, to_regex, default)

    def choice(self, key: builtins.str, choices: tuple[builtins.str, ...],
               default: Any = _MISSING) -> Any:
        def conv(value: object) -> builtins.str:
            text = to_str(value)
            if text not in choices:
                raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
            return text

        return self.convert(key, conv, default)

    def str_map(self, key: builtins.str, default: Any = _MISSING) -> Any:
        return self.convert(key, to_str_map, default)


def to_str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
        return False
    raise TypeError(f"{value!r} is not a boolean")


def to_int(value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is not an integer")
    if isinstance(value, str):
        try:
            value = int(value, 10)
        except ValueError:
            raise ValueError(f"{value!r} is not an integer") from None
    if not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    if minimum is not None and value < minimum:
        raise ValueError(f"{value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{value} is above the maximum {maximum}")
    return value


def to_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"{value!r} is not a number")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None


def to_str_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{value!r} is not a list of strings")
    return list(value)


def to_int_set(value: object) -> frozenset[int]:
    """``200``, ``[200, 301]``, ``"200,301"`` or ``"200-299"`` -> a set of ints."""
    items: list[object]
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, list):
        items = list(value)
    else:
        raise TypeError(f"{value!r} is not an integer or list of integers")
    out: set[int] = set()
    for item in items:
        if isinstance(item, str):
            for part in item.split(","):
                part = part.strip()
                if "-" in part:
                    lo, _, hi = part.partition("-")
                    out.update(range(to_int(lo.strip()), to_int(hi.strip()) + 1))
                elif part:
                    out.add(to_int(part))
        else:
            out.add(to_int(item))
    if not out:
        raise ValueError(f"{value!r} is an empty set")
    return frozenset(out)


def to_regex(value: object) -> re.Pattern[str]:
    text = to_str(value)
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError(f"{text!r} is not a regular expression ({exc})") from None


def to_str_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError(f"{value!r} is not a table of strings")
    return dict(value)
