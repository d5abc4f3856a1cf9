"""The smtp check against a small ESMTP server (socketserver) on 127.0.0.1."""

from __future__ import annotations

import base64
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from unit_helpers import LoopbackTcpServer, build

from checks import CheckResult, ConfigError, Status
from checks.smtp import SmtpCheck

RunSync = Callable[[Any, float], CheckResult]

USER = "probe@example.test"
SECRET = "s3cret-Pa55-w0rd"


class LoopbackSmtpServer(LoopbackTcpServer):
    """Just enough ESMTP: EHLO/HELO, STARTTLS, AUTH PLAIN/LOGIN, MAIL, RCPT, RSET, QUIT.

    Every line the client sent is kept in ``received`` (AUTH included, so a
    test can show the secret did cross the wire while the transcript kept none).
    """

    def __init__(self, tls_context: ssl.SSLContext | None = None) -> None:
        self.banner = "220 mx.example.test ESMTP guardian-test"
        self.extensions = ["PIPELINING", "8BITMIME", "SIZE 10240000", "AUTH PLAIN LOGIN"]
        self.tls_context = tls_context
        if tls_context is not None:
            self.extensions.append("STARTTLS")
        self.ehlo_code = 250
        self.reject_rcpt: set[str] = set()
        self.silent = False            # accept, never send the banner
        self.drop_after_banner = False
        self.received: list[str] = []
        super().__init__()

    def session(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        if self.silent:
            self.release.wait(10)
            return

        def send(line: str) -> None:
            conn.sendall(line.encode() + b"\r\n")

        reader = conn.makefile("rb")

        def readline() -> str | None:
            raw = reader.readline()
            if not raw:
                return None
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.received.append(text)
            return text

        send(self.banner)
        if self.drop_after_banner:
            return
        while True:
            line = readline()
            if line is None:
                return
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                if self.ehlo_code != 250:
                    send(f"{self.ehlo_code} 5.5.1 EHLO not implemented")
                    continue
                lines = [f"mx.example.test Hello {arg}", *self.extensions]
                for item in lines[:-1]:
                    send(f"250-{item}")
                send(f"250 {lines[-1]}")
            elif verb == "HELO":
                send("250 mx.example.test")
            elif verb == "STARTTLS" and self.tls_context is not None:
                send("220 2.0.0 Ready to start TLS")
                conn = self.tls_context.wrap_socket(conn, server_side=True)
                conn.settimeout(5)
                reader = conn.makefile("rb")
            elif verb == "AUTH":
                mech, _, initial = arg.partition(" ")
                if mech.upper() == "PLAIN":
                    if not initial:
                        send("334 ")
                        initial = readline() or ""
                    decoded = base64.b64decode(initial).decode()
                    ok = decoded == f"\0{USER}\0{SECRET}"
                else:  # LOGIN
                    send("334 VXNlcm5hbWU6")
                    user = base64.b64decode(readline() or "").decode()
                    send("334 UGFzc3dvcmQ6")
                    pw = base64.b64decode(readline() or "").decode()
                    ok = (user, pw) == (USER, SECRET)
                send("235 2.7.0 Authentication succeeded" if ok
                     else "535 5.7.8 Authentication credentials invalid")
            elif verb == "MAIL":
                send("250 OK")
            elif verb == "RCPT":
                address = arg.partition(":")[2].strip("<> ")
                if address in self.reject_rcpt:
                    send(f"550 5.1.1 <{address}>: unknown user")
                else:
                    send("250 Accepted")
            elif verb in ("RSET", "NOOP"):
                send("250 OK")
            elif verb == "QUIT":
                send("221 mx.example.test closing connection")
                return
            else:
                send("500 5.5.2 unrecognized command")


@pytest.fixture
def mx() -> Iterator[LoopbackSmtpServer]:
    with LoopbackSmtpServer() as server:
        yield server


def smtp(server: LoopbackSmtpServer | None, **options: Any) -> SmtpCheck:
    return build("smtp", SmtpCheck, options, "services.mail.checks[0]", server)


def secrets_in(result: CheckResult) -> list[str]:
    """Any form of the test secret found in the result's text."""
    plain_b64 = base64.b64encode(f"\0{USER}\0{SECRET}".encode()).decode()
    pw_b64 = base64.b64encode(SECRET.encode()).decode()
    text = "\n".join([result.detail, *result.transcript])
    return [s for s in (SECRET, plain_b64, pw_b64) if s in text]


def test_banner_and_ehlo_ok(mx: LoopbackSmtpServer, run_sync: RunSync) -> None:
    result = run_sync(smtp(mx, helo_name="probe.example.test"), 2.0)
    assert result.status is Status.OK, result.detail
    assert result.detail == f"smtp 127.0.0.1:{mx.port}: 220 mx.example.test ESMTP guardian-test"
    assert result.transcript[:3] == (
        "< 220 mx.example.test ESMTP guardian-test",
        "> EHLO probe.example.test",
        "< 250 mx.example.test Hello probe.example.test",
    )
    assert "  extensions: 8BITMIME AUTH PIPELINING SIZE" in result.transcript
    assert result.transcript[-2:] == ("> QUIT", "< 221 mx.example.test closing connection")
    assert [line.upper() for line in mx.received] == ["EHLO PROBE.EXAMPLE.TEST", "QUIT"]


def test_default_helo_name_is_hostname(mx: LoopbackSmtpServer, run_sync: RunSync) -> None:
    run_sync(smtp(mx), 2.0)
    assert mx.received[0].upper() == f"EHLO {socket.gethostname()}".upper()


def test_wrong_banner_code(mx: LoopbackSmtpServer, run_sync: RunSync) -> None:
    mx.banner = "554 mx.example.test no service for you"
    result = run_sync(smtp(mx), 2.0)
    assert result.status is Status.CRITICAL
    assert result.detail.endswith("banner 554 mx.example.test no service for you (expected 220)")
    assert mx.received == []


def test_banner_regex(mx: LoopbackSmtpServer, run_sync: RunSync) -> None:
    assert run_sync(smtp(mx, banner_regex="ESMTP"), 2.0).status is Status.OK
    result = run_sync(smtp(mx, banner_regex="Exim"), 2.0)
    assert result.status is Status.CRITICAL
    assert "does not match 'Exim'" in result.detail


def test_required_extensions(mx: LoopbackSmtpServer, run_sync: RunSync) -> None:
    ok = run_sync(smtp(mx, require_extensions=["8bitmime", "PIPELINING"]), 2.0)
    assert ok.status is Status.OK
    missing = run_sync(smtp(mx, require_extensions=["8BITMIME", "STARTTLS", "DSN"]), 2.0)
    assert missing.status is Status.CRITICAL
    assert missing.detail.endswith("does not offer STARTTLS, DSN")


def test_helo_fallback(mx: LoopbackSmtpServer, run_sync: RunSync) -> None:
    mx.ehlo_code = 502
    result = run_sync(smtp(mx, helo_name="h.test"), 2.0)
    assert result.status is Status.OK
    assert [line.upper() for line in mx.received[:2]] == ["EHLO H.TEST", "HELO H.TEST"]
    strict = run_sync(smtp(mx, require_extensions=["8BITMIME"]), 2.0)
    assert strict.status is Status.CRITICAL
    assert "EHLO refused: 502" in strict.detail


def test_envelope_dry_run(mx: LoopbackSmtpServer, run_sync: RunSync) -> None:
    result = run_sync(smtp(mx, helo_name="h.test",
                           rcpt_to=["postmaster@example.test", "root@example.test"]), 2.0)
    assert result.status is Status.OK, result.detail
    assert result.detail.endswith("2 recipient(s) accepted")
    verbs = [line.split()[0].upper() for line in mx.received]
    assert verbs == ["EHLO", "MAIL", "RCPT", "RCPT", "RSET", "QUIT"]
    assert mx.received[1].upper() == "MAIL FROM:<>"
    assert "> RCPT TO:<root@example.test>" in result.transcript


def test_rejected_recipient(mx: LoopbackSmtpServer, run_sync: RunSync) -> None:
    mx.reject_rcpt.add("nobody@example.test")
    result = run_sync(smtp(mx, mail_from="probe@example.test",
                           rcpt_to=["nobody@example.test"]), 2.0)
    assert result.status is Status.CRITICAL
    assert result.detail.endswith(
        "RCPT TO:<nobody@example.test> refused: 550 5.1.1 <nobody@example.test>: unknown user")
    assert mx.received[1].upper() == "MAIL FROM:<PROBE@EXAMPLE.TEST>"
    assert not any(line.upper().startswith("DATA") for line in mx.received)


def test_auth_secret_never_recorded(mx: LoopbackSmtpServer, run_sync: RunSync) -> None:
    result = run_sync(smtp(mx, username=USER, password=SECRET), 2.0)
    assert result.status is Status.OK, result.detail
    assert "> AUTH **** (credentials not recorded)" in result.transcript
    assert "< 235 2.7.0 Authentication succeeded" in result.transcript
    sent_auth = [line for line in mx.received if line.upper().startswith("AUTH")]
    assert sent_auth, "the client did authenticate"
    assert base64.b64encode(f"\0{USER}\0{SECRET}".encode()).decode() in sent_auth[0]
    assert secrets_in(result) == []


def test_auth_refused(mx: LoopbackSmtpServer, run_sync: RunSync, tmp_path: Any) -> None:
    pw_file = tmp_path / "smtp.pw"
    pw_file.write_text("wrong-" + SECRET + "\n", encoding="utf-8")
    result = run_sync(smtp(mx, username=USER, password_file=str(pw_file)), 2.0)
    assert result.status is Status.CRITICAL
    assert "AUTH refused: 535 5.7.8" in result.detail
    assert secrets_in(result) == []
    assert "wrong-" not in "\n".join(result.transcript)


def test_silent_server_critical_by_deadline(mx: LoopbackSmtpServer, run_sync: RunSync) -> None:
    mx.silent = True
    started = time.monotonic()
    result = run_sync(smtp(mx), 0.5)
    assert time.monotonic() - started < 0.5 + 0.5
    assert result.status is Status.CRITICAL
    assert "timed out" in result.detail


def test_server_drops_connection(mx: LoopbackSmtpServer, run_sync: RunSync) -> None:
    mx.drop_after_banner = True
    result = run_sync(smtp(mx), 2.0)
    assert result.status is Status.CRITICAL
    assert result.detail.endswith("server closed the connection")


def test_connection_refused(run_sync: RunSync) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_sync(smtp(None, host="127.0.0.1", port=port), 1.0)
    assert result.status is Status.CRITICAL
    assert result.detail == f"smtp 127.0.0.1:{port}: connection refused"


def test_starttls_not_offered(mx: LoopbackSmtpServer, run_sync: RunSync) -> None:
    result = run_sync(smtp(mx, starttls=True), 2.0)
    assert result.status is Status.CRITICAL
    assert result.detail.endswith("does not offer STARTTLS")


# -- STARTTLS ----------------------------------------------------------------------
@pytest.fixture
def tls_mx(tls_cert_factory: Any, request: pytest.FixtureRequest
           ) -> Iterator[tuple[LoopbackSmtpServer, Any]]:
    files = tls_cert_factory(valid_days=getattr(request, "param", 90))
    with LoopbackSmtpServer(files.server_context()) as server:
        yield server, files


def test_starttls_ok(tls_mx: tuple[LoopbackSmtpServer, Any], run_sync: RunSync) -> None:
    server, files = tls_mx
    check = smtp(server, starttls=True, ca_file=str(files.ca), helo_name="h.test",
                 require_extensions=["AUTH"], username=USER, password=SECRET,
                 rcpt_to=["postmaster@example.test"])
    result = run_sync(check, 2.0)
    assert result.status is Status.OK, result.detail
    assert result.detail.endswith("ESMTP guardian-test, STARTTLS, AUTH, 1 recipient(s) accepted")
    assert "> STARTTLS" in result.transcript
    assert "< 220 2.0.0 Ready to start TLS" in result.transcript
    assert any(line.startswith("  TLSv1.") for line in result.transcript)
    ehlos = [line.upper() for line in server.received if line.upper().startswith("EHLO")]
    assert ehlos == ["EHLO H.TEST"] * 2
    assert secrets_in(result) == []


@pytest.mark.parametrize("tls_mx", [3], indirect=True)
def test_starttls_cert_expiring(tls_mx: tuple[LoopbackSmtpServer, Any],
                                run_sync: RunSync) -> None:
    server, files = tls_mx
    result = run_sync(smtp(server, starttls=True, ca_file=str(files.ca)), 2.0)
    assert result.status is Status.WARNING
    assert "certificate expires in" in result.detail
    quiet = run_sync(smtp(server, starttls=True, ca_file=str(files.ca),
                          cert_expiry_warning_days=2), 2.0)
    assert quiet.status is Status.OK


def test_starttls_unverified_cert(tls_mx: tuple[LoopbackSmtpServer, Any],
                                  run_sync: RunSync) -> None:
    server, _ = tls_mx
    result = run_sync(smtp(server, starttls=True), 2.0)
    assert result.status is Status.CRITICAL
    assert "TLS certificate verify failed" in result.detail
    assert run_sync(smtp(server, starttls=True, verify_tls=False), 2.0).status is Status.OK


# -- options -------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "message"), [
    ({}, "checks[0].host: is required"),
    ({"host": "h", "port": "smtp"}, "checks[0].port: 'smtp' is not an integer"),
    ({"host": "h", "mail_from": "a@b"}, "checks[0].rcpt_to: is required with mail_from"),
    ({"host": "h", "username": "u"}, "checks[0].password: is required with username"),
    ({"host": "h", "password": "p"}, "checks[0].username: is required with password"),
    ({"host": "h", "username": "u", "password": "p", "password_file": "/f"},
     "checks[0].password_file: give either password or password_file"),
    ({"host": "h", "username": "u", "password_file": "/nonexistent/pw"},
     "checks[0].password_file: cannot read"),
    ({"host": "h", "username": "u", "password": "pässword"},
     "checks[0].password: the password must be ASCII"),
    ({"host": "h", "banner_regex": "["}, "checks[0].banner_regex: '[' is not a regular"),
    ({"host": "h", "starttls": "maybe"}, "checks[0].starttls: 'maybe' is not a boolean"),
    ({"host": "h", "helo": "x"}, "checks[0].helo: unknown key"),
])
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        smtp(None, **options)
    assert str(info.value).startswith("guardian.toml: services.mail.")
    assert message in str(info.value)


def test_defaults() -> None:
    check = smtp(None, host="::1")
    assert check.describe() == "smtp [::1]:25"
    assert (check.port, check.expect_banner_code, check.starttls, check.verify_tls,
            check.cert_expiry_warning_days, check.require_extensions, check.rcpt_to) == (
        25, 220, False, True, 14, (), ())
