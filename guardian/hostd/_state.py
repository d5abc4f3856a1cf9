"""Persistent state (incarnations, action history, requests) and the decision journal.

``STATE_DIR/state.json`` is rewritten atomically (temporary file, fsync, rename,
fsync of the directory) after every change::

    {"version": 1,
     "vms": {"web1": {"incarnation": 4, "actions": [1714550400.1, ...],
                      "last_request": 1714550999.0}},
     "requests": {"<request id>": {"sender": "web1", "state": "done", ...}}}

``actions`` are the wall times of accepted actions on the VM still in the policy
window; ``last_request`` the wall time of the last escalation about it that was
accepted or rate-limited (the VM was not healthy then).

``STATE_DIR/maintenance/<vm>`` exists while the VM is in maintenance mode (JSON
``{"vm", "reason", "since"}``); written by ``guardian-hostd maintenance`` and read
by the running daemon on every request, so no restart or signal is needed.

``JOURNAL_DIR/journal.jsonl`` gets one JSON line per decision, written with one
``os.write`` on an O_APPEND descriptor and fsynced.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from guardian._durable import atomic_write, fsync_dir

MAX_REQUESTS = 1000
DAY = 86400.0
MAINTENANCE_DIR = "maintenance"
_VM_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class StateStore:
    def __init__(self, state_dir: Path | str) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / "state.json"
        self.vms: dict[str, dict[str, Any]] = {}
        self.requests: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            with self.path.open("r", encoding="utf-8") as fh:
                data = json.load(fh)
            self.vms = {str(k): dict(v) for k, v in data.get("vms", {}).items()}
            self.requests = {str(k): dict(v) for k, v in data.get("requests", {}).items()}

    def vm(self, name: str) -> dict[str, Any]:
        return self.vms.setdefault(name, {"incarnation": 0, "actions": []})

    def incarnation(self, name: str) -> int:
        return int(self.vm(name)["incarnation"])

    def actions(self, name: str) -> list[float]:
        return [float(t) for t in self.vm(name)["actions"]]

    def add_action(self, name: str, wall: float, window: float = DAY) -> None:
        vm = self.vm(name)
        vm["actions"] = [t for t in vm["actions"] if t > wall - window] + [wall]

    def set_actions(self, name: str, walls: list[float]) -> None:
        self.vm(name)["actions"] = list(walls)

    def last_request(self, name: str) -> float | None:
        t = self.vm(name).get("last_request")
        return float(t) if t is not None else None

    def note_request(self, name: str, wall: float) -> None:
        """An escalation about ``name`` was accepted or rate-limited at ``wall``."""
        self.vm(name)["last_request"] = wall

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if len(self.requests) > MAX_REQUESTS:
            finished = [rid for rid, r in self.requests.items()
                        if r.get("state") not in ("accepted", "in-progress")]
            for rid in finished[: len(self.requests) - MAX_REQUESTS]:
                del self.requests[rid]
        data = {"version": 1, "vms": self.vms, "requests": self.requests}
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n",
                      0o600)


def check_vm_name(name: str) -> str:
    """A VM name usable as a file name (maintenance markers); ValueError otherwise."""
    if not _VM_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a usable VM name")
    return name


def read_maintenance(state_dir: Path | str) -> dict[str, dict[str, Any]]:
    """VM name -> ``{"reason", "since"}`` for every VM in maintenance mode.

    An unreadable or malformed marker still means maintenance (the file is there)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        entries = list(os.scandir(Path(state_dir) / MAINTENANCE_DIR))
    except (FileNotFoundError, NotADirectoryError):
        return out
    for entry in entries:
        if entry.name.startswith(".") or not _VM_NAME_RE.match(entry.name):
            continue
        info: dict[str, Any] = {"reason": "", "since": None}
        try:
            with open(entry.path, encoding="utf-8") as fh:
                data = json.loads(fh.read(65536) or "{}")
            if isinstance(data, dict):
                info["reason"] = str(data.get("reason", ""))
                since = data.get("since")
                info["since"] = (float(since) if isinstance(since, (int, float))
                                 and not isinstance(since, bool) else None)
        except (OSError, ValueError) as exc:
            info["reason"] = f"(marker unreadable: {exc})"
        out[entry.name] = info
    return out


def set_maintenance(state_dir: Path | str, vm: str, on: bool, *, reason: str = "",
                    now: float) -> bool:
    """Put ``vm`` in (``on``) or out of maintenance; returns whether anything changed."""
    check_vm_name(vm)
    d = Path(state_dir) / MAINTENANCE_DIR
    path = d / vm
    if not on:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(d)
        return True
    d.mkdir(parents=True, exist_ok=True)
    changed = not path.exists()
    record = {"vm": vm, "reason": reason, "since": now}
    atomic_write(path, json.dumps(record, sort_keys=True).encode() + b"\n")
    return changed


class Journal:
    """Thread-safe: the engine's worker threads and the alert worker append too."""

    def __init__(self, journal_dir: Path | str) -> None:
        self.dir = Path(journal_dir)
        self.path = self.dir / "journal.jsonl"
        self._fd: int | None = None
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, default=str).encode() + b"\n"
        with self._lock:
            if self._fd is None:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path,
                                   os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
            os.write(self._fd, line)
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read_journal(path: Path | str, tail: int | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
    except FileNotFoundError:
        return []
    return out[-tail:] if tail else out
