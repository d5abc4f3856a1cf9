"""Tiny client probes used by the lab (readiness waits, smoke tests, outage clocks).

They run in whatever network namespace the calling thread is in: use them through
``Host.call`` / ``Host.executor`` to probe from a lab host. Each has a hard timeout.
"""

from __future__ import annotations

import http.client
import socket
import time
from dataclasses import dataclass

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype


class ProbeError(Exception):
    """The server answered, but not as expected."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: str


def http_get(host: str, path: str = "/", *, port: int = 80, timeout: float = 2.0) -> HttpResponse:
    """One HTTP/1.1 GET on a new connection (no keep-alive across calls)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read(1 << 20).decode("utf-8", "replace")
        return HttpResponse(resp.status, body)
    finally:
        conn.close()


def dns_query(
    server: str, qname: str, rdtype: str = "A", *, port: int = 53, timeout: float = 2.0
) -> list[str]:
    """Ask ``server`` over UDP; the answer's records as text. Raises on a non-NOERROR rcode."""
    query = dns.message.make_query(qname, dns.rdatatype.from_text(rdtype))
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        # A connected socket reports ICMP port unreachable (nothing listening) at once
        # as ConnectionRefusedError instead of waiting for the timeout.
        sock.connect((server, port))
        sock.setblocking(False)  # dnspython waits with select(); a blocking recv would hang
        answer = dns.query.udp(query, server, port=port, timeout=timeout, sock=sock)
    rcode = answer.rcode()
    if rcode != dns.rcode.NOERROR:
        raise ProbeError(f"{qname}/{rdtype} @{server}: {dns.rcode.to_text(rcode)}")
    return sorted(rr.to_text() for rrset in answer.answer for rr in rrset)


def smtp_banner(host: str, *, port: int = 25, timeout: float = 2.0) -> str:
    """The first line the SMTP server sends (its 220 greeting), then QUIT."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        data = b""
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no SMTP banner from {host}:{port} in {timeout:g} s")
            sock.settimeout(left)
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        try:
            sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
    return data.split(b"\n", 1)[0].decode("ascii", "replace").rstrip("\r")
