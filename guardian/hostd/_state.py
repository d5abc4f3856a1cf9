"""Persistent state (incarnations, action history, requests) and the decision journal.

``STATE_DIR/state.json`` is rewritten atomically (temporary file, fsync, rename,
fsync of the directory) after every change::

    {"version": 1,
     "vms": {"web1": {"incarnation": 4, "actions": [1714550400.1, ...]}},
     "requests": {"<request id>": {"sender": "web1", "state": "done", ...}}}

``JOURNAL_DIR/journal.jsonl`` gets one JSON line per decision, written with one
``os.write`` on an O_APPEND descriptor and fsynced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MAX_REQUESTS = 1000
DAY = 86400.0


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

    def add_action(self, name: str, wall: float) -> None:
        vm = self.vm(name)
        vm["actions"] = [t for t in vm["actions"] if t > wall - DAY] + [wall]

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if len(self.requests) > MAX_REQUESTS:
            finished = [rid for rid, r in self.requests.items()
                        if r.get("state") not in ("accepted", "in-progress")]
            for rid in finished[: len(self.requests) - MAX_REQUESTS]:
                del self.requests[rid]
        data = {"version": 1, "vms": self.vms, "requests": self.requests}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class Journal:
    def __init__(self, journal_dir: Path | str) -> None:
        self.dir = Path(journal_dir)
        self.path = self.dir / "journal.jsonl"
        self._fd: int | None = None

    def append(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                               0o640)
        os.write(self._fd, json.dumps(record, sort_keys=True).encode() + b"\n")
        os.fsync(self._fd)

    def close(self) -> None:
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
