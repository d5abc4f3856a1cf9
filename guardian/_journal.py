"""The incident journal: a bounded, append-only log of JSON lines on disk.

Files, in one directory (``STATE_DIR/journal`` in the daemon)::

    journal.jsonl      the file being written
    journal.1.jsonl    the one before it
    ...
    journal.K.jsonl    the oldest kept (K = ``keep``)

When a record would take the current file past ``max_bytes``, the files shift up one
number (the oldest falls off) and a fresh ``journal.jsonl`` starts, so the journal
never holds much more than ``(keep + 1) * max_bytes``.  The first record of every file
after a rotation is a ``journal`` record carrying ``last_incident``: incident ids go on
growing across restarts even after every incident record has rotated away.

One record is one line::

    {"t_ms": 12345678.901, "wall": 1714550400.123, "boot": "5f0c...", "service": "apache2",
     "incident": 7, "kind": "restart_issued", "reason": "...", ...extra fields}

``t_ms`` is ``time.monotonic()`` in milliseconds: exact differences within one boot,
which is what phase durations are computed from.  The monotonic clock restarts at
boot, so every record also has ``wall`` (unix time, for ``--since`` and for ordering
across reboots) and ``boot`` (``/proc/sys/kernel/random/boot_id``): two records compare
by ``t_ms`` only when their ``boot`` is the same.

Writing, and why it is synchronous
----------------------------------
``append`` is one ``os.write`` of a few hundred bytes on an ``O_APPEND`` descriptor:
no Python buffer, so every record is in the kernel as soon as ``append`` returns and a
crashed or SIGKILLed daemon loses nothing.  That write lands in the page cache and
costs microseconds; handing it to a thread would cost more than it saves and would
make the order of records a matter of scheduling.  What can block for long is
``fsync``, so that never runs on the event loop: ``sync()`` duplicates the descriptor
and fsyncs the duplicate on the journal's own worker thread (one thread, created on
first use).  When it happens:

* ``sync()`` — the trackers call it when an incident closes and when an escalation is
  sent (dom0 may destroy the VM next);
* at the latest ``sync_interval`` seconds (5 s) after a record was written, by a timer
  on the running loop;
* at a rotation (the old file and the directory), and in ``close()``.

Outside a running loop (the CLI, tests) ``sync()`` runs inline.

Errors
------
An I/O error never leaves ``append``: it is counted (``write_errors``), logged once
(and once more when writing works again), and the next ``append`` reopens the file.
A crash mid-write can leave a torn last line; the next open starts a new line after
it, and ``read`` skips such lines and counts them (``ReadStats.torn``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("guardian.journal")

#: the current file is ``NAME.jsonl``, older ones ``NAME.N.jsonl``
DEFAULT_NAME = "journal"
DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_KEEP = 4
DEFAULT_SYNC_INTERVAL = 5.0
#: a longer line is cut down (its reason shortened, its extra fields dropped)
MAX_RECORD = 16 * 1024
MAX_REASON = 2000

BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"

Record = dict[str, Any]


def boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``), or ``""`` if unreadable."""
    try:
        with open(BOOT_ID_FILE, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


@dataclass
class ReadStats:
    """What one read went through."""

    files: int = 0
    records: int = 0
    torn: int = 0        # lines that are not a JSON object (a crash mid-write): skipped


def journal_files(directory: str | Path, name: str = DEFAULT_NAME) -> list[Path]:
    """The journal's files, oldest first (``NAME.K.jsonl`` ... ``NAME.1.jsonl``,
    ``NAME.jsonl``); only those that exist."""
    d = Path(directory)
    pattern = re.compile(rf"^{re.escape(name)}\.(\d+)\.jsonl$")
    numbered: list[tuple[int, Path]] = []
    try:
        entries = os.listdir(d)
    except OSError:
        return []
    for entry in entries:
        m = pattern.match(entry)
        if m:
            numbered.append((int(m.group(1)), d / entry))
    out = [p for _, p in sorted(numbered, reverse=True)]
    current = d / f"{name}.jsonl"
    if current.exists():
        out.append(current)
    return out


def _parse_lines(data: bytes, stats: ReadStats) -> Iterator[Record]:
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            stats.torn += 1
            continue
        if not isinstance(rec, dict):
            stats.torn += 1
            continue
        stats.records += 1
        yield rec


def matches(rec: Record, since: float | None = None, service: str | None = None) -> bool:
    """The ``read`` filter: ``wall >= since``; ``service`` names a service or a group."""
    if since is not None:
        wall = rec.get("wall")
        if not isinstance(wall, (int, float)) or wall < since:
            return False
    if service is not None and rec.get("service") != service and rec.get("group") != service:
        return False
    return True


def read_journal(directory: str | Path, since: float | None = None,
                 service: str | None = None, *, name: str = DEFAULT_NAME,
                 stats: ReadStats | None = None) -> Iterator[Record]:
    """Records of the journal in ``directory``, oldest first, across rotated files.

    Works without a ``Journal`` (``guardian events`` reads while the daemon writes):
    every file is opened before the first is read, so a rotation meanwhile neither
    hides nor repeats a file.  Torn lines are skipped and counted in ``stats``.
    """
    stats = stats if stats is not None else ReadStats()
    handles = []
    for path in journal_files(directory, name):
        try:
            handles.append(open(path, "rb"))  # noqa: SIM115 - closed below
        except OSError:
            continue
    try:
        for f in handles:
            stats.files += 1
            try:
                data = f.read()
            except OSError:
                continue
            for rec in _parse_lines(data, stats):
                if matches(rec, since, service):
                    yield rec
    finally:
        for f in handles:
            f.close()


def _fsync_all(fds: list[int]) -> OSError | None:
    """On the worker thread: fsync and close each descriptor; the first error back."""
    err: OSError | None = None
    for fd in fds:
        try:
            os.fsync(fd)
        except OSError as exc:
            err = err or exc
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
    return err


class Journal:
    """The writer: ``append`` records, ``read`` them back, ``new_incident`` ids.

    Use from one thread (the event loop's).  ``append`` never raises on I/O errors.
    """

    def __init__(self, directory: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 keep: int = DEFAULT_KEEP, sync_interval: float = DEFAULT_SYNC_INTERVAL,
                 name: str = DEFAULT_NAME, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 boot: str | None = None) -> None:
        if max_bytes < 1024:
            raise ValueError(f"journal max_bytes {max_bytes} is below 1024")
        if keep < 0:
            raise ValueError(f"journal keep {keep} is negative")
        self.directory = Path(directory)
        self.name = name
        self.max_bytes = max_bytes
        self.keep = keep
        self.sync_interval = sync_interval
        self.clock = clock
        self.wall_clock = wall_clock
        self.boot = boot_id() if boot is None else boot
        self.path = self.directory / f"{name}.jsonl"
        self.records_written = 0
        self.rotations = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self.torn_seen = 0          # torn lines met by this object's reads and scan
        self._fd: int | None = None
        self._size = 0
        self._dirty = False
        self._error_logged = False
        self._timer: asyncio.TimerHandle | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: set[asyncio.Future[OSError | None]] = set()
        self._closed = False
        self.last_incident = self._scan_last_incident()

    # ------------------------------------------------------------ writing
    def append(self, kind: str, reason: str = "", *, now: float | None = None,
               service: str | None = None, group: str | None = None,
               incident: int | None = None, **extra: Any) -> Record:
        """Write one record and return it (also when it could not be written).

        ``now`` is a ``time.monotonic()`` value (default: the journal's clock); the
        wall time and boot id are added here.
        """
        t = self.clock() if now is None else now
        rec: Record = {"t_ms": round(t * 1000.0, 3), "wall": round(self.wall_clock(), 3),
                       "boot": self.boot}
        if service is not None:
            rec["service"] = service
        if group is not None:
            rec["group"] = group
        if incident is not None:
            rec["incident"] = incident
            if incident > self.last_incident:
                self.last_incident = incident
        rec["kind"] = kind
        rec["reason"] = reason if len(reason) <= MAX_REASON else reason[:MAX_REASON] + "..."
        for key, value in extra.items():
            if key not in rec:
                rec[key] = value
        self._write(rec)
        return rec

    def new_incident(self) -> int:
        """The next incident id (one more than any id this journal has seen)."""
        self.last_incident += 1
        return self.last_incident

    def _encode(self, rec: Record) -> bytes:
        data = (json.dumps(rec, separators=(",", ":"), ensure_ascii=False, default=str)
                + "\n").encode()
        if len(data) > MAX_RECORD:
            keep: Record = {k: rec[k] for k in ("t_ms", "wall", "boot", "service", "group",
                                        "incident", "kind") if k in rec}
            keep["reason"] = str(rec.get("reason", ""))[:500] + "..."
            keep["truncated"] = True
            data = (json.dumps(keep, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        return data

    def _write(self, rec: Record) -> None:
        if self._closed:
            return
        data = self._encode(rec)
        try:
            if self._fd is None:
                self._open()
            if self._size > 0 and self._size + len(data) > self.max_bytes:
                self._rotate()
            assert self._fd is not None
            self._write_all(data)
        except OSError as exc:
            self._error("write", exc)
            self._close_fd()
            return
        self.records_written += 1
        if self._error_logged:
            self._error_logged = False
            log.warning("journal %s: writing again (%d error(s) so far, last: %s)",
                        self.directory, self.write_errors, self.last_error)
        self._dirty = True
        self._arm_timer()

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            self._size += n
            view = view[n:]

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            size = os.fstat(fd).st_size
            if size > 0:
                # a torn last line (a crash mid-write): start ours on a fresh line
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        size += os.write(fd, b"\n")
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._size = size

    def _rotate(self) -> None:
        old = self._fd
        self._fd = None
        if old is not None:
            self._sync_fds([old])
        d, n = self.directory, self.name
        if self.keep == 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        else:
            for i in range(self.keep - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(d / f"{n}.{i}.jsonl", d / f"{n}.{i + 1}.jsonl")
            os.replace(self.path, d / f"{n}.1.jsonl")
        self.rotations += 1
        self._open()
        header: Record = {"t_ms": round(self.clock() * 1000.0, 3),
                          "wall": round(self.wall_clock(), 3), "boot": self.boot,
                          "kind": "journal", "reason": "rotated",
                          "last_incident": self.last_incident}
        self._write_all(self._encode(header))
        with contextlib.suppress(OSError):
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._sync_fds([dfd])

    def _error(self, what: str, exc: OSError) -> None:
        self.write_errors += 1
        self.last_error = f"{what}: {exc}"
        if not self._error_logged:
            self._error_logged = True
            log.error("journal %s: %s failed: %s (incident records are lost until it "
                      "works again; further errors are counted, not logged)",
                      self.directory, what, exc)

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    # ------------------------------------------------------------ durability
    def sync(self) -> None:
        """Make what was written durable: fsync on the worker thread when a loop is
        running (returns at once), inline otherwise.  Errors are counted."""
        self._cancel_timer()
        if self._fd is None or not self._dirty:
            return
        self._dirty = False
        try:
            fd = os.dup(self._fd)
        except OSError as exc:
            self._error("fsync", exc)
            return
        self._sync_fds([fd])

    async def flush(self) -> bool:
        """``sync()`` and wait until every fsync started so far is done; True when
        they all succeeded.  For the moment before something drastic (an escalation
        that may destroy this VM)."""
        self.sync()
        ok = True
        while self._pending:
            done = await asyncio.gather(*list(self._pending), return_exceptions=True)
            ok = ok and all(r is None for r in done)
        return ok

    def _sync_fds(self, fds: list[int]) -> None:
        """fsync then close ``fds`` (they belong to the sync from now on)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self._closed:
            err = _fsync_all(fds)
            if err is not None:
                self._error("fsync", err)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guardian-journal")
        fut: asyncio.Future[OSError | None] = loop.run_in_executor(self._pool, _fsync_all, fds)
        self._pending.add(fut)
        fut.add_done_callback(self._synced)

    def _synced(self, fut: asyncio.Future[OSError | None]) -> None:
        self._pending.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self._error("fsync", OSError(str(exc)))
            return
        err = fut.result()
        if err is not None:
            self._error("fsync", err)

    def _arm_timer(self) -> None:
        if self._timer is not None or self.sync_interval <= 0:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(self.sync_interval, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.sync()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """fsync (inline) and close; later appends are ignored."""
        self._cancel_timer()
        if self._fd is not None and self._dirty:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
        self._dirty = False
        self._close_fd()
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    # ------------------------------------------------------------ reading
    def read(self, since: float | None = None, service: str | None = None,
             stats: ReadStats | None = None) -> Iterator[Record]:
        """Records oldest first across the rotated files (see ``read_journal``)."""
        st = stats if stats is not None else ReadStats()
        try:
            yield from read_journal(self.directory, since, service, name=self.name, stats=st)
        finally:
            self.torn_seen += st.torn

    def _scan_last_incident(self) -> int:
        """The highest incident id on disk: the newest file that names any settles it
        (ids only grow, and every file after a rotation starts with ``last_incident``)."""
        best = 0
        for path in reversed(journal_files(self.directory, self.name)):
            stats = ReadStats()
            try:
                data = path.read_bytes()
            except OSError as exc:
                log.warning("journal %s: cannot read %s: %s", self.directory, path.name, exc)
                continue
            found = False
            for rec in _parse_lines(data, stats):
                for key in ("incident", "last_incident"):
                    v = rec.get(key)
                    if isinstance(v, int) and not isinstance(v, bool):
                        found = True
                        best = max(best, v)
            self.torn_seen += stats.torn
            if found:
                break
        return best

    def stats(self) -> dict[str, Any]:
        """For status output."""
        return {
            "directory": str(self.directory),
            "records_written": self.records_written,
            "rotations": self.rotations,
            "write_errors": self.write_errors,
            "last_error": self.last_error,
            "last_incident": self.last_incident,
            "max_bytes": self.max_bytes,
            "keep": self.keep,
        }


class MemoryJournal(Journal):
    """A journal that keeps its last ``limit`` records in memory and writes nothing:
    for guardian used as a library, where no state directory is ours to write."""

    def __init__(self, *, limit: int = 10000, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._memory: collections.deque[Record] = collections.deque(maxlen=limit)
        super().__init__("/nonexistent/guardian-memory-journal", clock=clock,
                         wall_clock=wall_clock)

    def _scan_last_incident(self) -> int:
        return 0

    def _write(self, rec: Record) -> None:
        self._memory.append(rec)
        self.records_written += 1

    def read(self, since: float | None = None, service: str | None = None,
             stats: ReadStats | None = None) -> Iterator[Record]:
        for rec in list(self._memory):
            if since is not None and float(rec.get("wall", 0.0)) < since:
                continue
            if service is not None and rec.get("service", rec.get("group")) != service:
                continue
            yield rec
