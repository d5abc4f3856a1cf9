"""The Labs alive in this process (for in-process users such as hostd's ``lab`` driver,
which finds a VM by name)."""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._lab import Lab

_lock = threading.Lock()
_labs: weakref.WeakSet[Lab] = weakref.WeakSet()


def register(lab: Lab) -> None:
    with _lock:
        _labs.add(lab)


def unregister(lab: Lab) -> None:
    with _lock:
        _labs.discard(lab)


def live_labs() -> list[Lab]:
    """The Labs created in this process and not closed yet."""
    with _lock:
        return [lab for lab in _labs if not lab.closed]
