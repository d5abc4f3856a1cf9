"""Run a Nagios / Monitoring-Plugins style program as a probe.

The program runs in its own session (so its own process group); at the
deadline the whole group is SIGKILLed and reaped.  Exit codes 0/1/2/3 map to
OK/WARNING/CRITICAL/UNKNOWN, anything else is UNKNOWN.  Output follows the
plugin API: ``TEXT | perfdata`` on the first line, long text after it, and
more perfdata after a ``|`` in the long text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
from dataclasses import replace

from ._base import Check, ProbeError, remaining
from ._options import Options
from ._result import CheckResult, Status

STDOUT_CAP = 64 * 1024
STDERR_CAP = 4 * 1024
_REAP_GRACE = 1.0
_PIPE_GRACE = 0.5
_TRANSCRIPT_LINES = 20


def _command(value: object) -> list[str]:
    if isinstance(value, str):
        argv = shlex.split(value)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        argv = list(value)
    else:
        raise TypeError(f"{value!r} is not a command (a string or a list of strings)")
    if not argv or not argv[0]:
        raise ValueError("is empty")
    return argv


def parse_perfdata(text: str) -> list[str]:
    """Split Nagios perfdata into items; quoted labels may hold spaces."""
    items: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        start = i
        if text[i] == "'":
            i += 1
            while i < n:
                if text[i] == "'":
                    if i + 1 < n and text[i + 1] == "'":  # '' is an escaped quote
                        i += 2
                        continue
                    i += 1
                    break
                i += 1
        while i < n and not text[i].isspace():
            i += 1
        item = text[start:i]
        if "=" in item:
            items.append(item)
    return items


def parse_plugin_output(output: str) -> tuple[str, list[str], list[str]]:
    """(first line's text, perfdata items, long-text lines) per the plugin API."""
    lines = output.splitlines()
    if not lines:
        return "", [], []
    text, _, perf = lines[0].partition("|")
    perfdata = parse_perfdata(perf)
    long_text: list[str] = []
    in_perf = False
    for line in lines[1:]:
        if in_perf:
            perfdata.extend(parse_perfdata(line))
            continue
        before, bar, after = line.partition("|")
        if before.strip():
            long_text.append(before.rstrip())
        if bar:
            in_perf = True
            perfdata.extend(parse_perfdata(after))
    return text.strip(), perfdata, long_text


class _PluginProtocol(asyncio.SubprocessProtocol):
    """Collects stdout/stderr up to their caps (the rest is read and dropped, so
    the child never blocks on a full pipe) and reports exit and EOF."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.out_cut = False
        self.exited: asyncio.Future[None] = loop.create_future()
        self.pipes_closed: asyncio.Future[None] = loop.create_future()
        self._open = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buf, cap = (self.out, STDOUT_CAP) if fd == 1 else (self.err, STDERR_CAP)
        room = cap - len(buf)
        if len(data) > room and fd == 1:
            self.out_cut = True
        if room > 0:
            buf += data[:room]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open.discard(fd)
        if not self._open and not self.pipes_closed.done():
            self.pipes_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class ExecCheck(Check):
    """Run a plugin program; its exit code is the verdict.

    ``env`` is added to (and overrides) the daemon's own environment; stdin is
    /dev/null; stdout is kept up to 64 KiB and stderr up to 4 KiB.
    """

    kind = "exec"

    def __init__(self, command: list[str], *, env: dict[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.command = list(command)
        self.env = dict(env or {})
        self.cwd = cwd

    @classmethod
    def from_options(cls, opts: Options) -> ExecCheck:
        return cls(opts.convert("command", _command), env=opts.str_map("env", {}),
                   cwd=opts.str("cwd", None))

    def describe(self) -> str:
        return f"exec {os.path.basename(self.command[0])}"

    async def probe(self, deadline: float) -> CheckResult:
        env = dict(os.environ)
        env.update(self.env)
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _PluginProtocol(loop), *self.command,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, cwd=self.cwd, start_new_session=True)
        except FileNotFoundError as exc:
            if self.cwd is not None and not os.path.isdir(self.cwd):
                raise ProbeError(f"cwd {self.cwd!r} does not exist") from None
            raise ProbeError(f"{exc.filename or self.command[0]}: program not found") from None
        except PermissionError:
            raise ProbeError(f"{self.command[0]}: not executable (permission denied)") from None
        except OSError as exc:
            raise ProbeError(f"cannot run {self.command[0]}: {exc.strerror or exc}") from None

        pgid = transport.get_pid()  # start_new_session: the child leads its own group
        held = False
        try:
            try:
                async with asyncio.timeout(remaining(deadline)):
                    await protocol.exited
            except TimeoutError:
                await self._reap(pgid, protocol)
                return CheckResult(Status.CRITICAL,
                                   f"{self.describe()} timed out; killed its process group",
                                   transcript=(f"$ {shlex.join(self.command)}",))
            except asyncio.CancelledError:
                await self._reap(pgid, protocol)
                raise
            # The plugin is done: whatever it left in its group goes too, so a
            # stray child holding the pipe cannot keep the check waiting.
            _kill_group(pgid)
            try:
                async with asyncio.timeout(min(_PIPE_GRACE, remaining(deadline))):
                    await protocol.pipes_closed
            except TimeoutError:
                held = True  # held open by a process outside the group
        finally:
            transport.close()
        returncode = transport.get_returncode()
        assert returncode is not None  # exited has fired
        result = self._judge(returncode, bytes(protocol.out), protocol.out_cut,
                             bytes(protocol.err))
        if held:
            note = "  (output pipe still held open by a process outside the group)"
            result = replace(result, transcript=(*result.transcript, note))
        return result

    @staticmethod
    async def _reap(pgid: int, protocol: _PluginProtocol) -> None:
        """SIGKILL the whole group and wait (briefly) for the child to be reaped."""
        _kill_group(pgid)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_REAP_GRACE):
                await asyncio.shield(protocol.exited)

    def _judge(self, returncode: int, out: bytes, out_cut: bool, err: bytes) -> CheckResult:
        text, perfdata, long_text = parse_plugin_output(out.decode("utf-8", "replace"))
        err_lines = err.decode("utf-8", "replace").splitlines()
        transcript = [f"$ {shlex.join(self.command)}"]
        transcript += [f"  {line}" for line in long_text[:_TRANSCRIPT_LINES]]
        if out_cut:
            transcript.append(f"  (output cut at {STDOUT_CAP} bytes)")
        transcript += [f"! {line}" for line in err_lines[:5]]
        if returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = str(-returncode)
            transcript.append(f"  killed by {name}")
            return CheckResult(Status.UNKNOWN, f"{self.describe()} killed by {name}",
                               perfdata=tuple(perfdata), transcript=tuple(transcript))
        transcript.append(f"  exit {returncode}")
        status = Status.from_exit_code(returncode)
        if not text:
            first_err = err_lines[0].strip() if err_lines else ""
            text = f"{self.describe()} exited {returncode} with no output" + (
                f" (stderr: {first_err})" if first_err else "")
        elif returncode not in (0, 1, 2, 3):
            text = f"{text} (exit code {returncode})"
        return CheckResult(status, text, perfdata=tuple(perfdata), transcript=tuple(transcript))
