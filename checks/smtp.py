"""SMTP probe with smtplib: banner, EHLO extensions, STARTTLS, optional AUTH and a
dry-run envelope (MAIL FROM / RCPT TO, then RSET): no message is ever sent.

The transcript keeps the commands sent and the first line of each reply;
credentials are never written to it (AUTH shows as ``AUTH ****``).
"""

from __future__ import annotations

import os
import re
import smtplib
import socket
import ssl
from typing import Any

from ._base import BlockingCheck, ProbeError, remaining
from ._net import (
    CertParseError,
    cert_expiry_verdict,
    client_context,
    describe_oserror,
    oserror_status,
)
from ._options import Options
from ._result import CheckResult, Status


class _Failed(Exception):
    """Ends a run early with a verdict (raised and caught inside this module)."""

    def __init__(self, status: Status, what: str) -> None:
        super().__init__(what)
        self.status = status
        self.what = what


class _Client(smtplib.SMTP):
    """smtplib.SMTP that remembers the host given to ``connect()`` (as the
    constructor does), so STARTTLS verifies the certificate against it."""

    def connect(self, host: str = "localhost", port: int = 0,
                source_address: Any = None) -> tuple[int, bytes]:
        self._host = host
        return super().connect(host, port, source_address)


def _first_line(message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return text.splitlines()[0] if text else ""


class SmtpCheck(BlockingCheck):
    """Speak just enough ESMTP to tell a healthy mail server from a broken one."""

    kind = "smtp"

    def __init__(self, host: str, *, port: int = 25, expect_banner_code: int = 220,
                 banner_regex: re.Pattern[str] | None = None, helo_name: str | None = None,
                 require_extensions: tuple[str, ...] = (), starttls: bool = False,
                 verify_tls: bool = True, ca_file: str | None = None,
                 cert_expiry_warning_days: int = 14, username: str | None = None,
                 password: str | None = None, mail_from: str | None = None,
                 rcpt_to: tuple[str, ...] = ()) -> None:
        self.host = host
        self.port = port
        self.expect_banner_code = expect_banner_code
        self.banner_regex = banner_regex
        self.helo_name = helo_name or socket.gethostname() or "localhost"
        self.require_extensions = tuple(e.upper() for e in require_extensions)
        self.starttls = starttls
        self.verify_tls = verify_tls
        self.ca_file = ca_file
        self.cert_expiry_warning_days = cert_expiry_warning_days
        self.username = username
        self.password = password
        self.mail_from = mail_from
        self.rcpt_to = rcpt_to

    @classmethod
    def from_options(cls, opts: Options) -> SmtpCheck:
        username: str | None = opts.str("username", None)
        password: str | None = opts.str("password", None)
        password_file: str | None = opts.str("password_file", None)
        if password is not None and password_file is not None:
            raise opts.error("password_file", "give either password or password_file")
        if password_file is not None:
            try:
                with open(password_file, encoding="utf-8") as handle:
                    password = handle.readline().rstrip("\r\n")
            except OSError as exc:
                raise opts.error("password_file", f"cannot read: {exc.strerror}") from None
        if password is not None and not password.isascii():
            key = "password" if password_file is None else "password_file"
            raise opts.error(key, "the password must be ASCII (smtplib sends it so)")
        if (username is None) != (password is None):
            raise opts.error("username" if username is None else "password",
                             "is required with " + ("password" if username is None else "username"))
        rcpt_to: list[str] = opts.str_list("rcpt_to", [])
        mail_from: str | None = opts.str("mail_from", None)
        if mail_from is not None and not rcpt_to:
            raise opts.error("rcpt_to", "is required with mail_from")
        verify_tls: bool = opts.bool("verify_tls", True)
        ca_file: str | None = opts.str("ca_file", None)
        if ca_file is not None and not verify_tls:
            raise opts.error("ca_file", "is set but verify_tls is false")
        return cls(
            opts.str("host"),
            port=opts.int("port", 25, minimum=1, maximum=65535),
            expect_banner_code=opts.int("expect_banner_code", 220, minimum=100, maximum=599),
            banner_regex=opts.regex("banner_regex", None),
            helo_name=opts.str("helo_name", None),
            require_extensions=tuple(opts.str_list("require_extensions", [])),
            starttls=opts.bool("starttls", False),
            verify_tls=verify_tls,
            ca_file=ca_file,
            cert_expiry_warning_days=opts.int("cert_expiry_warning_days", 14, minimum=0),
            username=username,
            password=password,
            mail_from="" if rcpt_to and mail_from is None else mail_from,
            rcpt_to=tuple(rcpt_to),
        )

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"smtp {host}:{self.port}"

    # -- the run ----------------------------------------------------------
    def probe_blocking(self, deadline: float) -> CheckResult:
        if self.ca_file is not None and not os.path.isfile(self.ca_file):
            raise ProbeError(f"ca_file {self.ca_file!r} does not exist")
        transcript: list[str] = []
        notes: list[tuple[Status, str]] = []
        client = _Client(local_hostname=self.helo_name, timeout=remaining(deadline))
        try:
            banner = self._dialogue(client, deadline, transcript, notes)
        except _Failed as failed:
            return self._result(failed.status, failed.what, transcript)
        except smtplib.SMTPServerDisconnected:
            return self._result(Status.CRITICAL, "server closed the connection", transcript)
        except smtplib.SMTPResponseException as exc:
            line = _first_line(exc.smtp_error)
            transcript.append(f"< {exc.smtp_code} {line}")
            return self._result(Status.CRITICAL, f"unexpected reply {exc.smtp_code} {line}",
                                transcript)
        except smtplib.SMTPException as exc:
            return self._result(Status.CRITICAL, f"{type(exc).__name__}: {exc}", transcript)
        except OSError as exc:
            return self._result(oserror_status(exc), describe_oserror(exc), transcript)
        finally:
            client.close()
        worst = max(notes, key=lambda n: n[0].severity, default=(Status.OK, ""))
        if worst[0] is not Status.OK:
            return self._result(worst[0], worst[1], transcript)
        done = [f"{self.expect_banner_code} {banner[:80]}"]
        if self.starttls:
            done.append("STARTTLS")
        if self.username is not None:
            done.append("AUTH")
        if self.rcpt_to:
            done.append(f"{len(self.rcpt_to)} recipient(s) accepted")
        return self._result(Status.OK, ", ".join(done), transcript)

    def _dialogue(self, client: smtplib.SMTP, deadline: float, transcript: list[str],
                  notes: list[tuple[Status, str]]) -> str:
        """Talk to the server; return the banner's text or raise _Failed / an error."""
        code, banner = client.connect(self.host, self.port)
        banner_text = _first_line(banner)
        transcript.append(f"< {code} {banner_text}")
        if code != self.expect_banner_code:
            raise _Failed(Status.CRITICAL,
                          f"banner {code} {banner_text} (expected {self.expect_banner_code})")
        if self.banner_regex is not None and not self.banner_regex.search(banner_text):
            raise _Failed(Status.CRITICAL,
                          f"banner {banner_text!r} does not match {self.banner_regex.pattern!r}")

        self._hello(client, deadline, transcript)
        if self.starttls:
            self._starttls(client, deadline, transcript, notes)
        missing = [e for e in self.require_extensions if not client.has_extn(e)]
        if missing:
            raise _Failed(Status.CRITICAL, f"does not offer {', '.join(missing)}")
        if self.username is not None and self.password is not None:
            self._tick(client, deadline)
            transcript.append("> AUTH **** (credentials not recorded)")
            try:
                code, reply = client.login(self.username, self.password)
            except smtplib.SMTPNotSupportedError:
                raise _Failed(Status.CRITICAL, "does not offer AUTH") from None
            except smtplib.SMTPAuthenticationError as exc:
                line = f"{exc.smtp_code} {_first_line(exc.smtp_error)}"
                transcript.append(f"< {line}")
                raise _Failed(Status.CRITICAL, f"AUTH refused: {line}") from None
            transcript.append(f"< {code} {_first_line(reply)}")
        if self.rcpt_to:
            self._envelope(client, deadline, transcript)
        self._tick(client, deadline)
        transcript.append("> QUIT")
        try:
            code, reply = client.docmd("QUIT")
            transcript.append(f"< {code} {_first_line(reply)}")
        except (smtplib.SMTPServerDisconnected, OSError):
            transcript.append("< (connection closed)")
        return banner_text

    def _hello(self, client: smtplib.SMTP, deadline: float, transcript: list[str]) -> None:
        self._tick(client, deadline)
        transcript.append(f"> EHLO {self.helo_name}")
        code, reply = client.ehlo()
        transcript.append(f"< {code} {_first_line(reply)}")
        if code == 250:
            names = " ".join(sorted(k.upper() for k in client.esmtp_features))
            transcript.append(f"  extensions: {names or '(none)'}")
            return
        if self.require_extensions or self.starttls or self.username is not None:
            raise _Failed(Status.CRITICAL, f"EHLO refused: {code} {_first_line(reply)}")
        self._tick(client, deadline)
        transcript.append(f"> HELO {self.helo_name}")
        code, reply = client.helo()
        transcript.append(f"< {code} {_first_line(reply)}")
        if code != 250:
            raise _Failed(Status.CRITICAL, f"HELO refused: {code} {_first_line(reply)}")

    def _starttls(self, client: smtplib.SMTP, deadline: float, transcript: list[str],
                  notes: list[tuple[Status, str]]) -> None:
        if not client.has_extn("starttls"):
            raise _Failed(Status.CRITICAL, "does not offer STARTTLS")
        context = client_context(self.verify_tls, self.ca_file)
        self._tick(client, deadline)
        transcript.append("> STARTTLS")
        code, reply = client.starttls(context=context)
        transcript.append(f"< {code} {_first_line(reply)}")
        sock = client.sock
        if isinstance(sock, ssl.SSLSocket):
            transcript.append(f"  {sock.version()} {(sock.cipher() or ('?',))[0]}")
            der = sock.getpeercert(binary_form=True)
            if der is not None and self.cert_expiry_warning_days > 0:
                try:
                    verdict = cert_expiry_verdict(der, self.cert_expiry_warning_days)
                except CertParseError as exc:
                    transcript.append(f"  certificate not checked: {exc}")
                else:
                    transcript.append(f"  {verdict.detail}")
                    notes.append((verdict.status, verdict.detail))
        self._hello(client, deadline, transcript)

    def _envelope(self, client: smtplib.SMTP, deadline: float, transcript: list[str]) -> None:
        sender = self.mail_from or ""
        self._tick(client, deadline)
        transcript.append(f"> MAIL FROM:<{sender}>")
        code, reply = client.mail(sender)
        transcript.append(f"< {code} {_first_line(reply)}")
        if code != 250:
            raise _Failed(Status.CRITICAL, f"MAIL FROM:<{sender}> refused: {code} "
                          f"{_first_line(reply)}")
        for rcpt in self.rcpt_to:
            self._tick(client, deadline)
            transcript.append(f"> RCPT TO:<{rcpt}>")
            code, reply = client.rcpt(rcpt)
            transcript.append(f"< {code} {_first_line(reply)}")
            if code not in (250, 251):
                raise _Failed(Status.CRITICAL, f"RCPT TO:<{rcpt}> refused: {code} "
                              f"{_first_line(reply)}")
        self._tick(client, deadline)
        transcript.append("> RSET")
        code, reply = client.rset()
        transcript.append(f"< {code} {_first_line(reply)}")

    @staticmethod
    def _tick(client: smtplib.SMTP, deadline: float) -> None:
        """Give the next command only what remains of the deadline."""
        if client.sock is not None:
            client.sock.settimeout(remaining(deadline))

    def _result(self, status: Status, what: str, transcript: list[str]) -> CheckResult:
        return CheckResult(status, f"{self.describe()}: {what}", transcript=tuple(transcript))
