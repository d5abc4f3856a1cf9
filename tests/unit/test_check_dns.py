"""The dns check against a small real DNS server (UDP + TCP) on loopback."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from unit_helpers import build, free_port

from checks import CheckResult, ConfigError, Status, build_check
from checks.dns import DnsCheck

RunSync = Callable[[Any, float], CheckResult]

ZONE: dict[tuple[str, str], list[str]] = {
    ("www.example.test.", "A"): ["192.0.2.10", "192.0.2.11"],
    ("www.example.test.", "TXT"): ['"v=spf1 -all"'],
    ("alias.example.test.", "CNAME"): ["www.example.test."],
    ("example.test.", "MX"): ["10 mail.example.test."],
}

MODES = ("normal", "wrong", "nxdomain", "servfail", "noaa", "truncate", "silent", "wrong_id",
         "other_source")


class LoopbackDnsServer:
    """Answers from ``ZONE`` over UDP and TCP on one port; ``mode`` breaks it on purpose.

    ``tcp_broken`` makes TCP connections close without an answer.  ``queries``
    records (transport, qname, type, flags text) of every query received.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.mode = "normal"
        self.tcp_broken = False
        self.queries: list[tuple[str, str, str, str]] = []
        self._stop = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _ in range(50):  # find a port free for both UDP and TCP
            self.udp = socket.socket(family, socket.SOCK_DGRAM)
            self.udp.bind((host, 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(family, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind((host, self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        else:
            raise RuntimeError("no free port for the DNS test server")
        self.tcp.listen(8)
        self.stray = socket.socket(family, socket.SOCK_DGRAM)  # for "other_source"
        self.stray.bind((host, 0))
        self._threads = [
            threading.Thread(target=self._loop, args=(self.udp, self._udp_query), daemon=True),
            threading.Thread(target=self._loop, args=(self.tcp, self._tcp_accept), daemon=True)]
        for thread in self._threads:
            thread.start()

    # -- answering ------------------------------------------------------------
    def respond(self, wire: bytes, transport: str) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        qname = question.name.to_text()
        qtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((transport, qname, qtype, dns.flags.to_text(query.flags)))
        if self.mode == "silent":
            return None
        response = dns.message.make_response(query)
        if self.mode != "noaa":
            response.flags |= dns.flags.AA
        if self.mode == "truncate" and transport == "udp":
            response.flags |= dns.flags.TC
            return response.to_wire()
        if self.mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        if self.mode == "nxdomain":
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        self._fill(response, question.name, qtype)
        if self.mode == "wrong_id":
            response.id = (query.id + 1) % 65536
        return response.to_wire()

    def _fill(self, response: dns.message.Message, name: dns.name.Name, qtype: str) -> None:
        owner = name.to_text()
        for _ in range(8):
            texts = ZONE.get((owner, qtype))
            if texts is not None:
                if self.mode == "wrong" and qtype == "A":
                    texts = ["198.51.100.99"]
                response.answer.append(dns.rrset.from_text_list(owner, 300, "IN", qtype, texts))
                return
            alias = ZONE.get((owner, "CNAME"))
            if alias is None:
                break
            response.answer.append(dns.rrset.from_text_list(owner, 300, "IN", "CNAME", alias))
            owner = alias[0]
        if not response.answer and not any(key[0] == owner for key in ZONE):
            response.set_rcode(dns.rcode.NXDOMAIN)

    # -- transports ------------------------------------------------------------
    def _loop(self, sock: socket.socket, take: Callable[[], None]) -> None:
        """``take()`` whenever ``sock`` is readable, until close() (an OSError: closed)."""
        while not self._stop.is_set():
            ready, _, _ = select.select([sock], [], [], 0.05)
            if not ready:
                continue
            try:
                take()
            except OSError:
                return

    def _udp_query(self) -> None:
        wire, peer = self.udp.recvfrom(65535)
        reply = self.respond(wire, "udp")
        if reply is not None:
            sender = self.stray if self.mode == "other_source" else self.udp
            sender.sendto(reply, peer)

    def _tcp_accept(self) -> None:
        conn, _ = self.tcp.accept()
        threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def _tcp_conn(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                if self.tcp_broken:
                    return
                head = conn.recv(2, socket.MSG_WAITALL)
                if len(head) < 2:
                    return
                (length,) = struct.unpack("!H", head)
                wire = conn.recv(length, socket.MSG_WAITALL)
                reply = self.respond(wire, "tcp")
                if reply is None:
                    self._stop.wait(5)
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
                conn.recv(1)  # wait for the client to close
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        for sock in (self.udp, self.tcp, self.stray):
            sock.close()


@pytest.fixture
def ns() -> Iterator[LoopbackDnsServer]:
    server = LoopbackDnsServer()
    yield server
    server.close()


def dnscheck(server: LoopbackDnsServer, **options: Any) -> DnsCheck:
    return build("dns", DnsCheck, {"server": server.host, "port": server.port, **options},
                 "services.zone.checks[0]")


def test_exact_answer_ok(ns: LoopbackDnsServer, run_sync: RunSync) -> None:
    check = dnscheck(ns, qname="www.example.test", expect=["192.0.2.11", "192.0.2.10"],
                     require_aa=True)
    result = run_sync(check, 2.0)
    assert result.status is Status.OK, result.detail
    assert result.detail == (f"dns 127.0.0.1:{ns.port} www.example.test/A: "
                             "NOERROR, aa, 192.0.2.10, 192.0.2.11")
    assert result.perfdata == ("answers=2;;;0",)
    assert any(line.startswith("< id ") and "rcode NOERROR flags QR AA" in line
               for line in result.transcript)
    assert "< www.example.test. 300 IN A 192.0.2.10" in result.transcript
    assert ns.queries == [("udp", "www.example.test.", "A", "")]  # RD cleared by default


def test_exact_vs_subset(ns: LoopbackDnsServer, run_sync: RunSync) -> None:
    exact = run_sync(dnscheck(ns, qname="www.example.test", expect=["192.0.2.10"]), 2.0)
    assert exact.status is Status.CRITICAL
    assert exact.detail.endswith(
        "answered 192.0.2.10, 192.0.2.11, expected exactly 192.0.2.10")
    subset = dnscheck(ns, qname="www.example.test", expect=["192.0.2.10"], match="subset")
    assert run_sync(subset, 2.0).status is Status.OK


def test_wrong_data_is_critical(ns: LoopbackDnsServer, run_sync: RunSync) -> None:
    ns.mode = "wrong"
    result = run_sync(dnscheck(ns, qname="www.example.test", expect=["192.0.2.10"],
                               match="subset"), 2.0)
    assert result.status is Status.CRITICAL
    assert result.detail.endswith("answered 198.51.100.99, expected at least 192.0.2.10")


def test_any_answer_without_expect(ns: LoopbackDnsServer, run_sync: RunSync) -> None:
    assert run_sync(dnscheck(ns, qname="www.example.test"), 2.0).status is Status.OK
    nodata = run_sync(dnscheck(ns, qname="www.example.test", rdtype="AAAA"), 2.0)
    assert nodata.status is Status.CRITICAL
    assert nodata.detail.endswith("NOERROR but no AAAA records")


def test_nxdomain(ns: LoopbackDnsServer, run_sync: RunSync) -> None:
    missing = run_sync(dnscheck(ns, qname="nope.example.test"), 2.0)
    assert missing.status is Status.CRITICAL
    assert missing.detail.endswith("rcode NXDOMAIN (expected NOERROR)")
    wanted = dnscheck(ns, qname="nope.example.test", expect_rcode="nxdomain")
    assert run_sync(wanted, 2.0).status is Status.OK
    ns.mode = "nxdomain"
    assert run_sync(dnscheck(ns, qname="www.example.test"), 2.0).status is Status.CRITICAL


@pytest.mark.parametrize(("mode", "timeout", "says"), [
    ("servfail", 2.0, "rcode SERVFAIL"),
    ("wrong_id", 1.0, "does not match the query"),
    ("other_source", 1.0, "unexpected address"),   # an answer from another port
], ids=["servfail", "wrong_id", "other_source"])
def test_bad_answer_is_critical(ns: LoopbackDnsServer, run_sync: RunSync, mode: str,
                                timeout: float, says: str) -> None:
    ns.mode = mode
    result = run_sync(dnscheck(ns, qname="www.example.test"), timeout)
    assert result.status is Status.CRITICAL
    assert says in result.detail


def test_require_aa(ns: LoopbackDnsServer, run_sync: RunSync) -> None:
    ns.mode = "noaa"
    assert run_sync(dnscheck(ns, qname="www.example.test"), 2.0).status is Status.OK
    strict = run_sync(dnscheck(ns, qname="www.example.test", require_aa=True), 2.0)
    assert strict.status is Status.CRITICAL
    assert strict.detail.endswith("NOERROR but the answer is not authoritative")


def test_truncated_udp_retried_over_tcp(ns: LoopbackDnsServer, run_sync: RunSync) -> None:
    ns.mode = "truncate"
    result = run_sync(dnscheck(ns, qname="www.example.test",
                               expect=["192.0.2.10", "192.0.2.11"]), 2.0)
    assert result.status is Status.OK, result.detail
    assert "< truncated over UDP: asking again over TCP" in result.transcript
    assert [q[0] for q in ns.queries] == ["udp", "tcp"]


def test_truncated_and_tcp_broken(ns: LoopbackDnsServer, run_sync: RunSync) -> None:
    ns.mode = "truncate"
    ns.tcp_broken = True
    result = run_sync(dnscheck(ns, qname="www.example.test"), 2.0)
    assert result.status is Status.CRITICAL
    assert "server closed the TCP connection" in result.detail or \
        "connection reset" in result.detail


def test_tcp_transport(ns: LoopbackDnsServer, run_sync: RunSync) -> None:
    result = run_sync(dnscheck(ns, qname="www.example.test", transport="tcp"), 2.0)
    assert result.status is Status.OK
    assert [q[0] for q in ns.queries] == ["tcp"]


def test_recursion_desired(ns: LoopbackDnsServer, run_sync: RunSync) -> None:
    run_sync(dnscheck(ns, qname="www.example.test", recursion_desired=True), 2.0)
    assert ns.queries[-1][3] == "RD"


def test_silent_server_critical_by_deadline(ns: LoopbackDnsServer, run_sync: RunSync) -> None:
    ns.mode = "silent"
    started = time.monotonic()
    result = run_sync(dnscheck(ns, qname="www.example.test"), 0.5)
    assert time.monotonic() - started < 0.5 + 0.5
    assert result.status is Status.CRITICAL
    assert "timed out" in result.detail


def test_cname_chain_followed(ns: LoopbackDnsServer, run_sync: RunSync) -> None:
    check = dnscheck(ns, qname="alias.example.test", expect=["192.0.2.10", "192.0.2.11"])
    result = run_sync(check, 2.0)
    assert result.status is Status.OK, result.detail
    assert "< alias.example.test. 300 IN CNAME www.example.test." in result.transcript


def test_other_types(ns: LoopbackDnsServer, run_sync: RunSync) -> None:
    mx = dnscheck(ns, qname="example.test", rdtype="mx", expect=["10 MAIL.example.test"])
    assert run_sync(mx, 2.0).status is Status.OK
    txt = dnscheck(ns, qname="www.example.test", rdtype="TXT", expect=['"v=spf1 -all"'])
    assert run_sync(txt, 2.0).status is Status.OK
    wrong_mx = dnscheck(ns, qname="example.test", rdtype="MX", expect=["20 mail.example.test"])
    assert run_sync(wrong_mx, 2.0).status is Status.CRITICAL


def test_tcp_refused(run_sync: RunSync) -> None:
    port = free_port()
    check = build_check("dns", {"server": "127.0.0.1", "port": port, "qname": "x.test",
                                "transport": "tcp"})
    result = run_sync(check, 1.0)
    assert result.status is Status.CRITICAL
    assert result.detail == f"dns 127.0.0.1:{port} x.test/A: connection refused"


def test_ipv6_loopback(run_sync: RunSync) -> None:
    try:
        server = LoopbackDnsServer("::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        check = dnscheck(server, qname="www.example.test", expect=["192.0.2.10", "192.0.2.11"])
        assert check.describe() == f"dns [::1]:{server.port} www.example.test/A"
        assert run_sync(check, 2.0).status is Status.OK
    finally:
        server.close()


def test_describe_default_port() -> None:
    check = build_check("dns", {"server": "192.0.2.53", "qname": "example.test.",
                                "rdtype": "SOA"})
    assert check.describe() == "dns 192.0.2.53 example.test/SOA"


@pytest.mark.parametrize(("options", "message"), [
    ({"server": "ns1.example.test", "qname": "a.test"},
     "checks[0].server: 'ns1.example.test' is not an IP address"),
    ({"server": "127.0.0.1"}, "checks[0].qname: is required"),
    ({"server": "127.0.0.1", "qname": "a.test", "rdtype": "BOGUS"},
     "checks[0].rdtype: 'BOGUS' is not a record type"),
    ({"server": "127.0.0.1", "qname": "a.test", "expect": ["not-an-address"]},
     "checks[0].expect: 'not-an-address' is not A data"),
    ({"server": "127.0.0.1", "qname": "a.test", "expect_rcode": "NOPE"},
     "checks[0].expect_rcode: 'NOPE' is not an rcode"),
    ({"server": "127.0.0.1", "qname": "a.test", "port": 0}, "checks[0].port: 0 is below"),
    ({"server": "127.0.0.1", "qname": "a.test", "transport": "doh"},
     "checks[0].transport: 'doh' is not one of udp, tcp"),
    ({"server": "127.0.0.1", "qname": "a.test", "require_AA": True},
     "checks[0].require_AA: unknown key"),
])
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_check("dns", options, path="services.zone.checks[0]", source="guardian.toml")
    assert str(info.value).startswith("guardian.toml: services.zone.")
    assert message in str(info.value)


def test_defaults() -> None:
    check = build_check("dns", {"server": "127.0.0.1", "qname": "a.test"})
    assert isinstance(check, DnsCheck)
    assert (check.port, check.rdtype, check.match, check.expect_rcode, check.transport,
            check.require_aa, check.recursion_desired) == (
        53, dns.rdatatype.A, "exact", dns.rcode.NOERROR, "udp", False, False)
