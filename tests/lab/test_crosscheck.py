"""Cross-check guardian's probes against Debian's monitoring-plugins, in the lab.

For a matrix of states of vm01's services (up, stopped, hung with SIGSTOP, wrong zone
data, wrong SMTP banner, HTTP 500 and a few more), the client host runs guardian's
checks (``python -m guardian check ...``, exit 0/1/2/3) and the plugins check_http,
check_dns, check_dig and check_smtp against vm01's address, all with the same timeout,
and compares the exit codes with what the table below says each tool must answer.

guardian must agree with every plugin or be stricter; where it is stricter the case
says why (``reason``). ``test_the_table_keeps_its_promise`` holds the table to that.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import pytest

from checks import Status
from guardian.lab import VM, WRONG_ADDRESS, Host

pytestmark = pytest.mark.lab

#: Seconds; the same deadline for every tool (plugins take whole seconds).
TIMEOUT = 2
PLUGINS = "/usr/lib/nagios/plugins"

OK, WARNING, CRITICAL = Status.OK, Status.WARNING, Status.CRITICAL

#: guardian's probe of each service, and the plugins it is compared with.
SERVICES: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "http": ("guardian http", ("check_http",)),
    "dns": ("guardian dns", ("check_dns", "check_dig")),
    "smtp": ("guardian smtp", ("check_smtp",)),
}
TOOLS = tuple(t for g, plugins in SERVICES.values() for t in (g, *plugins))


def _probes(vm: VM, path: str) -> dict[str, list[str]]:
    """Every tool's command line against ``vm``: the same question, asked alike.

    guardian is configured as in ``guardian sample-config``: HTTP status exactly 200,
    the expected A record from an authoritative answer, a 220 greeting (here also
    naming the VM, as check_smtp -e is told to expect).
    """
    ip, www = vm.spec.ip, vm.spec.www_address
    qname = f"www.{vm.spec.zone}"
    fqdn = vm.spec.fqdn
    guardian = [sys.executable, "-m", "guardian", "check"]
    deadline = ["--timeout", f"{TIMEOUT}s"]
    return {
        "guardian http": [*guardian, "http", *deadline, "--url", f"http://{ip}{path}",
                          "--expect-status", "[200]"],
        "check_http": [f"{PLUGINS}/check_http", "-I", ip, "-u", path, "-t", str(TIMEOUT)],
        "guardian dns": [*guardian, "dns", *deadline, "--server", ip, "--qname", qname,
                         "--expect", f'["{www}"]', "--require-aa"],
        "check_dns": [f"{PLUGINS}/check_dns", "-H", qname, "-s", ip, "-a", www, "-A",
                      "-t", str(TIMEOUT)],
        "check_dig": [f"{PLUGINS}/check_dig", "-H", ip, "-l", qname, "-a", www,
                      "-t", str(TIMEOUT)],
        "guardian smtp": [*guardian, "smtp", *deadline, "--host", ip,
                          "--banner-regex", f"^{re.escape(fqdn)} "],
        "check_smtp": [f"{PLUGINS}/check_smtp", "-H", ip, "-e", f"220 {fqdn}",
                       "-t", str(TIMEOUT)],
    }


# ----------------------------------------------------------------------- faults
Fault = Callable[[VM, Host], AbstractContextManager[object]]


def _until(what: str, pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``pred`` (an exception counts as False) until it holds."""
    deadline = time.monotonic() + timeout
    last = "never true"
    while True:
        try:
            if pred():
                return
        except Exception as exc:  # noqa: BLE001 - a failing probe is "not yet"
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s ({last})")
        time.sleep(0.02)


def _healthy(vm: VM, client: Host) -> AbstractContextManager[object]:
    return nullcontext()


ICMP_RATELIMIT = "net.ipv4.icmp_ratelimit"


@contextmanager
def _stopped(program: str, vm: VM, client: Host) -> Iterator[None]:
    """``supervisorctl stop``: nothing listens any more (TCP RST, ICMP port unreachable).

    The kernel rate-limits ICMP errors towards one peer (a burst of 6, then one per
    ``icmp_ratelimit`` ms). The DNS tools all ask from the client at once, and dig and
    nslookup retry, so which tool would hear "port unreachable" and which would wait
    for its timeout would be chance; the limit is lifted in the VM (its own network
    namespace) while the service is down."""
    old_limit = vm.run(["sysctl", "-n", ICMP_RATELIMIT]).stdout.strip()
    vm.run(["sysctl", "-qw", f"{ICMP_RATELIMIT}=0"])
    try:
        vm.supervisor.stop(program)
        try:
            yield
        finally:
            vm.supervisor.start(program, False)
            vm.wait_ready(services=[program])
    finally:
        vm.run(["sysctl", "-qw", f"{ICMP_RATELIMIT}={old_limit}"])


@contextmanager
def _hung(program: str, vm: VM, client: Host) -> Iterator[None]:
    """SIGSTOP the program's whole process group: the kernel still accepts TCP
    connections into the listen backlog and queues UDP, but nobody answers."""
    pgid = vm.signal(program, signal.SIGSTOP, group=True)
    try:
        yield
    finally:
        os.killpg(pgid, signal.SIGCONT)
        vm.wait_ready(services=[program])


@contextmanager
def _wrong_zone(vm: VM, client: Host) -> Iterator[None]:
    """named serves a zone whose ``www`` record holds another address."""
    qname = f"www.{vm.spec.zone}"
    vm.serve_wrong_zone()
    try:
        _until("wrong zone served",
               lambda: client.dns_query(vm.spec.ip, qname, timeout=1) == [WRONG_ADDRESS])
        yield
    finally:
        vm.serve_right_zone()
        _until("right zone served again",
               lambda: client.dns_query(vm.spec.ip, qname, timeout=1) == [vm.spec.www_address])


#: A file of the VM's private /etc/apache2 (its conf-enabled/ is included by Debian's
#: apache2.conf); removed again by each case.
APACHE_SNIPPET = "etc/apache2/conf-enabled/zz-guardian-crosscheck.conf"


def _graceful(vm: VM) -> None:
    """What ``apache2ctl graceful`` does: SIGUSR1 to the parent, which rereads its
    configuration and replaces its workers (the listening socket stays open)."""
    vm.signal("apache2", signal.SIGUSR1)


@contextmanager
def _apache_snippet(text: str, path: str, status: int, vm: VM, client: Host) -> Iterator[None]:
    """Add ``text`` to apache's config (stock modules only), reload, wait until ``path``
    answers ``status``; afterwards remove it, reload and wait for the old answer."""
    snippet = vm.staged_root / APACHE_SNIPPET
    before = client.http_get(vm.spec.ip, path, timeout=1).status
    snippet.write_text(f"# guardian tests/lab/test_crosscheck.py\n{text}\n")
    try:
        _graceful(vm)
        _until(f"{path} answers {status}",
               lambda: client.http_get(vm.spec.ip, path, timeout=1).status == status)
        yield
    finally:
        snippet.unlink(missing_ok=True)
        _graceful(vm)
        _until(f"{path} answers {before} again",
               lambda: client.http_get(vm.spec.ip, path, timeout=1).status == before)


#: The VM's exim configuration (Debian's config.autogenerated, in its private copy).
EXIM_CONF = "var/lib/exim4/config.autogenerated"


@contextmanager
def _exim_settings(settings: str, banner: str, vm: VM, client: Host) -> Iterator[None]:
    """Put main-section ``settings`` in front of exim's config (where the lab's own
    macros are), restart exim, wait until its greeting starts with ``banner``;
    afterwards restore the file and restart it again."""
    conf = vm.staged_root / EXIM_CONF
    original = conf.read_text()
    conf.write_text(f"# guardian tests/lab/test_crosscheck.py\n{settings}\n{original}")
    try:
        vm.restart("exim4")
        _until(f"exim greets with {banner!r}",
               lambda: client.smtp_banner(vm.spec.ip, timeout=1).startswith(banner))
        yield
    finally:
        conf.write_text(original)
        vm.restart("exim4")
        vm.wait_ready(services=["exim4"])


# ----------------------------------------------------------------------- the matrix
@dataclass(frozen=True)
class Case:
    """One state of vm01 and the verdict each tool must give (OK unless listed)."""

    id: str
    fault: Fault
    verdicts: Mapping[str, Status] = field(default_factory=dict)
    #: Why guardian's verdict is stricter than a plugin's (required when it is).
    reason: str = ""
    #: The URL path the HTTP probes fetch.
    path: str = "/"
    #: "refused": the faulty service's probes must all answer well before the timeout;
    #: "timeout": they must all answer by the timeout (and not before most of it).
    timing: str = ""
    service: str = ""

    def expected(self) -> dict[str, Status]:
        return {tool: self.verdicts.get(tool, OK) for tool in TOOLS}


def _all(service: str, status: Status) -> dict[str, Status]:
    gtool, plugins = SERVICES[service]
    return {tool: status for tool in (gtool, *plugins)}


_P = functools.partial

CASES = [
    Case("up", _healthy),
    # -- stopped: connection refused / ICMP port unreachable, seen at once by all
    Case("apache2-stopped", _P(_stopped, "apache2"), _all("http", CRITICAL),
         service="http", timing="refused"),
    Case("named-stopped", _P(_stopped, "named"), _all("dns", CRITICAL) | {"check_dig": WARNING},
         reason="check_dig turns any failure of dig (here 'connection refused') into "
                "WARNING; for guardian a server that does not answer is down",
         service="dns", timing="refused"),
    Case("exim4-stopped", _P(_stopped, "exim4"), _all("smtp", CRITICAL),
         service="smtp", timing="refused"),
    # -- hung: SIGSTOP, every tool gives up at the same 2 s deadline
    Case("apache2-hung", _P(_hung, "apache2"), _all("http", CRITICAL),
         service="http", timing="timeout"),
    Case("named-hung", _P(_hung, "named"), _all("dns", CRITICAL),
         service="dns", timing="timeout"),
    Case("exim4-hung", _P(_hung, "exim4"), _all("smtp", CRITICAL),
         service="smtp", timing="timeout"),
    # -- wrong data
    Case("wrong-zone-data", _wrong_zone, _all("dns", CRITICAL) | {"check_dig": WARNING},
         reason="check_dig reports an expected address missing from the answer as "
                "WARNING; a server handing out the wrong address for www sends the "
                "clients elsewhere, which guardian counts as down (check_dns -a agrees)",
         service="dns"),
    Case("wrong-banner",
         _P(_exim_settings, "smtp_banner = impostor.example.test ESMTP not vm01",
            "220 impostor.example.test"),
         _all("smtp", CRITICAL) | {"check_smtp": WARNING},
         reason="check_smtp answers WARNING for any unexpected greeting (its documented "
                "'incorrect response' rule); a greeting that is not the expected server's "
                "means the wrong MTA answers on the address, which guardian treats as "
                "down",
         service="smtp"),
    Case("refusing-banner",
         _P(_exim_settings, "acl_smtp_connect = deny message = not accepting mail", "5"),
         _all("smtp", CRITICAL) | {"check_smtp": WARNING},
         reason="exim greets with a 5xx and hangs up: check_smtp calls the closed "
                "connection WARNING ('recv() failed'); a server that refuses every "
                "session delivers no mail, so guardian (expect_banner_code 220) says "
                "CRITICAL",
         service="smtp"),
    # -- HTTP answers other than 200
    Case("apache-500", _P(_apache_snippet, "Redirect 500 /broken", "/broken", 500),
         _all("http", CRITICAL), path="/broken", service="http"),
    Case("apache-404", _healthy, _all("http", CRITICAL) | {"check_http": WARNING},
         reason="check_http maps every 4xx to WARNING; guardian is told the page must "
                "be served (expect_status = [200]), so a missing page is a failure",
         path="/guardian-crosscheck-missing", service="http"),
    Case("apache-302",
         _P(_apache_snippet, "Redirect 302 /moved /", "/moved", 302),
         _all("http", OK) | {"guardian http": CRITICAL},
         reason="check_http accepts any 3xx by default (-f ok); guardian is told to "
                "expect exactly 200, and does not follow redirects unless asked, so a "
                "page that moved away is not the page being watched",
         path="/moved", service="http"),
]


def test_the_table_keeps_its_promise() -> None:
    """guardian never answers milder than a plugin, and a reason is written exactly
    where it answers stricter."""
    for case in CASES:
        expected = case.expected()
        stricter = []
        for gtool, plugins in SERVICES.values():
            for plugin in plugins:
                g, p = expected[gtool], expected[plugin]
                assert g.severity >= p.severity, f"{case.id}: {gtool} {g} milder than {plugin} {p}"
                if g.severity > p.severity:
                    stricter.append(plugin)
        assert bool(stricter) == bool(case.reason), (case.id, stricter, case.reason)


# ----------------------------------------------------------------------- running it
@dataclass(frozen=True)
class Answer:
    status: Status
    seconds: float
    output: str

    def line(self) -> str:
        text = " ".join(self.output.split())
        return f"{self.status.value:<8} {self.seconds:5.2f} s  {text[:110]}"


def _ask(client: Host, argv: list[str]) -> Answer:
    started = time.monotonic()
    proc = client.run(argv, check=False, timeout=TIMEOUT + 10)
    seconds = time.monotonic() - started
    return Answer(Status.from_exit_code(proc.returncode), seconds,
                  (proc.stdout + proc.stderr).strip())


def _ask_all(client: Host, probes: Mapping[str, list[str]]) -> dict[str, Answer]:
    """Every tool at once: a hung service costs one timeout, not one per tool."""
    with ThreadPoolExecutor(max_workers=len(probes)) as pool:
        futures = {tool: pool.submit(_ask, client, argv) for tool, argv in probes.items()}
        return {tool: fut.result() for tool, fut in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_verdicts_agree_with_monitoring_plugins(case: Case, client: Host, vm01: VM) -> None:
    probes = _probes(vm01, case.path)
    with case.fault(vm01, client):
        answers = _ask_all(client, probes)

    got = {tool: answers[tool].status for tool in TOOLS}
    table = "\n".join(f"  {tool:<14} want {case.verdicts.get(tool, OK).value:<8} got "
                      f"{answers[tool].line()}" for tool in TOOLS)
    print(f"\n{case.id}" + (f" (stricter: {case.reason})" if case.reason else "") + f"\n{table}")
    assert got == case.expected(), f"{case.id}:\n{table}"

    if case.timing:
        gtool, plugins = SERVICES[case.service]
        for tool in (gtool, *plugins):
            took = answers[tool].seconds
            if case.timing == "refused" and tool == gtool:
                # Nothing listens: guardian knows at once (interpreter start-up aside).
                assert took < TIMEOUT * 0.75, f"{tool} took {took:.2f} s:\n{table}"
            elif case.timing == "refused":
                # The plugins mostly know at once too, but check_dns (nslookup) now and
                # then misses the port-unreachable under load and waits its timeout
                # (seen once in the bookworm re-run of 2026-11-26): only bounded here.
                assert took < TIMEOUT + 3, f"{tool} took {took:.2f} s:\n{table}"
            else:
                # Hung: nobody answers; the verdict comes from the deadline, on time.
                assert TIMEOUT * 0.9 <= took < TIMEOUT + 3, f"{tool} took {took:.2f} s:\n{table}"
