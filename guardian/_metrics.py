"""Prometheus metrics: one private registry, named families, an opt-in listener.

``Metrics`` owns a ``prometheus_client.CollectorRegistry`` of its own (never the
global one, so tests and a second daemon in one process do not collide) and
defines every family up front; ``docs/metrics.md`` lists them.  The exposition is
``prometheus_client.generate_latest`` (text format 0.0.4), served by a tiny asyncio
HTTP server on the daemon's loop (no thread), over loopback TCP or a unix socket::

    metrics = Metrics(version="0.1.0")
    metrics.observe_probe("apache2", "http", "http", result)
    server = await metrics.serve("127.0.0.1:9817")      # or "unix:/run/guardian/metrics.sock"
    ...
    await server.close()

Only API that prometheus_client 0.16.0 (Debian bookworm) has is used: Counter,
Gauge, Histogram, CollectorRegistry, generate_latest, CONTENT_TYPE_LATEST.

Values that age by themselves (heartbeat age) or that another object already counts
(the wire's drop counters, the journal's) are brought up to date at scrape time:
``on_scrape(fn)`` registers a callback run before every exposition.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from checks import CheckResult

from ._states import ServiceState

if TYPE_CHECKING:
    from ._journal import Journal
    from ._timeline import Phases

log = logging.getLogger("guardian.metrics")

#: the usual place for the listener, when the operator turns it on
DEFAULT_TCP = "127.0.0.1:9817"
DEFAULT_UNIX = "unix:/run/guardian/metrics.sock"

#: probes: 1 ms .. 10 s
PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: failover phases: a few ms (VIP add) .. tens of seconds (a slow fence)
FAILOVER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
                    1.0, 2.5, 5.0, 10.0, 30.0)
#: service incident phases: 1 ms .. 10 min (an exhausted ladder, a recreated VM)
INCIDENT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0)

FAILOVER_PHASES = ("detection", "vip_configured", "first_announcement", "convergence")
INCIDENT_PHASES = ("detect", "decide", "act", "serving", "total")
PAIR_ROLES = ("init", "backup", "master", "fault", "stopped")
SERVICE_STATES = tuple(s.value for s in ServiceState)

MAX_CONNECTIONS = 8
REQUEST_TIMEOUT = 5.0
MAX_REQUEST = 8192


class MetricsError(Exception):
    """A listen address that is malformed, refused, or cannot be bound."""

    def __init__(self, listen: str, message: str) -> None:
        super().__init__(f"metrics listener {listen!r}: {message}")
        self.listen = listen
        self.message = message


@dataclass(frozen=True)
class ListenAddress:
    """``kind`` is "tcp" (``host``, ``port``) or "unix" (``path``)."""

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(listen: str, *, allow_remote: bool = False) -> ListenAddress:
    """``"127.0.0.1:9817"``, ``"[::1]:9817"``, ``"localhost:9817"``, ``"9817"``
    (loopback) or ``"unix:/run/guardian/metrics.sock"``.  A TCP address that is not
    loopback raises ``MetricsError`` unless ``allow_remote``."""
    text = listen.strip()
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path.startswith("/"):
            raise MetricsError(listen, "a unix socket needs an absolute path (unix:/run/...)")
        return ListenAddress("unix", path=path)
    if text.isdigit():
        host, port_s = "127.0.0.1", text
    elif text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise MetricsError(listen, "expected [IPv6]:PORT")
        host, port_s = text[1:end], text[end + 2:]
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise MetricsError(listen, "expected HOST:PORT, PORT or unix:/PATH")
    try:
        port = int(port_s)
    except ValueError:
        raise MetricsError(listen, f"port {port_s!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise MetricsError(listen, f"port {port} is out of range")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host) if host else None
    except ValueError:
        addr = None
    if not allow_remote:
        if addr is None:
            raise MetricsError(listen, f"{host or 'all addresses'} is not a loopback address; "
                               "give 127.0.0.1 or ::1, or allow remote scrapes explicitly")
        if not addr.is_loopback:
            raise MetricsError(listen, f"{host} is not a loopback address; metrics are served "
                               "on loopback unless remote scrapes are allowed explicitly")
    return ListenAddress("tcp", host=host, port=port)


class Metrics:
    """Every guardian metric family, on a private registry.

    The methods are cheap (a dict lookup and an add) and safe to call from the
    event loop; labels are plain strings.  Names are in ``docs/metrics.md``.
    """

    def __init__(self, version: str | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.info = Gauge("guardian_build_info", "Always 1; the version in a label.",
                          ["version"], registry=r)
        self.info.labels(version or "unknown").set(1)
        # ---- probes and services
        self.probe_duration = Histogram(
            "guardian_probe_duration_seconds",
            "How long one probe of one check took, by service, check and check type.",
            ["service", "check", "type"], buckets=PROBE_BUCKETS, registry=r)
        self.verdicts = Counter(
            "guardian_verdicts_total",
            "Probe verdicts by service, check and status (OK, WARNING, CRITICAL, UNKNOWN).",
            ["service", "check", "status"], registry=r)
        self.restarts = Counter(
            "guardian_restarts_total",
            "Restarts guardian asked the service manager for, by result (ok, failed).",
            ["service", "result"], registry=r)
        self.ladder_rungs = Counter(
            "guardian_ladder_rungs_total",
            "Ladder rungs run after the restart budget was spent, by action.",
            ["service", "action"], registry=r)
        self.would_do_total = Counter(
            "guardian_would_do_total",
            "Shadow mode: what guardian would have done (restart, ladder actions) for a "
            "service or an observe-only check, had it not been only observing.",
            ["service", "action", "check"], registry=r)
        self.service_state = Gauge(
            "guardian_service_state",
            "1 for the state each service is in, 0 for the others.",
            ["service", "state"], registry=r)
        self.incident_phase = Histogram(
            "guardian_incident_phase_seconds",
            "Service incident phases: detect, decide, act, serving (again), and total.",
            ["service", "phase"], buckets=INCIDENT_BUCKETS, registry=r)
        # ---- failover pair
        self.pair_role_gauge = Gauge(
            "guardian_pair_role",
            "1 for the role this node has in each failover group, 0 for the others.",
            ["group", "role"], registry=r)
        self.heartbeat_age_gauge = Gauge(
            "guardian_heartbeat_age_seconds",
            "Seconds since the peer was last heard on each heartbeat path.",
            ["group", "path"], registry=r)
        self.dropped_packets = Counter(
            "guardian_dropped_packets_total",
            "Heartbeat packets refused, by reason (bad-mac, replay, stale, ...).",
            ["group", "reason"], registry=r)
        self.failover_phase_hist = Histogram(
            "guardian_failover_phase_seconds",
            "Takeover phases: detection (suspicion to peer declared dead), then from that "
            "declaration: vip_configured, first_announcement, convergence.",
            ["group", "phase"], buckets=FAILOVER_BUCKETS, registry=r)
        # ---- escalation and dom0
        self.escalations = Counter(
            "guardian_escalations_total",
            "Escalation requests to dom0 by outcome (sent, accepted, refused, failed).",
            ["outcome"], registry=r)
        self.hostd_decisions = Counter(
            "guardian_hostd_decisions_total",
            "guardian-hostd decisions on escalation requests, by decision.",
            ["decision"], registry=r)
        self.hostd_events = Counter(
            "guardian_hostd_events_total",
            "guardian-hostd's own counters: requests refused before a decision (bad "
            "requests, authentication failures, connection and per-VM limits, XenStore "
            "refusals), alerts suppressed or dropped, actions done or failed.",
            ["event"], registry=r)
        # ---- the journal
        self.journal_records = Counter(
            "guardian_journal_records_total", "Records written to the incident journal.",
            registry=r)
        self.journal_errors = Counter(
            "guardian_journal_write_errors_total",
            "Incident journal write or fsync errors (records lost).", registry=r)
        self.scrape_errors = 0
        self._scrape_hooks: list[Callable[[], None]] = []
        self._states: dict[str, str] = {}
        self._roles: dict[str, str] = {}
        self._drops_seen: dict[tuple[str, str], int] = {}
        self._journal_seen: dict[str, int] = {}
        self._hostd_seen: dict[str, int] = {}

    # ------------------------------------------------------------ services
    def observe_probe(self, service: str, check: str, kind: str, result: CheckResult) -> None:
        """One probe result: its duration and its verdict."""
        self.probe_duration.labels(service, check, kind).observe(max(0.0, result.duration))
        self.verdicts.labels(service, check, result.status.value).inc()

    def restart(self, service: str, ok: bool) -> None:
        self.restarts.labels(service, "ok" if ok else "failed").inc()

    def ladder(self, service: str, action: str) -> None:
        self.ladder_rungs.labels(service, action).inc()

    def would_do(self, service: str, action: str, check: str = "") -> None:
        """Shadow mode: ``action`` not done; ``check`` when one observe-only check
        alone would have caused it ("" for a whole service in observe mode)."""
        self.would_do_total.labels(service, action, check).inc()

    def state(self, service: str, state: str) -> None:
        """One-hot: ``state`` gets 1, every other known state of ``service`` 0."""
        self._states[service] = state
        states = SERVICE_STATES if state in SERVICE_STATES else (*SERVICE_STATES, state)
        for s in states:
            self.service_state.labels(service, s).set(1 if s == state else 0)

    def forget_service(self, service: str) -> None:
        """The service left the configuration: drop its state series."""
        state = self._states.pop(service, None)
        for s in {*SERVICE_STATES, *([state] if state else [])}:
            with contextlib.suppress(KeyError):
                self.service_state.remove(service, s)

    def incident_phases(self, service: str, phases: Phases) -> None:
        """A closed service incident (from ``_timeline``): one observation per phase."""
        for name, value in (("detect", phases.detect), ("decide", phases.decide),
                            ("act", phases.act), ("serving", phases.serving),
                            ("total", phases.total)):
            self.incident_phase.labels(service, name).observe(max(0.0, value))

    # ------------------------------------------------------------ failover pair
    def pair_role(self, group: str, role: str) -> None:
        """One-hot over init, backup, master, fault, stopped."""
        self._roles[group] = role
        roles = PAIR_ROLES if role in PAIR_ROLES else (*PAIR_ROLES, role)
        for r in roles:
            self.pair_role_gauge.labels(group, r).set(1 if r == role else 0)

    def heartbeat_age(self, group: str, path: str | int, seconds: float | None) -> None:
        """Age of the last word from the peer on ``path``; None (never heard) drops
        the series rather than inventing a number."""
        if seconds is None:
            with contextlib.suppress(KeyError):
                self.heartbeat_age_gauge.remove(group, str(path))
            return
        self.heartbeat_age_gauge.labels(group, str(path)).set(max(0.0, seconds))

    def drop(self, group: str, reason: str, n: int = 1) -> None:
        """``n`` refused packets (call per packet, or use ``sync_drops``, not both)."""
        if n > 0:
            self.dropped_packets.labels(group, reason).inc(n)

    def sync_drops(self, group: str, counts: Mapping[str, int]) -> None:
        """Bring the counter up to absolute per-reason totals kept elsewhere (the
        wire's ``DropCounters.as_dict()``).  A total that went down means the counter
        behind it was recreated: its whole new value is added."""
        for reason, total in counts.items():
            key = (group, reason)
            seen = self._drops_seen.get(key, 0)
            delta = total - seen if total >= seen else total
            self._drops_seen[key] = total
            self.drop(group, reason, delta)

    def failover_phase(self, group: str, phase: str, seconds: float) -> None:
        if phase not in FAILOVER_PHASES:
            raise ValueError(f"unknown failover phase {phase!r} (one of {FAILOVER_PHASES})")
        self.failover_phase_hist.labels(group, phase).observe(max(0.0, seconds))

    def pair_status(self, group: str, status: Mapping[str, Any]) -> None:
        """Refresh role, heartbeat ages and drops from ``PairEngine.status()`` (for an
        ``on_scrape`` hook).  Missing keys are skipped."""
        state = status.get("state")
        if isinstance(state, str) and state in PAIR_ROLES:
            self.pair_role(group, state)
        for p in status.get("paths") or ():
            if isinstance(p, Mapping) and "index" in p:
                age = p.get("heard_age")
                self.heartbeat_age(group, p["index"],
                                   age if isinstance(age, (int, float)) else None)
        drops = status.get("drops")
        if isinstance(drops, Mapping):
            self.sync_drops(group, {str(k): int(v) for k, v in drops.items()})

    # ------------------------------------------------------------ escalation, dom0
    def escalation(self, outcome: str) -> None:
        self.escalations.labels(outcome).inc()

    def hostd_decision(self, decision: str) -> None:
        self.hostd_decisions.labels(decision).inc()

    def hostd_counts(self, counts: Mapping[str, int]) -> None:
        """Bring ``guardian_hostd_events_total`` up to hostd's in-memory counters
        (monotonic: only the increase since the last call is added)."""
        for name, value in counts.items():
            seen = self._hostd_seen.get(name, 0)
            if value > seen:
                self.hostd_events.labels(name).inc(value - seen)
                self._hostd_seen[name] = value

    # ------------------------------------------------------------ the journal
    def watch_journal(self, journal: Journal) -> None:
        """Mirror the journal's record and error counts at every scrape."""

        def sync() -> None:
            for key, total, counter in (("records", journal.records_written,
                                         self.journal_records),
                                        ("errors", journal.write_errors, self.journal_errors)):
                delta = total - self._journal_seen.get(key, 0)
                if delta > 0:
                    counter.inc(delta)
                self._journal_seen[key] = total

        self.on_scrape(sync)

    # ------------------------------------------------------------ exposition
    def on_scrape(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` before every exposition (on the loop; keep it quick)."""
        self._scrape_hooks.append(hook)

    def _run_hooks(self) -> None:
        for hook in self._scrape_hooks:
            try:
                hook()
            except Exception:  # noqa: BLE001 - a broken hook must not break the scrape
                self.scrape_errors += 1
                if self.scrape_errors == 1:
                    log.exception("metrics: a scrape hook failed (logged once)")

    def exposition(self) -> bytes:
        """The text exposition (``CONTENT_TYPE_LATEST``), after the scrape hooks."""
        self._run_hooks()
        return generate_latest(self.registry)

    def text(self) -> str:
        return self.exposition().decode()

    async def serve(self, listen: str, *, allow_remote: bool = False,
                    mode: int = 0o660) -> MetricsServer:
        """Start answering ``GET /metrics`` on ``listen`` (see ``parse_listen``).

        A unix socket gets ``mode``; a stale socket file is replaced, one another
        process is serving on is not.  Raises ``MetricsError``."""
        addr = parse_listen(listen, allow_remote=allow_remote)
        server = MetricsServer(self, addr, mode)
        await server.start()
        return server


class MetricsServer:
    """HTTP/1.1 just enough for a scraper: ``GET``/``HEAD`` of ``/metrics`` (and ``/``),
    one request per connection, ``Connection: close``."""

    def __init__(self, metrics: Metrics, addr: ListenAddress, mode: int = 0o660) -> None:
        self.metrics = metrics
        self.addr = addr
        self.mode = mode
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._active = 0
        self._inode: tuple[int, int] | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> str:
        """Where it listens, with the real port when 0 was asked for."""
        if self.addr.kind == "tcp" and self._server is not None and self._server.sockets:
            port = self._server.sockets[0].getsockname()[1]
            return str(ListenAddress("tcp", host=self.addr.host, port=port))
        return str(self.addr)

    @property
    def port(self) -> int:
        if self._server is not None and self._server.sockets and self.addr.kind == "tcp":
            return int(self._server.sockets[0].getsockname()[1])
        return self.addr.port

    async def start(self) -> None:
        a = self.addr
        try:
            if a.kind == "unix":
                self._prepare_unix(Path(a.path))
                self._server = await asyncio.start_unix_server(self._handle, path=a.path,
                                                               limit=MAX_REQUEST)
                os.chmod(a.path, self.mode)
                st = os.stat(a.path)
                self._inode = (st.st_dev, st.st_ino)
            else:
                self._server = await asyncio.start_server(self._handle, host=a.host,
                                                          port=a.port, limit=MAX_REQUEST,
                                                          reuse_address=True)
        except OSError as exc:
            if self._server is not None:
                self._server.close()
                self._server = None
            raise MetricsError(str(a), f"cannot listen: {exc}") from exc
        log.info("metrics: serving /metrics on %s", self.address)

    @staticmethod
    def _prepare_unix(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            try:
                probe.connect(str(path))
            except OSError:
                os.unlink(path)   # stale: nobody answers
                return
        raise OSError(f"{path}: another process is serving on it")

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._handlers):
            task.cancel()
        with contextlib.suppress(Exception):
            await server.wait_closed()
        if self.addr.kind == "unix" and self._inode is not None:
            with contextlib.suppress(OSError):
                st = os.stat(self.addr.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.addr.path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._active += 1
        try:
            if self._active > MAX_CONNECTIONS:
                return
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await self._answer(reader, writer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass
        except Exception:  # noqa: BLE001 - one bad request must not stop the listener
            log.exception("metrics: request failed")
        finally:
            self._active -= 1
            if task is not None:
                self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await _respond(writer, 400, "Bad Request", b"bad request\n")
            return
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            await _respond(writer, 405, "Method Not Allowed", b"GET only\n",
                           extra=[("Allow", "GET, HEAD")])
            return
        if path == "/metrics":
            self.requests += 1
            body = self.metrics.exposition()
            await _respond(writer, 200, "OK", body, content_type=CONTENT_TYPE_LATEST,
                           head_only=method == "HEAD")
        elif path == "/":
            await _respond(writer, 200, "OK", b"guardian: metrics at /metrics\n",
                           head_only=method == "HEAD")
        else:
            await _respond(writer, 404, "Not Found", b"not found; try /metrics\n",
                           head_only=method == "HEAD")


async def _respond(writer: asyncio.StreamWriter, code: int, phrase: str, body: bytes, *,
                   content_type: str = "text/plain; charset=utf-8",
                   extra: Iterable[tuple[str, str]] = (), head_only: bool = False) -> None:
    headers = [f"HTTP/1.1 {code} {phrase}", f"Content-Type: {content_type}",
               f"Content-Length: {len(body)}", "Connection: close"]
    headers += [f"{k}: {v}" for k, v in extra]
    writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(body)
    await writer.drain()
