"""Processes: commands with timeouts, and finding/killing processes by namespace."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from ._errors import CommandError, LabError, LabTimeout

DEFAULT_TIMEOUT = 10.0


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``, capture its output as text; never wait longer than ``timeout``."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL if input is None else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabTimeout(f"command {' '.join(argv)!r} did not finish in {timeout:g} s") from exc
    except OSError as exc:
        raise LabError(f"cannot run {' '.join(argv)!r}: {exc}") from exc
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc


def ns_inode(pid: int, kind: str) -> int | None:
    """Inode of ``/proc/PID/ns/KIND``; None when the process is gone or a zombie."""
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """The process start time (clock ticks since boot), to tell a pid from its reuse."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: the fields after the last ')' are fixed.
    fields = data[data.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class ProcessRef:
    """A pid plus its start time: stays correct if the pid is reused."""

    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        st = start_time(pid)
        return None if st is None else cls(pid, st)

    def alive(self) -> bool:
        return start_time(self.pid) == self.start_time and _state(self.pid) not in ("Z", "X", "")


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
    except OSError:
        return ""
    return data[data.rfind(")") + 2 :][:1]


def all_pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def pids_in_namespaces(
    *, net: Collection[int] = (), mnt: Collection[int] = (), exclude: Collection[int] = ()
) -> list[int]:
    """Live (non-zombie) pids whose network namespace inode is in ``net`` or whose mount
    namespace inode is in ``mnt``. The calling process is never included."""
    me = os.getpid()
    found = []
    for pid in all_pids():
        if pid == me or pid in exclude:
            continue
        if (net and ns_inode(pid, "net") in net) or (mnt and ns_inode(pid, "mnt") in mnt):
            found.append(pid)
    return found


def kill_until_gone(
    find: Callable[[], list[int]], *, timeout: float = 5.0, sig: int = signal.SIGKILL
) -> None:
    """Send ``sig`` to every pid ``find()`` returns, again and again (new children
    may appear while we kill), until ``find()`` returns nothing or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        pids = find()
        if not pids:
            return
        if time.monotonic() > deadline:
            raise LabTimeout(
                f"processes survived signal {sig}",
                {str(p): _describe(p) for p in pids},
            )
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.005)


def signal_all(pids: Collection[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "?"
    return f"state {_state(pid) or '?'}: {cmd[:200]}"
