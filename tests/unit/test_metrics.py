"""guardian's Prometheus metrics: the families, what a scripted incident leaves in
them (parsed back with prometheus_client's own text parser), and the listener over
real loopback TCP and unix sockets."""

from __future__ import annotations

import asyncio
import http.client
import os
import random
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from checks import CheckResult, Status
from guardian import Machine
from guardian._journal import Journal
from guardian._machine import Input, RestartFinished, UnitDown, Verdict
from guardian._metrics import (
    FAILOVER_PHASES,
    ListenAddress,
    Metrics,
    MetricsError,
    parse_listen,
)
from guardian._timeline import PairTracker, ServiceTracker
from ipfailover._machine import Notice, StateChange, TakeVIPs
from ipfailover._states import PairState

FAMILIES = {
    # name as the parser reports it (counters without _total): type
    "guardian_build_info": "gauge",
    "guardian_probe_duration_seconds": "histogram",
    "guardian_verdicts": "counter",
    "guardian_restarts": "counter",
    "guardian_ladder_rungs": "counter",
    "guardian_service_state": "gauge",
    "guardian_incident_phase_seconds": "histogram",
    "guardian_pair_role": "gauge",
    "guardian_heartbeat_age_seconds": "gauge",
    "guardian_dropped_packets": "counter",
    "guardian_failover_phase_seconds": "histogram",
    "guardian_escalations": "counter",
    "guardian_hostd_decisions": "counter",
    "guardian_hostd_events": "counter",
    "guardian_journal_records": "counter",
    "guardian_journal_write_errors": "counter",
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` through the Prometheus text parser."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def test_every_family_is_defined_and_documented() -> None:
    m = Metrics(version="1.2.3")
    m.observe_probe("web", "http", "http", CheckResult(Status.OK, "200", duration=0.004))
    for method, args in [("restart", ("web", True)), ("ladder", ("web", "alert")),
                         ("state", ("web", "up")), ("pair_role", ("vip", "master")),
                         ("heartbeat_age", ("vip", 0, 0.05)), ("drop", ("vip", "bad-mac")),
                         ("failover_phase", ("vip", "detection", 0.15)),
                         ("escalation", ("sent",)), ("hostd_decision", ("recreate",)),
                         ("hostd_counts", ({"auth_failures": 1},))]:
        getattr(m, method)(*args)
    fams = {f.name: f.type for f in text_string_to_metric_families(m.text())}
    assert {k: fams.get(k) for k in FAMILIES} == FAMILIES
    assert all(name.startswith("guardian_") for name in fams)
    doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    for name, kind in FAMILIES.items():
        full = name + "_total" if kind == "counter" else name
        assert f"`{full}`" in doc, f"{full} is not in docs/metrics.md"
    assert value(m.text(), "guardian_build_info", version="1.2.3") == 1


def test_a_private_registry() -> None:
    from prometheus_client import REGISTRY

    a, b = Metrics(), Metrics()             # would raise "Duplicated timeseries" if shared
    a.restart("web", True)
    assert "guardian_restarts_total{" in a.text()
    assert "guardian_restarts_total{" not in b.text()
    assert REGISTRY.get_sample_value("guardian_restarts_total",
                                     {"service": "web", "result": "ok"}) is None


def test_probe_histogram_and_verdicts() -> None:
    m = Metrics()
    for d, st in [(0.0008, Status.OK), (0.003, Status.OK), (0.7, Status.CRITICAL),
                  (12.0, Status.UNKNOWN)]:
        m.observe_probe("web", "http", "http", CheckResult(st, "x", duration=d))
    t = m.text()
    lab = {"service": "web", "check": "http", "type": "http"}
    assert value(t, "guardian_probe_duration_seconds_bucket", le="0.001", **lab) == 1
    assert value(t, "guardian_probe_duration_seconds_bucket", le="0.005", **lab) == 2
    assert value(t, "guardian_probe_duration_seconds_bucket", le="10.0", **lab) == 3
    assert value(t, "guardian_probe_duration_seconds_bucket", le="+Inf", **lab) == 4
    assert value(t, "guardian_probe_duration_seconds_count", **lab) == 4
    vl = {"service": "web", "check": "http"}
    assert value(t, "guardian_verdicts_total", status="OK", **vl) == 2
    assert value(t, "guardian_verdicts_total", status="CRITICAL", **vl) == 1
    assert value(t, "guardian_verdicts_total", status="UNKNOWN", **vl) == 1


def test_state_and_role_are_one_hot() -> None:
    m = Metrics()
    m.state("web", "up")
    m.state("web", "restarting")
    m.pair_role("vip", "backup")
    m.pair_role("vip", "master")
    t = m.text()
    states = {dict(k[1])["state"]: v for k, v in samples(t).items()
              if k[0] == "guardian_service_state"}
    assert states["restarting"] == 1 and sum(states.values()) == 1 and len(states) == 8
    roles = {dict(k[1])["role"]: v for k, v in samples(t).items() if k[0] == "guardian_pair_role"}
    assert roles == {"init": 0, "backup": 0, "master": 1, "fault": 0, "stopped": 0}
    m.forget_service("web")
    assert "guardian_service_state{" not in m.text()


def test_pair_status_heartbeat_ages_and_drop_totals() -> None:
    m = Metrics()
    status: dict[str, Any] = {
        "state": "backup",
        "paths": [{"index": 0, "heard_age": 0.042}, {"index": 1, "heard_age": None}],
        "drops": {"bad-mac": 3, "replay": 1},
    }
    m.on_scrape(lambda: m.pair_status("vip", status))
    t = m.text()
    assert value(t, "guardian_heartbeat_age_seconds", group="vip", path="0") == 0.042
    assert ("guardian_heartbeat_age_seconds", (("group", "vip"), ("path", "1"))) not in samples(t)
    assert value(t, "guardian_pair_role", group="vip", role="backup") == 1
    assert value(t, "guardian_dropped_packets_total", group="vip", reason="bad-mac") == 3
    status["drops"] = {"bad-mac": 5, "replay": 1}
    status["paths"][0]["heard_age"] = 0.5
    t = m.text()
    assert value(t, "guardian_dropped_packets_total", group="vip", reason="bad-mac") == 5
    assert value(t, "guardian_dropped_packets_total", group="vip", reason="replay") == 1
    assert value(t, "guardian_heartbeat_age_seconds", group="vip", path="0") == 0.5
    status["drops"] = {"bad-mac": 2}        # the endpoint was recreated: counts restart
    assert value(m.text(), "guardian_dropped_packets_total", group="vip", reason="bad-mac") == 7


def test_a_failing_scrape_hook_does_not_break_the_scrape() -> None:
    m = Metrics()

    def broken() -> None:
        raise RuntimeError("boom")

    m.on_scrape(broken)
    m.restart("web", False)
    assert value(m.text(), "guardian_restarts_total", service="web", result="failed") == 1
    assert m.scrape_errors == 1


def test_unknown_failover_phase_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown failover phase"):
        Metrics().failover_phase("vip", "lunch", 1.0)
    assert FAILOVER_PHASES == ("detection", "vip_configured", "first_announcement",
                               "convergence")


# ------------------------------------------------------------ a scripted incident


def test_a_scripted_incident_shows_in_the_counters(tmp_path: Path) -> None:
    from test_journal import OK, Clock, service_spec

    clock = Clock(0.0)
    metrics = Metrics()
    j = Journal(tmp_path, clock=clock, wall_clock=clock.wall, boot="b")
    metrics.watch_journal(j)
    tracker = ServiceTracker("web", j, metrics)
    machine = Machine(service_spec(), 0.0, rng=random.Random(1))

    def at(t: float, item: Input) -> None:
        clock.t = t
        before = machine.state
        tracker.feed(item, before, machine.transition(item, t), t)
        if isinstance(item, Verdict):
            metrics.observe_probe("web", item.check, "http",
                                  CheckResult(item.status, item.detail, duration=0.002))

    at(1.0, OK)
    at(1.1, OK)
    at(20.0, UnitDown("process 4242 exited"))        # SIGKILL apache2
    at(20.03, RestartFinished(True, "restarted"))
    at(20.1, OK)
    at(20.2, OK)
    t = metrics.text()
    assert value(t, "guardian_restarts_total", service="web", result="ok") == 1
    assert value(t, "guardian_service_state", service="web", state="up") == 1
    assert value(t, "guardian_service_state", service="web", state="restarting") == 0
    assert value(t, "guardian_verdicts_total", service="web", check="http", status="OK") == 4
    assert value(t, "guardian_incident_phase_seconds_count", service="web", phase="total") == 1
    assert value(t, "guardian_incident_phase_seconds_sum", service="web",
                 phase="total") == pytest.approx(0.1)
    assert value(t, "guardian_incident_phase_seconds_sum", service="web",
                 phase="act") == pytest.approx(0.03)
    assert value(t, "guardian_journal_records_total") == j.records_written > 5
    tracker.escalation(30.0, "sent", "to dom0")
    assert value(metrics.text(), "guardian_escalations_total", outcome="sent") == 1


def test_a_takeover_shows_in_the_failover_histograms(tmp_path: Path) -> None:
    metrics = Metrics()
    j = Journal(tmp_path, boot="b")
    t = PairTracker("vip", j, metrics)
    t.feed([StateChange(PairState.INIT, PairState.BACKUP, "peer is master")], 1.0)
    t.feed([Notice("suspect", "silent")], 100.0)
    t.feed([Notice("peer-dead", "probes unanswered"), TakeVIPs("peer dead"),
            StateChange(PairState.BACKUP, PairState.MASTER, "peer dead")], 100.06)
    t.vips_configured(100.062)
    t.announced(100.063)
    text = metrics.text()
    g = {"group": "vip"}
    for phase, secs in [("detection", 0.06), ("vip_configured", 0.002),
                        ("first_announcement", 0.003)]:
        assert value(text, "guardian_failover_phase_seconds_count", phase=phase, **g) == 1
        assert value(text, "guardian_failover_phase_seconds_sum", phase=phase,
                     **g) == pytest.approx(secs)
    assert ("guardian_failover_phase_seconds_count",
            (("group", "vip"), ("phase", "convergence"))) not in samples(text)
    assert value(text, "guardian_pair_role", role="master", **g) == 1


# ------------------------------------------------------------ the listener


@pytest.mark.parametrize("listen,expect", [
    ("127.0.0.1:9817", ListenAddress("tcp", host="127.0.0.1", port=9817)),
    ("localhost:9817", ListenAddress("tcp", host="127.0.0.1", port=9817)),
    ("[::1]:9817", ListenAddress("tcp", host="::1", port=9817)),
    ("9817", ListenAddress("tcp", host="127.0.0.1", port=9817)),
    ("127.0.0.53:0", ListenAddress("tcp", host="127.0.0.53", port=0)),
    ("unix:/run/guardian/metrics.sock", ListenAddress("unix", path="/run/guardian/metrics.sock")),
])
def test_parse_listen(listen: str, expect: ListenAddress) -> None:
    assert parse_listen(listen) == expect


@pytest.mark.parametrize("listen,message", [
    ("0.0.0.0:9817", "not a loopback address"),
    (":9817", "all addresses"),
    ("192.0.2.10:9817", "not a loopback address"),
    ("metrics.example:9817", "not a loopback address"),
    ("127.0.0.1:http", "not a number"),
    ("127.0.0.1:70000", "out of range"),
    ("unix:relative.sock", "absolute path"),
    ("[::1]9817", "[IPv6]:PORT"),
    ("nothing", "expected HOST:PORT"),
])
def test_parse_listen_refuses(listen: str, message: str) -> None:
    with pytest.raises(MetricsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_listen(listen)


def test_remote_listen_only_when_allowed() -> None:
    assert parse_listen("0.0.0.0:9817", allow_remote=True).host == "0.0.0.0"
    assert parse_listen("192.0.2.10:9817", allow_remote=True).port == 9817


def http_get(port: int, path: str = "/metrics", method: str = "GET") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


def unix_get(path: str, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(request)
        chunks: list[bytes] = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def test_serves_over_tcp_loopback() -> None:
    async def main() -> None:
        m = Metrics()
        m.restart("web", True)
        server = await m.serve("127.0.0.1:0")
        try:
            assert server.port > 0 and server.address == f"127.0.0.1:{server.port}"
            code, ctype, body = await asyncio.to_thread(http_get, server.port)
            assert code == 200 and ctype == CONTENT_TYPE_LATEST
            assert value(body, "guardian_restarts_total", service="web", result="ok") == 1
            code, _, body = await asyncio.to_thread(http_get, server.port, "/metrics", "HEAD")
            assert code == 200 and body == ""
            code, _, _ = await asyncio.to_thread(http_get, server.port, "/nope")
            assert code == 404
            code, _, _ = await asyncio.to_thread(http_get, server.port, "/metrics", "POST")
            assert code == 405
            code, _, body = await asyncio.to_thread(http_get, server.port, "/")
            assert code == 200 and "/metrics" in body
            assert server.requests == 2
        finally:
            await server.close()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.to_thread(http_get, server.port)

    asyncio.run(main())


def test_serves_over_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def main() -> None:
        m = Metrics()
        try:
            server = await m.serve("[::1]:0")
        except MetricsError as exc:
            pytest.skip(f"no ::1 here: {exc}")
        try:
            def get() -> int:
                conn = http.client.HTTPConnection("::1", server.port, timeout=5)
                conn.request("GET", "/metrics")
                status = conn.getresponse().status
                conn.close()
                return status

            assert await asyncio.to_thread(get) == 200
        finally:
            await server.close()

    asyncio.run(main())


def test_serves_over_a_unix_socket(short_dir: Path) -> None:
    path = str(short_dir / "run" / "metrics.sock")

    async def main() -> None:
        m = Metrics()
        m.drop("vip", "replay", 2)
        server = await m.serve(f"unix:{path}")
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
            raw = await asyncio.to_thread(
                unix_get, path, b"GET /metrics HTTP/1.1\r\nHost: guardian\r\n\r\n")
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert f"Content-Type: {CONTENT_TYPE_LATEST}".encode() in head
            assert b"Connection: close" in head
            assert value(body.decode(), "guardian_dropped_packets_total", group="vip",
                         reason="replay") == 2
            garbage = await asyncio.to_thread(unix_get, path, b"HELLO\r\n\r\n")
            assert garbage.startswith(b"HTTP/1.1 400 ")
            # a second daemon must not steal a live socket
            with pytest.raises(MetricsError, match="another process is serving"):
                await Metrics().serve(f"unix:{path}")
        finally:
            await server.close()
        assert not os.path.exists(path)

    asyncio.run(main())


def test_a_stale_unix_socket_is_replaced(short_dir: Path) -> None:
    path = str(short_dir / "metrics.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()                     # the file stays; nobody listens

    async def main() -> None:
        server = await Metrics().serve(f"unix:{path}", mode=0o600)
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            raw = await asyncio.to_thread(unix_get, path, b"GET /metrics HTTP/1.0\r\n\r\n")
            assert raw.startswith(b"HTTP/1.1 200 OK")
        finally:
            await server.close()

    asyncio.run(main())


def test_a_regular_file_is_not_replaced(short_dir: Path) -> None:
    path = short_dir / "metrics.sock"
    path.write_text("precious")

    async def main() -> None:
        with pytest.raises(MetricsError, match="not a socket"):
            await Metrics().serve(f"unix:{path}")

    asyncio.run(main())
    assert path.read_text() == "precious"


def test_refuses_remote_and_maps_bind_errors() -> None:
    async def main() -> None:
        m = Metrics()
        with pytest.raises(MetricsError, match="not a loopback address"):
            await m.serve("0.0.0.0:0")
        server = await m.serve("127.0.0.1:0")
        try:
            with pytest.raises(MetricsError, match="cannot listen"):
                await Metrics().serve(f"127.0.0.1:{server.port}")
        finally:
            await server.close()

    asyncio.run(main())


def test_a_slow_client_does_not_block_a_scrape() -> None:
    async def main() -> None:
        m = Metrics()
        server = await m.serve("127.0.0.1:0")
        try:
            idle = socket.create_connection(("127.0.0.1", server.port))   # says nothing
            try:
                code, _, _ = await asyncio.to_thread(http_get, server.port)
                assert code == 200
            finally:
                idle.close()
        finally:
            await server.close()

    asyncio.run(main())
