"""Running a service manager's command under a deadline.

``run_command`` is what the lsb, systemd and command backends share: the
command runs in a new session (its own process group), with stdin from
``/dev/null`` and stdout/stderr captured to anonymous temporary files.

Why files and not pipes: an init script or start command usually leaves a
daemon behind, and the daemon inherits stdout/stderr.  With pipes, reading
until EOF would wait for the daemon to exit, and closing them early would
hand the daemon SIGPIPE; with files we wait for the command's own exit status
only and then read what it wrote.  (A daemon that never detaches from its
stdio keeps writing into the unlinked temporary file; well-behaved daemons
redirect it.)

On the deadline (or when the awaiting task is cancelled) the whole process
group is sent SIGKILL, so a hung ``systemctl`` or init script leaves nothing
behind.  A daemon that a *successful* command started is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from ._base import BackendError

#: How much of stdout/stderr is kept (the tail), in bytes.
OUTPUT_LIMIT = 64 * 1024

#: A sane PATH for commands when guardiand was started without one.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def reason(self, whole: bool = False) -> str:
        """``exit status 3: <last line of stderr (or stdout)>`` for error messages;
        with ``whole``, every line of it joined (shortened)."""
        if self.returncode < 0:
            try:
                what = f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                what = f"killed by signal {-self.returncode}"
        else:
            what = f"exit status {self.returncode}"
        pick = one_line if whole else last_line
        line = pick(self.stderr) or pick(self.stdout)
        return f"{what}: {line}" if line else what


def last_line(text: str, limit: int = 300) -> str:
    """The last non-blank line of ``text``, stripped and shortened to ``limit``."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


def one_line(text: str, limit: int = 400) -> str:
    """All non-blank lines of ``text`` joined with spaces, shortened to ``limit``."""
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def to_command(value: object) -> tuple[str, ...]:
    """Config converter: a list of strings, or a string split like a shell would."""
    if isinstance(value, str):
        try:
            parts = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a valid command line ({exc})") from None
        if not parts:
            raise ValueError("empty command")
        return tuple(parts)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        if not value[0]:
            raise ValueError("empty program name")
        return tuple(value)
    raise TypeError(f"{value!r} is not a command (a string or a non-empty list of strings)")


def format_argv(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PATH", DEFAULT_PATH)
    if extra:
        env.update(extra)
    return env


def _read_tail(fh: IO[bytes]) -> str:
    fh.flush()
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(0, size - OUTPUT_LIMIT))
    return fh.read().decode("utf-8", "replace")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def run_command(argv: Sequence[str], deadline: float, *,
                      env: Mapping[str, str] | None = None,
                      cwd: str | None = None,
                      what: str = "") -> CommandResult:
    """Run ``argv`` and wait for its exit status until ``deadline`` (monotonic).

    Returns the result whatever the exit status is.  Raises ``BackendError``
    when the program cannot be executed or did not finish by the deadline
    (after killing its process group).  ``what`` names the action in
    messages (``"start web"``); default: the command line.
    """
    argv = tuple(argv)
    label = what or format_argv(argv)
    started = time.monotonic()
    if deadline - started <= 0:
        raise BackendError(f"{label}: no time left to run {format_argv(argv)}")
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=cwd,
                env=_child_env(env),
                start_new_session=True,
            )
        except FileNotFoundError:
            raise BackendError(f"{label}: {argv[0]}: no such file or directory") from None
        except PermissionError:
            raise BackendError(f"{label}: {argv[0]}: permission denied") from None
        except OSError as exc:
            raise BackendError(f"{label}: cannot run {argv[0]}: {exc.strerror or exc}") from None
        try:
            async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
                returncode = await proc.wait()
        except TimeoutError:
            _kill_group(proc.pid)
            with contextlib.suppress(TimeoutError):  # SIGKILL: at once, unless stuck in D
                async with asyncio.timeout(1.0):
                    await proc.wait()
            stderr = last_line(_read_tail(err))
            tail = f" (last output: {stderr})" if stderr else ""
            raise BackendError(
                f"{label}: {format_argv(argv)} did not finish within "
                f"{deadline - started:.2g} s; killed its process group{tail}") from None
        except asyncio.CancelledError:
            _kill_group(proc.pid)
            # reap it so no zombie and no "Event loop is closed" warning is left
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                await asyncio.shield(proc.wait())
            raise
        return CommandResult(argv, returncode, _read_tail(out), _read_tail(err),
                             time.monotonic() - started)


def read_pidfile(path: str) -> int | None:
    """The pid in ``path``, or None if the file is missing, empty or not a pid."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            text = fh.read(64)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    first = text.split(maxsplit=1)
    if not first or not first[0].isdigit():
        return None
    pid = int(first[0])
    return pid if pid > 0 else None


_PF_EXITING = 0x4  # linux/sched.h: the task is getting shut down


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a live process?  A zombie (exited, not yet reaped) or a
    process in the middle of exiting counts as dead.

    That distinction matters: a supervisord child that was just SIGKILLed is a
    zombie until supervisord reaps it, and ``kill(pid, 0)`` succeeds on zombies.
    """
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read(512)
    except FileNotFoundError:
        return False
    except OSError:
        stat = b""
    if stat:
        # "pid (comm) S ...": comm may contain spaces and parentheses
        _, _, rest = stat.rpartition(b")")
        fields = rest.split()
        if len(fields) > 6 and fields[6].isdigit():
            # state, ppid, pgrp, session, tty_nr, tpgid, flags
            if fields[0] in (b"Z", b"X", b"x"):
                return False
            return not int(fields[6]) & _PF_EXITING  # SIGKILLed, still tearing down

    # no /proc: fall back to the signal-0 probe (which cannot see zombies)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def terminate(pid: int, deadline: float, grace: float = 0.8) -> None:
    """SIGTERM ``pid``, wait for it to die, SIGKILL it after ``grace`` of the
    remaining time; ``BackendError`` if it still lives at ``deadline``."""
    started = time.monotonic()
    kill_at = started + max(0.0, deadline - started) * grace
    sig = signal.SIGTERM
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        raise BackendError(f"not allowed to signal pid {pid}") from None
    delay = 0.002
    while pid_alive(pid):
        now = time.monotonic()
        if now >= deadline:
            raise BackendError(f"pid {pid} still runs {now - started:.3g} s after "
                               f"{sig.name}")
        if sig is signal.SIGTERM and now >= kill_at:
            sig = signal.SIGKILL
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        await asyncio.sleep(min(delay, max(0.0, deadline - now)))
        delay = min(delay * 2, 0.05)
