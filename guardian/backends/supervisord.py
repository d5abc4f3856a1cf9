"""The ``supervisord`` backend: programs of the guest's supervisord, over XML-RPC.

Global, in ``[backends.supervisord]``::

    url = "unix:///run/supervisor.sock"   # or "http://127.0.0.1:9001"
    username = "guardian"                 # optional, with password
    password = "secret"
    events = true                         # listen for PROCESS_STATE events
    event_socket = "/run/guardian/events.sock"
    kill_after = "3s"                     # SIGKILL the program's process group if it
                                          # has not stopped this long after the stop
                                          # signal ("0" leaves it to stopwaitsecs)

Per service::

    [services.web]
    backend = "supervisord"
    unit = "apache2"                      # optional: default the service name;
                                          # "group:name" for a program in a group

Every call runs in its own worker thread with a fresh connection whose socket
timeout is what remains of the caller's deadline; the awaiting task gives up
at the deadline whatever the thread does.

Speed: supervisord reaps a dead child only when its poll loop wakes up (EOF
on the child's pipes, an XML-RPC request, or its 1 s timeout), after handling
what woke it.  So right after a SIGKILL it may still report the program
RUNNING, and ``startProcess`` then fails with ALREADY_STARTED.  ``restart``
checks the reported pid itself (a zombie or an exiting process counts as
dead); if that process is gone it does not ask supervisord to stop it (which
would record a stop instead of the crash) but retries ``startProcess`` a few
milliseconds apart: each request wakes supervisord, which reaps the child
right after answering.  ``start`` and ``restart`` return as soon as
supervisord has spawned the program (STARTING), without waiting for
``startsecs``: the health checks judge the rest.  ``stop`` polls rather than
letting supervisord hold the answer (it re-checks deferred answers every
50 ms).  Measured on the test machine: one ``status()`` costs about 1.5 ms;
SIGKILL -> ``restart()`` returned takes 8-20 ms.

Events: supervisord runs ``python -m guardian.backends.listener`` as an event
listener (see ``listener_config_snippet()``), which forwards each
PROCESS_STATE event as one JSON datagram to ``event_socket``;
``SupervisordBackend.events()`` binds that socket and yields ``UnitEvent``.
supervisord hands events to listeners one loop iteration after it queued
them, and the pipe EOF that wakes it often comes before the child can be
reaped: an idle supervisord delivers an exit event 1-2 s late (measured).
Any XML-RPC request (a ``status()``) flushes it at once (measured 3-6 ms
after the kill).  Events are the second channel: watching the pid (pidfd)
is the fast one.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ipaddress
import json
import logging
import os
import shlex
import signal
import socket
import stat
import sys
import threading
import time
import xml.parsers.expat
import xmlrpc.client
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from supervisor.xmlrpc import Faults, SupervisorTransport, UnixStreamHTTPConnection

from checks import Options, run_in_thread

from ._base import Backend, BackendError, Controller, UnitEvent, UnitState, UnitStatus
from ._proc import pid_alive

log = logging.getLogger("guardian.backends.supervisord")

T = TypeVar("T")

DEFAULT_URL = "unix:///run/supervisor.sock"
DEFAULT_EVENT_SOCKET = "/run/guardian/events.sock"
#: Seconds after the stop signal before guardian SIGKILLs a program's process group
#: (supervisord's own stopwaitsecs is usually 10 s; a hung service should not wait).
DEFAULT_KILL_AFTER = 3.0

#: supervisord process state name -> ours
STATES: dict[str, UnitState] = {
    "STOPPED": UnitState.STOPPED,
    "STARTING": UnitState.STARTING,
    "RUNNING": UnitState.RUNNING,
    "BACKOFF": UnitState.EXITED,      # died while starting; supervisord will try again
    "STOPPING": UnitState.STOPPING,
    "EXITED": UnitState.EXITED,
    "FATAL": UnitState.FAILED,        # supervisord gave up
    "UNKNOWN": UnitState.UNKNOWN,
}

#: How long to wait between two polls of supervisord (seconds): first, maximum.
_POLL_FIRST = 0.002
_POLL_MAX = 0.02


def unit_name(group: str, process: str) -> str:
    """The name guardian uses for a supervisord process: ``name``, or
    ``group:name`` when the process belongs to a group of another name."""
    return process if group == process or not group else f"{group}:{process}"


def _fault_name(code: int) -> str:
    for name, value in vars(Faults).items():
        if value == code and not name.startswith("_"):
            return str(name)
    return str(code)


# --------------------------------------------------------------------------- XML-RPC
class _UnixConnection(UnixStreamHTTPConnection):  # type: ignore[misc]
    """supervisor's unix-socket HTTP connection, with the timeout honoured."""

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socketfile)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _Transport(SupervisorTransport):  # type: ignore[misc]
    """supervisor's XML-RPC transport; every socket operation times out at the deadline."""

    def __init__(self, url: str, username: str | None, password: str | None,
                 deadline: float) -> None:
        super().__init__(username, password, url)
        self.deadline = deadline
        self._get_connection = self._connect

    def _timeout(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return left

    def _connect(self) -> http.client.HTTPConnection:
        url: str = self.serverurl
        if url.startswith("unix://"):
            conn = _UnixConnection("localhost", timeout=self._timeout())
            conn.socketfile = url[len("unix://"):]
            return conn
        parts = urlsplit(url)
        return http.client.HTTPConnection(parts.hostname or "localhost", parts.port or 80,
                                          timeout=self._timeout())

    def request(self, host: str, handler: str, request_body: bytes,
                verbose: bool = False) -> Any:
        timeout = self._timeout()
        conn = self.connection
        if conn is not None:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
        return super().request(host, handler, request_body, verbose)


class _Session:
    """One operation's conversation with supervisord (one thread, one connection)."""

    def __init__(self, backend: SupervisordBackend, deadline: float,
                 abandoned: threading.Event) -> None:
        self.backend = backend
        self.deadline = deadline
        self.abandoned = abandoned
        self.transport = _Transport(backend.url, backend.username, backend.password, deadline)
        self.proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=self.transport)
        self.step = ""       # the call in flight, for timeout messages
        self.problem = ""    # why the operation is still retrying, for timeout messages

    def close(self) -> None:
        self.transport.close()

    def call(self, method: str, *args: Any) -> Any:
        """Call ``supervisor.METHOD``; faults pass through, the rest is a BackendError."""
        if self.abandoned.is_set():
            raise BackendError("abandoned: the caller gave up")
        self.step = f"{method}({', '.join(repr(a) for a in args)})"
        url = self.backend.url
        try:
            return getattr(self.proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault:
            raise
        except TimeoutError:
            raise BackendError(f"supervisord at {url} did not answer {self.step} in time") \
                from None
        except FileNotFoundError:
            raise BackendError(f"supervisord is not running: no socket at {url}") from None
        except ConnectionRefusedError:
            raise BackendError(f"supervisord is not running: connection to {url} refused") \
                from None
        except PermissionError:
            raise BackendError(f"permission denied on supervisord's socket {url}") from None
        except xmlrpc.client.ProtocolError as exc:
            if exc.errcode == 401:
                raise BackendError(
                    f"supervisord at {url} refused the credentials (HTTP 401): check "
                    "username and password in [backends.supervisord]") from None
            raise BackendError(f"supervisord at {url}: HTTP {exc.errcode} {exc.errmsg}") \
                from None
        except (http.client.HTTPException, xmlrpc.client.ResponseError,
                xml.parsers.expat.ExpatError) as exc:
            raise BackendError(f"supervisord at {url} gave a bad answer to {method}: "
                               f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise BackendError(f"cannot reach supervisord at {url}: "
                               f"{exc.strerror or exc}") from None

    def pause(self, seconds: float) -> None:
        left = self.deadline - time.monotonic()
        if left > 0:
            time.sleep(min(seconds, left))


# --------------------------------------------------------------------------- controller
class SupervisordController(Controller):
    """One supervisord program (``name`` or ``group:name``)."""

    def __init__(self, backend: SupervisordBackend, unit: str, key_path: str = "unit") -> None:
        self.backend = backend
        self.unit = unit
        self.key_path = key_path

    @property
    def local_pids(self) -> bool:  # type: ignore[override]
        return self.backend.local

    def describe(self) -> str:
        return f"supervisord:{self.unit}"

    # -- plumbing -----------------------------------------------------------
    async def _run(self, action: str, body: Callable[[_Session], T], deadline: float) -> T:
        abandoned = threading.Event()
        session = _Session(self.backend, deadline, abandoned)

        def work() -> T:
            try:
                return body(session)
            finally:
                session.close()

        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
                return await run_in_thread(work)
        except TimeoutError:
            if session.problem:
                raise BackendError(f"{action} {self.unit}: {session.problem} "
                                   "(gave up at the deadline)") from None
            step = f" (waiting for {session.step})" if session.step else ""
            raise BackendError(f"{action} {self.unit}: supervisord did not finish in time"
                               f"{step}") from None
        finally:
            abandoned.set()

    def _error(self, fault: xmlrpc.client.Fault, action: str,
               session: _Session | None = None) -> BackendError:
        code = fault.faultCode
        text = str(fault.faultString)
        if code == Faults.BAD_NAME:
            return BackendError(f"{action} {self.unit}: supervisord has no program named "
                                f"{self.unit!r} (BAD_NAME; check {self.key_path})")
        if code == Faults.SPAWN_ERROR:
            why = ""
            if session is not None:
                with contextlib.suppress(BackendError, xmlrpc.client.Fault):
                    info = session.call("getProcessInfo", self.unit)
                    reason = info.get("spawnerr") or info.get("description") or ""
                    why = f": {reason}" if reason else ""
            return BackendError(f"{action} {self.unit}: supervisord could not spawn it "
                                f"(SPAWN_ERROR){why}")
        if code == Faults.ABNORMAL_TERMINATION:
            return BackendError(f"{action} {self.unit}: it exited while starting "
                                "(ABNORMAL_TERMINATION)")
        if code in (Faults.NO_FILE, Faults.NOT_EXECUTABLE):
            return BackendError(f"{action} {self.unit}: its command cannot run "
                                f"({_fault_name(code)}: {text})")
        if code == Faults.SHUTDOWN_STATE:
            return BackendError(f"{action} {self.unit}: supervisord is shutting down")
        return BackendError(f"{action} {self.unit}: supervisord says {text}")

    def _info(self, session: _Session, action: str) -> dict[str, Any]:
        try:
            info = session.call("getProcessInfo", self.unit)
        except xmlrpc.client.Fault as fault:
            raise self._error(fault, action) from None
        if not isinstance(info, dict):
            raise BackendError(f"{action} {self.unit}: odd answer from supervisord: {info!r}")
        return info

    def _alive(self, info: dict[str, Any]) -> bool:
        """Is the pid supervisord reports really running?  (Unknowable when remote.)"""
        pid = info.get("pid") or 0
        if not self.backend.local:
            return bool(pid)
        return isinstance(pid, int) and pid_alive(pid)

    # -- blocking bodies (run in a worker thread) ----------------------------
    def _wait_while(self, session: _Session, states: tuple[str, ...],
                    action: str, until: float | None = None) -> dict[str, Any]:
        delay = _POLL_FIRST
        while True:
            info = self._info(session, action)
            if info.get("statename") not in states:
                return info
            if until is not None and time.monotonic() >= until:
                return info
            session.pause(delay)
            delay = min(delay * 2, _POLL_MAX)

    def _do_stop(self, session: _Session, action: str = "stop", pid: int = 0) -> None:
        """Stop the program; ``pid`` is its process as last seen (0: unknown)."""
        if not self.backend.local:
            pid = 0     # not our process namespace: nothing to signal
        try:
            session.call("stopProcess", self.unit, False)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != Faults.NOT_RUNNING:
                raise self._error(fault, action) from None
        if pid > 0:
            # A hung service is often a stopped one (SIGSTOP, a debugger, a frozen
            # cgroup): the stop signal stays pending until it runs again, and
            # supervisord would wait its whole stopwaitsecs.  Let it run.
            _signal_group(pid, signal.SIGCONT)
        # stopProcess(wait=True) would hold the answer in supervisord and
        # re-check every 50 ms; polling here wakes supervisord to reap sooner.
        until = None
        if pid > 0 and self.backend.kill_after > 0:
            until = time.monotonic() + self.backend.kill_after
        info = self._wait_while(session, ("STOPPING",), action, until=until)
        if info.get("statename") == "STOPPING":
            log.warning("%s %s: still stopping %.1f s after the stop signal; "
                        "SIGKILL to process group %d", action, self.unit,
                        self.backend.kill_after, pid)
            _signal_group(pid, signal.SIGKILL)
            info = self._wait_while(session, ("STOPPING",), action)
        if info.get("statename") in ("RUNNING", "STARTING", "BACKOFF"):
            raise BackendError(f"{action} {self.unit}: still {info.get('statename')} "
                               "after stopProcess")

    def _do_start(self, session: _Session, action: str = "start") -> None:
        delay = _POLL_FIRST
        dead_pid: int | None = None
        while True:
            try:
                session.call("startProcess", self.unit, False)
                return
            except xmlrpc.client.Fault as fault:
                if fault.faultCode != Faults.ALREADY_STARTED:
                    raise self._error(fault, action, session) from None
            info = self._info(session, action)
            state = info.get("statename")
            if state == "BACKOFF":
                # waiting to retry: stop the retry cycle, start at once
                self._do_stop(session, action)
                continue
            if state in ("RUNNING", "STARTING"):
                if self._alive(info):
                    return  # running: started by someone else (autorestart), or was up
                # died, and supervisord has not reaped it yet: our requests wake
                # it up and it reaps right after answering; try again shortly
                dead_pid = info.get("pid") or dead_pid
                session.problem = (f"supervisord still reports it {state} although "
                                   f"pid {dead_pid} is gone")
                if time.monotonic() >= session.deadline:
                    raise BackendError(f"{action} {self.unit}: {session.problem}")
                session.pause(delay)
                delay = min(delay * 2, _POLL_MAX)
                continue
            if state == "STOPPING":
                self._wait_while(session, ("STOPPING",), action)
            # any other state: startProcess again

    def _do_restart(self, session: _Session) -> None:
        info = self._info(session, "restart")
        state = info.get("statename")
        if state in ("RUNNING", "STARTING"):
            if self._alive(info):
                self._do_stop(session, "restart", int(info.get("pid") or 0))
            # else: it died and supervisord has not noticed: no stop needed
        elif state == "BACKOFF":
            self._do_stop(session, "restart")
        elif state == "STOPPING":
            self._wait_while(session, ("STOPPING",), "restart")
        elif state == "UNKNOWN":
            raise BackendError(f"restart {self.unit}: supervisord reports state UNKNOWN")
        self._do_start(session, "restart")

    def _to_status(self, info: dict[str, Any]) -> UnitStatus:
        name = str(info.get("statename", "UNKNOWN"))
        state = STATES.get(name, UnitState.UNKNOWN)
        raw_pid = info.get("pid")
        pid = raw_pid if isinstance(raw_pid, int) and raw_pid > 0 else None
        detail = name
        description = str(info.get("description") or "")
        if description:
            detail += f": {description}"
        spawnerr = str(info.get("spawnerr") or "")
        if spawnerr and spawnerr not in description:
            detail += f" ({spawnerr})"
        if state in (UnitState.RUNNING, UnitState.STARTING) and pid is not None \
                and not self._alive(info):
            return UnitStatus(UnitState.EXITED, None,
                              f"{detail}; but pid {pid} is gone (supervisord has not "
                              "reaped it yet)")
        if state not in (UnitState.RUNNING, UnitState.STARTING, UnitState.STOPPING):
            pid = None
        return UnitStatus(state, pid, detail)

    # -- the Controller interface ------------------------------------------
    async def start(self, deadline: float) -> None:
        await self._run("start", self._do_start, deadline)

    async def stop(self, deadline: float) -> None:
        def body(session: _Session) -> None:
            pid = int(self._info(session, "stop").get("pid") or 0)
            self._do_stop(session, "stop", pid)

        await self._run("stop", body, deadline)

    async def restart(self, deadline: float) -> None:
        await self._run("restart", self._do_restart, deadline)

    async def status(self, deadline: float) -> UnitStatus:
        info = await self._run("status", lambda s: self._info(s, "status"), deadline)
        return self._to_status(info)


# --------------------------------------------------------------------------- events
def event_from_message(data: bytes) -> UnitEvent | None:
    """Decode one datagram of the listener (JSON); None if it is not a process
    state event or cannot be read."""
    try:
        msg = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(msg, dict):
        return None
    eventname = msg.get("eventname")
    process = msg.get("processname")
    if not (isinstance(eventname, str) and eventname.startswith("PROCESS_STATE_")
            and isinstance(process, str) and process):
        return None
    to_state = eventname[len("PROCESS_STATE_"):]
    group = msg.get("groupname")
    unit = unit_name(group if isinstance(group, str) else process, process)
    pid: int | None = None
    raw_pid = msg.get("pid")
    if isinstance(raw_pid, str) and raw_pid.isdigit():
        raw_pid = int(raw_pid)
    if isinstance(raw_pid, int) and raw_pid > 0:
        pid = raw_pid
    detail = f"{msg.get('from_state', '?')} -> {to_state}"
    if to_state == "EXITED":
        expected = str(msg.get("expected", ""))
        detail += " (expected exit)" if expected == "1" else " (unexpected exit)"
    return UnitEvent(unit, STATES.get(to_state, UnitState.UNKNOWN), pid, detail)


def _bind_event_socket(path: str) -> socket.socket:
    """A non-blocking datagram socket bound at ``path`` (mode 0600); a stale
    socket left there is replaced, anything else there is an error."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise BackendError(f"event socket {path} exists and is not a socket")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def listener_config_snippet(python: str = sys.executable,
                            event_socket: str = DEFAULT_EVENT_SOCKET,
                            name: str = "guardian") -> str:
    """The supervisord configuration section that runs guardian's event listener."""
    command = shlex.join([python, "-m", "guardian.backends.listener", "--socket", event_socket])
    command = command.replace("%", "%%")  # supervisord expands %(name)s in values
    return (
        f"[eventlistener:{name}]\n"
        f"; forwards process state changes to guardiand at {event_socket}\n"
        f"command={command}\n"
        "events=PROCESS_STATE\n"
        "buffer_size=100\n"
        "autostart=true\n"
        "autorestart=true\n"
        "priority=1\n"
    )


# --------------------------------------------------------------------------- backend
class SupervisordBackend(Backend):
    """Programs of a supervisord, driven through its XML-RPC interface."""

    name: ClassVar[str] = "supervisord"

    def __init__(self, url: str = DEFAULT_URL, username: str | None = None,
                 password: str | None = None, events: bool = True,
                 event_socket: str = DEFAULT_EVENT_SOCKET,
                 kill_after: float = DEFAULT_KILL_AFTER) -> None:
        self.url = url
        self.kill_after = kill_after
        self.username = username
        self.password = password
        self.events_enabled = events
        self.event_socket = event_socket
        self.local = _is_local(url)
        self._closed = False
        self._inboxes: set[asyncio.Queue[bytes | OSError | None]] = set()

    @classmethod
    def from_options(cls, opts: Options) -> SupervisordBackend:
        url = opts.convert("url", _to_url, DEFAULT_URL)
        username = opts.str("username", None)
        password = opts.str("password", None)
        if (username is None) != (password is None):
            missing = "password" if password is None else "username"
            raise opts.error(missing, "is required when "
                             f"{'username' if missing == 'password' else 'password'} is set")
        events = opts.bool("events", True)
        event_socket = opts.str("event_socket", DEFAULT_EVENT_SOCKET)
        if not event_socket.startswith("/"):
            raise opts.error("event_socket", f"{event_socket!r} is not an absolute path")
        if len(os.fsencode(event_socket)) > 107:
            raise opts.error("event_socket", "is longer than a unix socket path may be")
        kill_after = opts.duration("kill_after", DEFAULT_KILL_AFTER)
        return cls(url, username, password, events, event_socket, kill_after)

    def controller(self, service: str, opts: Options) -> SupervisordController:
        unit = opts.convert("unit", _to_unit, _to_unit(service))
        return SupervisordController(self, unit, opts.key_path("unit"))

    async def events(self) -> AsyncIterator[UnitEvent]:
        """Bind ``event_socket`` and yield what the listener forwards, until
        cancelled or ``aclose()``; removes the socket file when it ends."""
        if not self.events_enabled:
            return
        loop = asyncio.get_running_loop()
        last_error = ""
        while not self._closed:
            try:
                sock = _bind_event_socket(self.event_socket)
            except (OSError, BackendError) as exc:
                if str(exc) != last_error:  # say it once, not every second
                    log.warning("cannot listen for supervisord events on %s: %s; retrying",
                                self.event_socket, exc)
                    last_error = str(exc)
                await asyncio.sleep(1.0)
                continue
            last_error = ""
            try:
                inode = os.lstat(self.event_socket).st_ino  # the file, not the socket's fd
            except OSError:
                inode = -1
            inbox: asyncio.Queue[bytes | OSError | None] = asyncio.Queue(_INBOX_SIZE)
            self._inboxes.add(inbox)
            loop.add_reader(sock.fileno(), _drain, sock, inbox)
            try:
                while True:
                    item = await inbox.get()
                    if item is None or self._closed:
                        return  # aclose()
                    if isinstance(item, OSError):
                        log.warning("supervisord events on %s: %s; listening again",
                                    self.event_socket, item)
                        break
                    event = event_from_message(item)
                    if event is None:
                        log.debug("ignored a datagram on %s: %r", self.event_socket, item[:200])
                        continue
                    yield event
            finally:
                self._inboxes.discard(inbox)
                loop.remove_reader(sock.fileno())
                sock.close()
                _unlink_if(self.event_socket, inode)
            await asyncio.sleep(0.5)

    async def aclose(self) -> None:
        """End ``events()``: it returns, removing its socket file."""
        self._closed = True
        for inbox in list(self._inboxes):
            with contextlib.suppress(asyncio.QueueFull):
                inbox.put_nowait(None)


#: Datagrams waiting for events()' consumer; beyond that they are dropped.
_INBOX_SIZE = 1000


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group ``pid`` leads (supervisord makes every program a
    group leader), or just ``pid`` if it leads none; gone is fine."""
    try:
        target = os.getpgid(pid)
        if pid == os.getpid() or target == os.getpgrp():
            return      # never ourselves
        if target == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _drain(sock: socket.socket, inbox: asyncio.Queue[bytes | OSError | None]) -> None:
    """Reader callback: move every waiting datagram into ``inbox``."""
    while True:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            with contextlib.suppress(asyncio.QueueFull):
                inbox.put_nowait(exc)
            return
        try:
            inbox.put_nowait(data)
        except asyncio.QueueFull:
            log.warning("supervisord events: %d waiting, dropping one", inbox.qsize())


def _unlink_if(path: str, inode: int) -> None:
    """Remove the socket file at ``path`` unless someone else has bound a new one."""
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)


def _to_url(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    if value.startswith("unix://"):
        path = value[len("unix://"):]
        if not path.startswith("/"):
            raise ValueError(f"{value!r}: write unix:///absolute/path/to/supervisor.sock")
        return value
    if value.startswith("http://"):
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            raise ValueError(f"{value!r} has a bad port") from None
        if not parts.hostname:
            raise ValueError(f"{value!r} has no host")
        return value
    raise ValueError(f"{value!r} is not a supervisord URL (unix:///PATH or http://HOST:PORT)")


def _to_unit(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    group, sep, process = value.partition(":")
    if not group or (sep and not process) or ":" in process or "*" in value \
            or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not a supervisord program name (NAME or GROUP:NAME)")
    return unit_name(group, process) if sep else value


def _is_local(url: str) -> bool:
    if url.startswith("unix://"):
        return True
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
