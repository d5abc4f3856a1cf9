"""guardian.hostd over HTTP: a real server on 127.0.0.1, a real client (http.client)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from guardian.hostd import (
    DomainState,
    Hostd,
    HostdSpec,
    PolicySpec,
    Reply,
    VMSpec,
    build,
    sign,
)
from ipfailover._wire import KeyRing

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
POST = "/v1/escalations"


class SlowDriver:
    """Dies 0.05 s after destroy; thread-safe enough for one action at a time."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.current = DomainState.RUNNING
        self._dead_at = 0.0

    def state(self) -> DomainState:
        self.calls.append("state")
        if self.current is DomainState.DYING and time.monotonic() >= self._dead_at:
            self.current = DomainState.ABSENT
        return self.current

    def destroy(self) -> None:
        self.calls.append("destroy")
        self.current = DomainState.DYING
        self._dead_at = time.monotonic() + 0.05

    def create(self) -> None:
        self.calls.append("create")
        self.current = DomainState.RUNNING


@dataclass
class Served:
    hostd: Hostd
    port: int
    drivers: dict[str, SlowDriver]
    loop: asyncio.AbstractEventLoop

    def request(self, method: str, path: str, body: bytes = b"", *, key: bytes = K1,
                key_id: int = 1, headers: dict[str, str] | None = None,
                signed: bool = True) -> tuple[int, dict[str, Any], dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            h = {"Content-Type": "application/json"}
            if signed:
                h.update(sign(key_id, key, method, path, body))
            h.update(headers or {})
            conn.request(method, path, body=body if method == "POST" else None, headers=h)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data), dict(resp.getheaders())
        finally:
            conn.close()

    def wait_state(self, rid: str, want: str, timeout: float = 5.0, *,
                   key: bytes = K1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status, body, _ = self.request("GET", f"{POST}/{rid}", key=key)
            assert status == 200, body
            if body["state"] == want or time.monotonic() > deadline:
                return body
            time.sleep(0.02)


def vm(name: str, key: bytes) -> VMSpec:
    return VMSpec(name=name, uuid=f"uuid-{name}", key_file=Path("/nonexistent"),
                  driver="command", domain=name, keys=KeyRing({1: key}),
                  peer={"web1": "web2", "web2": "web1"}.get(name))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    spec = HostdSpec(source="test", host="127.0.0.1", port=0, state_dir=tmp_path,
                     journal_dir=tmp_path,
                     policy=PolicySpec(min_interval=600, max_actions=3, confirm_timeout=2),
                     vms={"web1": vm("web1", K1), "web2": vm("web2", K2)})
    drivers = {"web1": SlowDriver(), "web2": SlowDriver()}
    hostd = build(spec, drivers=drivers, poll_interval=0.01)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []

    async def main() -> None:
        _, p = await hostd.server.start("127.0.0.1", 0)
        port.append(p)
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(main(), loop).result(5)
    assert started.wait(5)
    try:
        yield Served(hostd, port[0], drivers, loop)
    finally:
        asyncio.run_coroutine_threadsafe(hostd.server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        hostd.journal.close()


def body(vm: str = "web1", rid: str | None = None, **over: Any) -> bytes:
    data: dict[str, Any] = {
        "request_id": rid or str(uuid.uuid4()), "vm": vm, "vm_uuid": f"uuid-{vm}",
        "incarnation": 0, "action": "recreate", "peer": None,
        "reason": {"service": "apache2", "verdicts": "CRITICAL x3", "restarts": 5,
                   "detail": "x"},
        "sent_at": time.time(),
    }
    data.update(over)
    return json.dumps(data).encode()


def test_recreate_end_to_end(served: Served) -> None:
    rid = str(uuid.uuid4())
    status, reply, _ = served.request("POST", POST, body(rid=rid))
    assert status == 202, reply
    assert reply["request_id"] == rid and reply["state"] == "accepted"
    assert set(reply) >= {"request_id", "state", "detail", "decision"}
    final = served.wait_state(rid, "done")
    assert final["state"] == "done" and final["incarnation"] == 1
    assert served.drivers["web1"].calls[0] == "destroy"
    assert served.drivers["web1"].calls[-1] == "create"
    # idempotent: same id again -> its state, no second action
    status, again, _ = served.request("POST", POST, body(rid=rid))
    assert status == 202 and again["state"] == "done"
    assert served.drivers["web1"].calls.count("destroy") == 1
    # the old incarnation is stale now
    status, stale, _ = served.request("POST", POST, body())
    assert status == 409 and stale["error"] == "stale incarnation"
    # a fresh one from the new incarnation is rate-limited
    status, limited, headers = served.request("POST", POST, body(incarnation=1))
    assert status == 429 and limited["retry_after"] > 500
    assert headers["Retry-After"] == str(limited["retry_after"])
    journal = (served.hostd.spec.journal_dir / "journal.jsonl").read_text().splitlines()
    decisions = [json.loads(line)["decision"] for line in journal]
    assert decisions == ["accepted", "finished", "stale", "rate-limited"]


def test_auth_failures_are_401(served: Served) -> None:
    b = body()
    assert served.request("POST", POST, b, signed=False)[0] == 401
    assert served.request("POST", POST, b, key=K2)[0] == 401  # web2's key, body says web1
    assert served.request("POST", POST, b, key=bytes(32))[0] == 401
    assert served.request("POST", POST, b, key_id=5)[0] == 401
    old = sign(1, K1, "POST", POST, b, now=time.time() - 120)
    assert served.request("POST", POST, b, headers=old, signed=False)[0] == 401
    h = sign(1, K1, "POST", POST, b)
    assert served.request("POST", POST, b, headers=h, signed=False)[0] == 202
    status, reply, _ = served.request("POST", POST, b, headers=h, signed=False)  # replay
    assert status == 401 and "error" in reply
    assert served.hostd.engine.counters["auth_failures"] >= 5
    assert served.drivers["web2"].calls == []


def test_status_queries(served: Served) -> None:
    assert served.request("GET", f"{POST}/{uuid.uuid4()}")[0] == 404
    rid = str(uuid.uuid4())
    served.request("POST", POST, body(rid=rid))
    assert served.request("GET", f"{POST}/{rid}")[0] == 200
    # web2 may not see web1's request
    assert served.request("GET", f"{POST}/{rid}", key=K2)[0] == 404
    served.wait_state(rid, "done")


def test_fence_peer_over_http(served: Served) -> None:
    rid = str(uuid.uuid4())
    status, _, _ = served.request("POST", POST, body(rid=rid, action="fence-peer", peer="web2"))
    assert status == 202
    assert served.wait_state(rid, "done")["state"] == "done"
    assert served.drivers["web2"].calls[0] == "destroy"
    assert "create" not in served.drivers["web2"].calls
    assert served.drivers["web1"].calls == []


def raw(port: int, data: bytes, *, shut: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"garbage\r\n\r\n", b"400"),
        (b"\x00\xff\xfe\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\n\r\n", b"404"),
        (b"GET /v1/escalations HTTP/1.1\r\n\r\n", b"405"),
        (b"POST /v1/escalations HTTP/1.1\r\nContent-Length: 999999\r\n\r\n", b"413"),
        (b"POST /v1/escalations HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b"400"),
        (b"POST /v1/escalations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"411"),
        (b"POST /v1/escalations HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
        (b"POST /v1/escalations HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"\r\n", b"431"),
        (b"POST /v1/escalations HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}", b""),
        (b"POST /v1/escalations HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", b"401"),
    ],
)
def test_garbage_never_crashes(served: Served, data: bytes, status: bytes) -> None:
    out = raw(served.port, data)
    if status:
        assert out.startswith(b"HTTP/1.1 " + status), out[:200]
    else:
        assert out == b""  # the client hung up mid-body: dropped, no reply
    # and the server still answers properly
    assert served.request("GET", f"{POST}/{uuid.uuid4()}")[0] == 404


def test_signed_malformed_body_is_400(served: Served) -> None:
    status, reply, _ = served.request("POST", POST, b"{not json")
    assert status == 400 and "error" in reply
    status, reply, _ = served.request("POST", POST, body(action="reboot"))
    assert status == 400


def test_slow_client_times_out(served: Served) -> None:
    served.hostd.server.read_timeout = 0.2
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"POST /v1/escalations HTTP/1.1\r\n")
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 400")
    assert served.hostd.engine.counters["timeouts"] == 1


# ------------------------------------------------------------- fairness under a flood

FLOOD_IP = "127.0.0.2"  # the flooding guest; the well-behaved one is 127.0.0.1


def flood_socket(port: int, data: bytes) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    s.bind((FLOOD_IP, 0))
    s.connect(("127.0.0.1", port))
    if data:
        s.sendall(data)
    return s


def test_flood_from_one_guest_does_not_delay_another(served: Served) -> None:
    """Hundreds of connections from one address: slowloris, garbage, and signed
    requests as fast as it can; another VM's valid request still gets its 202
    promptly."""
    port = served.port
    stop = threading.Event()
    sent = [0]

    def spam() -> None:
        kinds = [b"garbage\r\n\r\n", b"POST /v1/escalations HTTP/1.1\r\nContent-Length: 5\r\n"]
        while not stop.is_set():
            b = body("web1")
            h = sign(1, K1, "POST", POST, b)
            head = "".join(f"{k}: {v}\r\n" for k, v in h.items())
            signed = (f"POST {POST} HTTP/1.1\r\n{head}Content-Length: {len(b)}\r\n\r\n"
                      .encode() + b)
            for data in (*kinds, signed):
                try:
                    with flood_socket(port, data) as s:
                        s.recv(100)
                except OSError:
                    pass
                sent[0] += 1

    slow: list[socket.socket] = []
    threads = [threading.Thread(target=spam, daemon=True) for _ in range(4)]
    try:
        for _ in range(300):  # slowloris: a request line, then nothing
            try:
                slow.append(flood_socket(port, b"POST /v1/escalations HTTP/1.1\r\nX-"))
            except OSError:
                pass
        for t in threads:
            t.start()
        time.sleep(0.2)
        for _ in range(3):
            t0 = time.monotonic()
            status, reply, _ = served.request("POST", POST, body("web2"), key=K2)
            elapsed = time.monotonic() - t0
            assert status in (202, 429), reply
            assert elapsed < 1.0, elapsed
            if status == 202:
                break
        assert status == 202 and reply["state"] == "accepted", reply
        # a status query is answered promptly too
        t0 = time.monotonic()
        assert served.request("GET", f"{POST}/{reply['request_id']}", key=K2)[0] == 200
        assert time.monotonic() - t0 < 1.0
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for s in slow:
            s.close()
    counters = served.hostd.engine.counters
    assert counters["connections_per_ip_limited"] >= 250, counters
    assert sent[0] > 10
    assert served.hostd.server._per_ip.get(FLOOD_IP, 0) <= served.hostd.server.max_per_ip


def test_global_connection_cap(served: Served) -> None:
    server = served.hostd.server
    server.max_connections = 3
    server.max_per_ip = 100
    held = [flood_socket(served.port, b"POST /v1") for _ in range(3)]
    try:
        deadline = time.monotonic() + 5
        while server._connections < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
            # refused before anything is read: the answer comes without a request
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        assert out.startswith(b"HTTP/1.1 429"), out
        assert b"Retry-After: 1" in out
        assert served.hostd.engine.counters["connections_over_limit"] == 1
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while server._connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served.request("GET", f"{POST}/{uuid.uuid4()}")[0] == 404


def test_per_sender_requests_in_flight(served: Served) -> None:
    engine = served.hostd.engine
    real_submit = engine.submit
    gate = threading.Event()

    def slow_submit(sender: str, body: bytes) -> tuple[Reply, str | None]:
        if sender == "web1":
            gate.wait(5)
        return real_submit(sender, body)

    engine.submit = slow_submit  # type: ignore[method-assign]
    results: list[int] = []

    def post() -> None:
        results.append(served.request("POST", POST, body("web1"))[0])

    threads = [threading.Thread(target=post) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while engine.counters.get("sender_limited", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.counters["sender_limited"] == 1
        # web1 has two requests stuck in the engine; web2 is not held up
        t0 = time.monotonic()
        status, reply, _ = served.request("POST", POST, body("web2"), key=K2)
        assert status == 202 and time.monotonic() - t0 < 1.0, reply
    finally:
        gate.set()
        for t in threads:
            t.join(10)
    assert sorted(results) == [202, 429, 429]  # one accepted, one rate-limited, one limited
    assert served.wait_state(reply["request_id"], "done", key=K2)["state"] == "done"
