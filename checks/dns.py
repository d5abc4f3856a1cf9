"""DNS probe: one query straight to the configured server with dnspython.

No resolver and no fallback to another server: ``dns.query.udp`` / ``tcp``
against the address given, the timeout being what remains of the deadline.
dnspython checks that the answer matches the query (id and question) and, for
UDP, that it came from the address asked.  A truncated UDP answer is asked
again over TCP within the same deadline.  The UDP socket asks the kernel for
ICMP errors (``IP_RECVERR``), so a server whose port is closed (named stopped)
is "connection refused" at once, as nslookup and dig see it, not a timeout.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ._base import BlockingCheck, remaining
from ._net import describe_oserror, oserror_status
from ._options import Options
from ._result import CheckResult, Status

_MAX_TRANSCRIPT_RRS = 20
# Linux values; Python 3.11's socket module does not name them.
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)


def _udp_socket(server: str) -> socket.socket:
    """A non-blocking, unconnected UDP socket for ``server``'s address family that
    reports ICMP errors (port unreachable -> ECONNREFUSED) on Linux.

    Unconnected, so dnspython still sees (and rejects) an answer from another
    address; without IP_RECVERR the kernel drops the ICMP error of such a socket
    and the probe would wait for its whole timeout."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    if sys.platform.startswith("linux"):
        level, option = ((socket.IPPROTO_IPV6, _IPV6_RECVERR) if family == socket.AF_INET6
                         else (socket.IPPROTO_IP, _IP_RECVERR))
        with contextlib.suppress(OSError):
            sock.setsockopt(level, option, 1)
    return sock


def _ip_address(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address (no resolver is used)") from None


def _qname(value: object) -> dns.name.Name:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    try:
        return dns.name.from_text(value)
    except dns.exception.DNSException as exc:
        raise ValueError(f"{value!r} is not a domain name ({exc})") from None


def _rdtype(value: object) -> dns.rdatatype.RdataType:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    try:
        return dns.rdatatype.RdataType(dns.rdatatype.from_text(value.upper()))
    except dns.exception.DNSException:
        raise ValueError(f"{value!r} is not a record type") from None


def _rcode(value: object) -> dns.rcode.Rcode:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    try:
        return dns.rcode.Rcode(dns.rcode.from_text(value.upper()))
    except dns.exception.DNSException:
        raise ValueError(f"{value!r} is not an rcode (NOERROR, NXDOMAIN, ...)") from None


class DnsCheck(BlockingCheck):
    """Ask one server one question; judge rcode, AA flag and answer data."""

    kind = "dns"

    def __init__(self, server: str, qname: dns.name.Name, *, port: int = 53,
                 rdtype: dns.rdatatype.RdataType = dns.rdatatype.A,
                 expect: tuple[dns.rdata.Rdata, ...] = (), match: str = "exact",
                 expect_rcode: dns.rcode.Rcode = dns.rcode.NOERROR, transport: str = "udp",
                 require_aa: bool = False, recursion_desired: bool = False) -> None:
        self.server = server
        self.qname = qname
        self.port = port
        self.rdtype = rdtype
        self.expect = expect
        self.match = match
        self.expect_rcode = expect_rcode
        self.transport = transport
        self.require_aa = require_aa
        self.recursion_desired = recursion_desired

    @classmethod
    def from_options(cls, opts: Options) -> DnsCheck:
        rdtype: dns.rdatatype.RdataType = opts.convert("rdtype", _rdtype, dns.rdatatype.A)
        texts: list[str] = opts.str_list("expect", [])
        expect: list[dns.rdata.Rdata] = []
        for text in texts:
            try:
                expect.append(dns.rdata.from_text(dns.rdataclass.IN, rdtype, text,
                                                  origin=dns.name.root, relativize=False))
            except dns.exception.DNSException as exc:
                raise opts.error("expect", f"{text!r} is not {rdtype.name} data ({exc})") from None
        return cls(
            opts.convert("server", _ip_address),
            opts.convert("qname", _qname),
            port=opts.int("port", 53, minimum=1, maximum=65535),
            rdtype=rdtype,
            expect=tuple(expect),
            match=opts.choice("match", ("exact", "subset"), "exact"),
            expect_rcode=opts.convert("expect_rcode", _rcode, dns.rcode.NOERROR),
            transport=opts.choice("transport", ("udp", "tcp"), "udp"),
            require_aa=opts.bool("require_aa", False),
            recursion_desired=opts.bool("recursion_desired", False),
        )

    def describe(self) -> str:
        host = f"[{self.server}]" if ":" in self.server else self.server
        where = self.server if self.port == 53 else f"{host}:{self.port}"
        return f"dns {where} {self.qname.to_text(omit_final_dot=True)}/{self.rdtype.name}"

    # -- the run ----------------------------------------------------------
    def probe_blocking(self, deadline: float) -> CheckResult:
        query = dns.message.make_query(self.qname, self.rdtype)
        if not self.recursion_desired:
            query.flags &= ~dns.flags.RD
        transcript = [f"> {self.qname} IN {self.rdtype.name} @{self.server} port {self.port} "
                      f"{self.transport.upper()} flags {dns.flags.to_text(query.flags) or '-'}"]
        try:
            if self.transport == "udp":
                with _udp_socket(self.server) as sock:
                    response = dns.query.udp(query, self.server, timeout=remaining(deadline),
                                             port=self.port, ignore_unexpected=False, sock=sock)
                if response.flags & dns.flags.TC:
                    transcript.append("< truncated over UDP: asking again over TCP")
                    response = dns.query.tcp(query, self.server, timeout=remaining(deadline),
                                             port=self.port)
            else:
                response = dns.query.tcp(query, self.server, timeout=remaining(deadline),
                                         port=self.port)
        except dns.exception.Timeout:
            return self._fail(Status.CRITICAL, "no answer (timed out)", transcript)
        except dns.query.UnexpectedSource as exc:
            return self._fail(Status.CRITICAL, f"answer from an unexpected address: {exc}",
                              transcript)
        except dns.query.BadResponse:
            return self._fail(Status.CRITICAL, "answer does not match the query (id or question)",
                              transcript)
        except dns.exception.DNSException as exc:
            return self._fail(Status.CRITICAL, f"bad answer: {type(exc).__name__}: {exc}",
                              transcript)
        except EOFError:
            return self._fail(Status.CRITICAL, "server closed the TCP connection", transcript)
        except OSError as exc:
            return self._fail(oserror_status(exc), describe_oserror(exc), transcript)
        return self._judge(response, transcript)

    def _judge(self, response: dns.message.Message, transcript: list[str]) -> CheckResult:
        rcode = dns.rcode.Rcode(response.rcode())
        flags = dns.flags.to_text(response.flags)
        transcript.append(f"< id {response.id} rcode {rcode.name} flags {flags}")
        shown = 0
        for rrset in response.answer:
            for line in rrset.to_text().splitlines():
                if shown < _MAX_TRANSCRIPT_RRS:
                    transcript.append(f"< {line}")
                shown += 1
        if shown > _MAX_TRANSCRIPT_RRS:
            transcript.append(f"< ... {shown - _MAX_TRANSCRIPT_RRS} more")

        if rcode != self.expect_rcode:
            return self._fail(Status.CRITICAL,
                              f"rcode {rcode.name} (expected {self.expect_rcode.name})", transcript)
        if self.require_aa and not response.flags & dns.flags.AA:
            return self._fail(Status.CRITICAL, f"{rcode.name} but the answer is not authoritative",
                              transcript)
        answer: dns.rrset.RRset | None = None
        if rcode == dns.rcode.NOERROR and isinstance(response, dns.message.QueryMessage):
            try:
                answer = response.resolve_chaining().answer
            except dns.exception.DNSException as exc:
                return self._fail(Status.CRITICAL, f"bad answer: {exc}", transcript)
        got = set(answer) if answer is not None else set()
        got_text = ", ".join(sorted(rd.to_text() for rd in got)) or "no data"
        perfdata = (f"answers={len(got)};;;0",)
        if self.expect:
            wanted = set(self.expect)
            good = got == wanted if self.match == "exact" else wanted <= got
            if not good:
                need = ", ".join(sorted(rd.to_text() for rd in wanted))
                how = "exactly" if self.match == "exact" else "at least"
                return self._fail(Status.CRITICAL, f"answered {got_text}, expected {how} {need}",
                                  transcript, perfdata)
        elif rcode == dns.rcode.NOERROR and not got:
            return self._fail(Status.CRITICAL, f"NOERROR but no {self.rdtype.name} records",
                              transcript, perfdata)
        aa = ", aa" if response.flags & dns.flags.AA else ""
        summary = got_text if len(got_text) <= 200 else got_text[:197] + "..."
        return CheckResult(Status.OK, f"{self.describe()}: {rcode.name}{aa}, {summary}",
                           perfdata=perfdata, transcript=tuple(transcript))

    def _fail(self, status: Status, what: str, transcript: list[str],
              perfdata: tuple[str, ...] = ()) -> CheckResult:
        return CheckResult(status, f"{self.describe()}: {what}", perfdata=perfdata,
                           transcript=tuple(transcript))
