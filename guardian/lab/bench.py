"""The benchmark: how fast is a crashed or hung Apache serving again, and what does
guardiand cost when nothing happens (design.md section 4).

    python -m guardian.lab.bench --runs 5 --json bench-results.json

Everything runs in one lab (root, network namespaces), in one run, one system at a
time, each in a VM of its own with Debian's stock apache2, named and exim4 under
supervisord:

``sigkill``
    SIGKILL apache2's whole process group (parent and workers), then time until the
    client host gets HTTP 200 from a *new* apache2, for
    ``guardiand`` (supervisord program with autorestart=false: only guardiand restarts it),
    ``supervisord`` (autorestart=true, nothing else) and
    ``monit`` (``supervisorctl start apache2`` as its start program; autorestart=false).
``sigstop``
    SIGSTOP the group (a hung Apache: the kernel still completes TCP handshakes, nobody
    answers), same clock, for guardiand and monit. supervisord alone never notices a
    hung process: "n/a".
``idle-<N>s``
    guardiand's RSS (VmRSS) and CPU% (utime+stime over N seconds) with the shipped
    sample configuration, unchanged.

How a run is clocked: settle (the system has seen the service healthy again), wait a
random 0-1 s (so runs do not line up with the 1 s cycles of supervisord and monit),
start the clock, kill, and poll from the client host (4 staggered workers, a request
every 5 ms overall, 0.25 s timeout each, new connection each). Serving again = HTTP
200 while the killed process is gone (or a zombie); afterwards supervisord must report
another pid. Nothing talks to supervisord between the kill and that 200 (an XML-RPC
request wakes supervisord up and would speed up its reaping). A run that takes longer
than ``--run-timeout`` counts as a failure (so does a system that does not settle
again: its remaining runs are left out); medians are over the successful runs, and the
exit status is 1 if any run failed.

guardiand runs the sample configuration with the apache2 service changed as
``BENCH_OVERRIDES`` says (a restart budget large enough for every run, an HTTP check an
operator could choose for fast hang detection); the settings of every system are
printed next to its figures. Monit uses its fastest honest settings (see
``MONIT_SETTINGS``).
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Protocol

from guardian._control import ControlError
from guardian._sample import SAMPLE_CONFIG

from ._errors import LabError, LabTimeout, SupervisorError
from ._guardian import Guardiand
from ._host import Host
from ._lab import Lab
from ._probes import HttpResponse, http_get
from ._render import SUPERVISOR_CONF
from ._requirements import unavailable_reason
from ._spec import CLIENT_IP
from ._supervisor import RUNNING
from ._vm import VM

SIGKILL = "sigkill"
SIGSTOP = "sigstop"
SCENARIOS = (SIGKILL, SIGSTOP)
GUARDIAND = "guardiand"
SUPERVISORD = "supervisord"
MONIT = "monit"
SYSTEMS = (GUARDIAND, SUPERVISORD, MONIT)
#: Which system can be measured in which scenario.
MEASURED: dict[str, tuple[str, ...]] = {
    SIGKILL: (GUARDIAND, SUPERVISORD, MONIT),
    SIGSTOP: (GUARDIAND, MONIT),
}
NOT_MEASURED_NOTE = "not measured: supervisord does not notice a hung (stopped) process"

#: The goals the figures are compared with (design.md section 4 and the brief).
GOAL_MEDIAN_S = 0.15
GOAL_RATIO: dict[str, float] = {SUPERVISORD: 6.0, MONIT: 10.0}
#: Earlier measurements of the anchors on this kind of machine (design.md section 4).
ANCHORS = "earlier: supervisord 1.03 s, monit (1 s cycle) 1.7-2.7 s"

#: The client's outage clock.
POLL_WORKERS = 4
POLL_GAP = 0.02  # per worker: with 4 staggered workers a request every 5 ms
REQUEST_TIMEOUT = 0.25
#: A random wait before each kill, so runs do not line up with 1 s poll cycles.
PHASE_JITTER = 1.0
#: How long the restored service must keep running before the next run.
SETTLE_HOLD = 0.3
SETTLE_TIMEOUT = 30.0

#: The apache2 service of the sample configuration, changed for the benchmark:
#: (table, key, new value as TOML). Everything else stays as shipped.
BENCH_OVERRIDES: tuple[tuple[str, str, str], ...] = (
    ("services.apache2.restart", "budget", "1000"),  # shipped: 3 (in 5 min)
    ("services.apache2.restart", "window", '"1h"'),  # so 1000 restarts can be spent
    ("services.apache2.restart", "backoff", '"100ms"'),
    ("services.apache2.restart", "backoff_max", '"1s"'),
    ("services.apache2.checks", "interval", '"500ms"'),  # shipped: 1s
    ("services.apache2.checks", "timeout", '"500ms"'),  # shipped: 1s
)
SUPERVISORD_SETTINGS = "alone (no guardiand, no monit), autorestart=true, startsecs=0"

MONIT_DIR = "/run/bench-monit"
MONIT_RC = f"{MONIT_DIR}/monitrc"
MONIT_LOG = "/var/log/bench-monit.log"
MONIT_SETTINGS = (
    "set daemon 1 with start delay 0 (its minimum cycle); check process "
    "apache2 with pidfile; start program = supervisorctl start apache2 with timeout 2 "
    "seconds (monit pauses connection tests that long after a start), stop program = "
    "supervisorctl stop apache2; if failed host 127.0.0.1 port 80 protocol http with "
    "timeout 1 seconds (its minimum) then restart (on the first failing cycle); "
    "supervisord autorestart=false startsecs=0"
)
#: Added to monit's settings in the sigstop scenario.
MONIT_SIGSTOP_NOTE = (
    "; a hung apache2 costs supervisord's stopwaitsecs (5 s in the lab) on top: "
    "supervisorctl stop sends SIGTERM to a stopped group, which cannot act on it, and "
    "supervisord SIGKILLs it only after stopwaitsecs"
)


def monit_config(extra_rules: str = "") -> str:
    """monit's control file for the ``monit`` system (written into the VM, 0600);
    ``extra_rules``: more lines of the apache2 check (the escalation benchmark's)."""
    ctl = f"/usr/bin/supervisorctl -c {SUPERVISOR_CONF}"
    return f"""\
# generated by guardian.lab.bench
set daemon 1 with start delay 0
set init
set log {MONIT_LOG}
set pidfile {MONIT_DIR}/monit.pid
set idfile {MONIT_DIR}/id
set statefile {MONIT_DIR}/state
set httpd unixsocket {MONIT_DIR}/monit.sock
    allow bench:bench

check process apache2 with pidfile /run/apache2/apache2.pid
    start program = "{ctl} start apache2" with timeout 2 seconds
    stop program = "{ctl} stop apache2" with timeout 30 seconds
    if failed host 127.0.0.1 port 80 protocol http with timeout 1 seconds then restart
{extra_rules}"""


# ---------------------------------------------------------------- configuration text
_HEADER_RE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def toml_set(text: str, table: str, key: str, value: str, *,
             by: str = "guardian.lab.bench") -> str:
    """Set ``key = value`` in the one table (or array-of-tables entry) named ``table``
    of a TOML document, keeping everything else (comments included) as it is; the line
    says ``by`` whom and what was shipped. The key must be there exactly once: a changed
    sample makes this fail loudly, not drift."""
    lines = text.splitlines(keepends=True)
    current: str | None = None
    hits: list[int] = []
    tables = 0
    key_re = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for i, line in enumerate(lines):
        m = _HEADER_RE.match(line)
        if m:
            current = m.group(1)
            tables += current == table
            continue
        if current == table and key_re.match(line):
            hits.append(i)
    if tables != 1 or len(hits) != 1:
        raise ValueError(f"cannot set {table}.{key}: {tables} such tables, {len(hits)} such keys")
    old = lines[hits[0]].split("=", 1)[1].split("#", 1)[0].strip()
    lines[hits[0]] = f"{key} = {value}  # {by} (shipped: {old})\n"
    return "".join(lines)


def guardiand_bench_config(sample: str = SAMPLE_CONFIG) -> str:
    """The sample configuration with ``BENCH_OVERRIDES`` applied (and checked)."""
    from guardian.config import loads

    text = sample
    for table, key, value in BENCH_OVERRIDES:
        text = toml_set(text, table, key, value)
    svc = loads(text, "bench.toml").services["apache2"]
    if svc.restart.budget != 1000 or svc.checks[0].interval != 0.5:
        raise ValueError("the benchmark's overrides did not take")
    return text


def guardiand_settings(config: str) -> str:
    """What matters for the apache2 figures, read back from the configuration used."""
    from checks import format_duration as d
    from guardian.config import loads

    svc = loads(config, "bench.toml").services["apache2"]
    r = svc.restart
    checks = ", ".join(f"{c.check.kind} check interval {d(c.interval)} timeout {d(c.timeout)}"
                       for c in svc.checks)
    return (
        f"shipped sample config, apache2 changed: restart budget {r.budget} per "
        f"{d(r.window)}, backoff {d(r.backoff)}..{d(r.backoff_max)} (the first restart of an "
        f"incident is immediate anyway); {checks}, fall {svc.fall}, rise {svc.rise}, "
        f"watch_pid {'on (pidfd)' if svc.watch_pid else 'off'}; no supervisord event "
        "listener installed; supervisord autorestart=false startsecs=0"
    )


def sample_settings() -> str:
    """The shipped sample configuration in one line (for the idle measurement)."""
    from checks import format_duration as d
    from guardian.config import loads

    spec = loads(SAMPLE_CONFIG, "guardian._sample.SAMPLE_CONFIG")
    parts = []
    for name, svc in spec.services.items():
        checks = "+".join(f"{c.check.kind} every {d(c.interval)}" for c in svc.checks)
        parts.append(f"{name} via {svc.backend} ({checks})")
    return "guardian._sample.SAMPLE_CONFIG as shipped: " + ", ".join(parts)


# ---------------------------------------------------------------- results
@dataclasses.dataclass
class Result:
    """The runs of one system in one scenario."""

    scenario: str
    system: str
    settings: str
    samples: list[float] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    measured: bool = True
    #: The system did not recover from a run: the remaining runs were not made.
    broken: bool = False

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def max(self) -> float | None:
        return max(self.samples) if self.samples else None

    def record(self, baseline: Result | None = None) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "scenario": self.scenario,
            "system": self.system,
            "runs": len(self.samples),
            "attempts": len(self.samples) + len(self.failures),
            "median_s": _round(self.median),
            "max_s": _round(self.max),
            "min_s": _round(min(self.samples) if self.samples else None),
            "samples": [_round(s) for s in self.samples],
            "failures": len(self.failures),
            "failure_reasons": list(self.failures),
            "settings": self.settings,
        }
        ratio = _ratio(self, baseline)
        if ratio is not None:
            rec["ratio_vs_guardiand"] = round(ratio, 2)
        if not self.measured:
            rec["note"] = NOT_MEASURED_NOTE
        return rec


@dataclasses.dataclass(frozen=True)
class IdleResult:
    seconds: float
    rss_mib: float
    rss_hwm_mib: float
    cpu_percent: float
    cpu_seconds: float
    restarts: int

    def record(self) -> dict[str, Any]:
        return {
            "scenario": f"idle-{self.seconds:g}s",
            "system": GUARDIAND,
            "rss_mib": round(self.rss_mib, 2),
            "rss_hwm_mib": round(self.rss_hwm_mib, 2),
            "cpu_percent": round(self.cpu_percent, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "seconds": self.seconds,
            "restarts_during_idle": self.restarts,
            "settings": sample_settings(),
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _ratio(result: Result, baseline: Result | None) -> float | None:
    if baseline is None or result.median is None or baseline.median is None:
        return None
    if baseline.median <= 0:
        return None
    return result.median / baseline.median


# ---------------------------------------------------------------- processes
def _proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (R, S, T, Z...); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(")") + 2 :].split(" ", 1)[0]


def _gone(pid: int) -> bool:
    return _proc_state(pid) in (None, "Z", "X")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024  # kB
    return values["VmRSS"], values["VmHWM"]


# ---------------------------------------------------------------- the outage clock
class OutageClock:
    """Times kill -> first HTTP 200 from a new process, as the client host sees it.

    The workers are threads in the client's network namespace; they wait for the go
    before their first request, so the clock starts right before the kill.
    """

    def __init__(self, client: Host, *, workers: int = POLL_WORKERS, gap: float = POLL_GAP,
                 request_timeout: float = REQUEST_TIMEOUT, stagger: float | None = None) -> None:
        self.workers = workers
        self.gap = gap
        #: delay between the workers' first requests (default: gap / workers)
        self.stagger = gap / workers if stagger is None else stagger
        self.request_timeout = request_timeout
        self.pool: ThreadPoolExecutor = client.executor(max_workers=workers)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def measure(self, ip: str, kill: Callable[[], None], is_new: Callable[[], bool],
                timeout: float, *, accept: Callable[[HttpResponse], str | None] | None = None,
                ) -> tuple[float | None, str]:
        """Run ``kill()`` and poll ``ip`` until HTTP 200 while ``is_new()``. Returns
        (seconds, "") or (None, why) after ``timeout``.

        ``accept`` (used by the failover benchmark) judges a 200 response as well:
        None accepts it, a text says why not (e.g. "served by vm01")."""
        go = threading.Event()
        done = threading.Event()
        lock = threading.Lock()
        first: list[float] = []
        last_error: list[str] = ["no answer"]
        t0 = 0.0
        deadline = 0.0

        def worker(k: int) -> None:
            go.wait()
            if done.wait(k * self.stagger):  # staggered
                return
            while not done.is_set() and time.monotonic() < deadline:
                try:
                    resp = http_get(ip, timeout=self.request_timeout)
                except (OSError, http.client.HTTPException) as exc:
                    last_error[0] = f"{type(exc).__name__}: {exc}"
                else:
                    now = time.monotonic()
                    refused = None if accept is None or resp.status != 200 else accept(resp)
                    if resp.status == 200 and refused is None and is_new():
                        with lock:
                            if not first:
                                first.append(now)
                        done.set()
                        return
                    last_error[0] = f"HTTP {resp.status}" + (
                        "" if resp.status != 200 else
                        f" ({refused})" if refused is not None else " from the old process")
                done.wait(self.gap)

        futures = [self.pool.submit(worker, k) for k in range(self.workers)]
        try:
            t0 = time.monotonic()
            deadline = t0 + timeout
            kill()
            go.set()
            done.wait(timeout + self.request_timeout + 1.0)
        finally:
            go.set()
            done.set()
            wait_futures(futures, timeout=self.request_timeout + 5.0)
        for fut in futures:
            if fut.done() and fut.exception() is not None:
                raise LabError(f"outage clock worker failed: {fut.exception()!r}")
        if first:
            return first[0] - t0, ""
        return None, f"not serving after {timeout:g} s (last: {last_error[0]})"


# ---------------------------------------------------------------- the systems
class System(Protocol):
    name: str
    vm: VM

    def settings(self, scenario: str) -> str: ...

    def before_kill(self) -> None: ...

    def settle(self, old_pid: int | None) -> None: ...

    def close(self) -> None: ...


#: What a system that does not come back (or cannot be set up) raises.
SYSTEM_ERRORS = (LabError, ControlError, OSError)


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _wait(what: str, pred: Callable[[], bool], timeout: float = SETTLE_TIMEOUT,
          poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            if pred():
                return
        except SYSTEM_ERRORS as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise LabTimeout(f"{what}: not within {timeout:g} s", {"last": last} if last else {})
        time.sleep(poll)


def _version(vm: VM, argv: list[str], name: str) -> str:
    """``NAME VERSION`` from the first version number ``argv`` prints in the VM."""
    out = vm.run(argv, check=False).stdout
    m = re.search(r"\d+(\.\d+)+", out)
    return f"{name} {m.group(0)}" if m else name


def _vm_serves(vm: VM) -> bool:
    """apache2 RUNNING under supervisord and answering 200 on the VM's address."""
    if vm.state("apache2") != RUNNING:
        return False
    return vm.call(lambda: http_get(vm.ip, timeout=1.0).status == 200, timeout=3.0)


class GuardiandSystem:
    name = GUARDIAND

    def __init__(self, lab: Lab, ip: str, config: str) -> None:
        self.vm = lab.vm("gd", ip, autorestart=False, startsecs=0)
        self.guardiand = Guardiand(self.vm, config)
        self._settings = guardiand_settings(config)
        self._restarts = 0
        try:
            self.vm.wait_ready(timeout=20)
            self.vm.wait_running(timeout=20)
            self.guardiand.start()
            self.guardiand.wait_state("apache2", "up", timeout=SETTLE_TIMEOUT)
        except BaseException:
            self.close()
            raise

    def settings(self, scenario: str) -> str:
        return self._settings

    def before_kill(self) -> None:
        self._restarts = int(self.guardiand.service("apache2")["restarts_total"])

    def settle(self, old_pid: int | None) -> None:
        def ready() -> bool:
            svc = self.guardiand.service("apache2")
            if svc["state"] != "up" or int(svc["restarts_total"]) <= self._restarts:
                return False
            pid = self.vm.pid("apache2")
            return pid is not None and pid != old_pid and svc["pid"] == pid
        _wait("guardiand: apache2 up again", ready)

    def close(self) -> None:
        try:
            self.guardiand.stop()
        finally:
            self.vm.destroy()


class SupervisordSystem:
    name = SUPERVISORD

    def __init__(self, lab: Lab, ip: str) -> None:
        self.vm = lab.vm("sd", ip, autorestart=True, startsecs=0)
        try:
            self.vm.wait_ready(timeout=20)
            self.vm.wait_running(timeout=20)
            self.version = _version(self.vm, ["supervisord", "--version"], "supervisord")
        except BaseException:
            self.vm.destroy()
            raise

    def settings(self, scenario: str) -> str:
        return f"{self.version}: {SUPERVISORD_SETTINGS}"

    def before_kill(self) -> None:
        pass

    def settle(self, old_pid: int | None) -> None:
        _wait("supervisord: apache2 RUNNING again with a new pid and serving",
              lambda: self.vm.pid("apache2") not in (None, old_pid) and _vm_serves(self.vm))

    def close(self) -> None:
        self.vm.destroy()


class MonitSystem:
    name = MONIT

    def __init__(self, lab: Lab, ip: str, *, extra_rules: str = "") -> None:
        self.vm = lab.vm("mon", ip, autorestart=False, startsecs=0)
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_rules = extra_rules
        try:
            self.vm.wait_ready(timeout=20)
            self.vm.wait_running(timeout=20)
            self.vm.run(["mkdir", "-p", "-m", "0700", MONIT_DIR])
            self.vm.write_file(MONIT_RC, monit_config(extra_rules), mode=0o600)
            self.vm.run(["monit", "-t", "-c", MONIT_RC])  # syntax check
            self.version = _version(self.vm, ["monit", "-V"], "monit")
            self.start()
            self.settle(None)
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        """Start monit (``-I``: in the foreground, as our child)."""
        with open(self.vm.vmdir / "monit.out", "ab") as out:
            self.proc = self.vm.popen(["monit", "-I", "-c", MONIT_RC],
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                      start_new_session=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def settings(self, scenario: str) -> str:
        note = MONIT_SIGSTOP_NOTE if scenario == SIGSTOP else ""
        return f"{self.version}: {MONIT_SETTINGS}{note}"

    def status(self) -> dict[str, str]:
        """``monit status apache2`` as a dict ("status", "pid", ...)."""
        if self.proc is None or self.proc.poll() is not None:
            rc = None if self.proc is None else self.proc.returncode
            raise LabError(f"monit not running (exit {rc}): {self.log()[-2000:]}")
        out = self.vm.run(["monit", "-B", "-c", MONIT_RC, "status", "apache2"],
                          check=False, timeout=10).stdout
        fields: dict[str, str] = {}
        for line in out.splitlines():
            m = re.match(r"^\s{2}(\S.*?)\s{2,}(\S.*)$", line)
            if m:
                fields.setdefault(m.group(1), m.group(2).strip())
        return fields

    def before_kill(self) -> None:
        pass

    def settle(self, old_pid: int | None) -> None:
        """Wait until monit has tested the new process over HTTP in two cycles: after
        a start, monit pauses connection tests for the start timeout; a run must begin
        with monit really testing (its steady state), as guardiand's does."""
        cycles: list[str] = []

        def ready() -> bool:
            pid = self.vm.pid("apache2")
            if pid is None or pid == old_pid or not _vm_serves(self.vm):
                return False
            st = self.status()
            tested = (st.get("status") == "OK" and st.get("pid") == str(pid)
                      and " ms to " in st.get("port response time", ""))
            if not tested:
                cycles.clear()
                return False
            stamp = st.get("data collected", "")
            if stamp not in cycles:
                cycles.append(stamp)
            return len(cycles) >= 2
        _wait("monit: apache2 tested OK with its new pid", ready, poll=0.1)

    def log(self) -> str:
        try:
            return self.vm.read_file(MONIT_LOG)
        except LabError:
            return ""

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.vm.destroy()


# ---------------------------------------------------------------- running
Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def one_run(system: System, clock: OutageClock, sig: signal.Signals, *, timeout: float,
            rng: random.Random) -> tuple[float | None, str]:
    """Kill apache2 (its process group) with ``sig`` once and clock the outage; leaves
    the system settled again. Returns (seconds, "") or (None, why it failed)."""
    vm = system.vm
    old = vm.pid("apache2")
    if old is None or os.getpgid(old) != old:
        raise LabError(f"{system.name}: apache2 has no running group leader ({old})")
    system.before_kill()
    time.sleep(rng.uniform(0.0, PHASE_JITTER))
    try:
        took, why = clock.measure(vm.ip, lambda: os.killpg(old, sig), lambda: _gone(old),
                                  timeout)
    finally:
        if sig == signal.SIGSTOP:
            try:  # let whatever is left of the old group run on (and die)
                os.killpg(old, signal.SIGCONT)
            except ProcessLookupError:
                pass
    if took is not None:
        new = vm.pid("apache2")
        if new in (None, old):
            took, why = None, f"HTTP 200, but supervisord reports pid {new} (killed: {old})"
    if took is None:
        _repair(system, old)
    system.settle(old)
    time.sleep(SETTLE_HOLD)
    return took, why


def _repair(system: System, old: int) -> None:
    """After a failed run: make sure the old group is dead and apache2 runs again, so
    the next run starts from a healthy system."""
    try:
        os.killpg(old, signal.SIGKILL)
    except ProcessLookupError:
        pass
    vm = system.vm
    _wait(f"{system.name}: old apache2 {old} gone", lambda: _gone(old), timeout=10)
    try:
        if vm.state("apache2") != RUNNING:
            vm.supervisor.start("apache2", False)
    except SupervisorError:
        pass


def run_scenario(system: System, clock: OutageClock, scenario: str, runs: int, *,
                 timeout: float, rng: random.Random, log: Log = _stderr) -> Result:
    sig = signal.SIGKILL if scenario == SIGKILL else signal.SIGSTOP
    result = Result(scenario, system.name, system.settings(scenario))
    for i in range(runs):
        try:
            took, why = one_run(system, clock, sig, timeout=timeout, rng=rng)
        except SYSTEM_ERRORS as exc:
            why = f"run {i + 1}: no recovery, {runs - i - 1} run(s) left out: {_first(exc)}"
            result.failures.append(why)
            result.broken = True
            log(f"  {scenario} {system.name} run {i + 1}/{runs}: ABORTED: {why}")
            break
        if took is None:
            result.failures.append(why)
            log(f"  {scenario} {system.name} run {i + 1}/{runs}: FAILED: {why}")
        else:
            result.samples.append(took)
            log(f"  {scenario} {system.name} run {i + 1}/{runs}: {took:.3f} s")
    return result


def measure_idle(lab: Lab, ip: str, seconds: float, log: Log = _stderr) -> IdleResult:
    """guardiand with the shipped sample config: RSS and CPU% over ``seconds`` idle."""
    vm = lab.vm("idle", ip, autorestart=False, startsecs=0)
    try:
        vm.wait_ready(timeout=20)
        g = Guardiand(vm, SAMPLE_CONFIG).start()
        try:
            for svc in ("apache2", "named", "exim4"):
                g.wait_state(svc, "up", timeout=SETTLE_TIMEOUT)
            time.sleep(1.0)  # let start-up work (imports, first probes) pass
            restarts0 = sum(int(s["restarts_total"]) for s in g.status()["services"])
            cpu0, t0 = cpu_seconds(g.pid), time.monotonic()
            log(f"  idle: guardiand pid {g.pid}, measuring {seconds:g} s")
            time.sleep(seconds)
            cpu1, t1 = cpu_seconds(g.pid), time.monotonic()
            rss, hwm = memory_mib(g.pid)
            restarts1 = sum(int(s["restarts_total"]) for s in g.status()["services"])
        finally:
            g.stop()
    finally:
        vm.destroy()
    used = cpu1 - cpu0
    return IdleResult(seconds, rss, hwm, 100.0 * used / (t1 - t0), used, restarts1 - restarts0)


@contextmanager
def _system(name: str, lab: Lab, ip: str) -> Iterator[System]:
    system: System
    if name == GUARDIAND:
        system = GuardiandSystem(lab, ip, guardiand_bench_config())
    elif name == SUPERVISORD:
        system = SupervisordSystem(lab, ip)
    elif name == MONIT:
        system = MonitSystem(lab, ip)
    else:
        raise ValueError(f"unknown system {name!r}")
    try:
        yield system
    finally:
        system.close()


#: One VM per system (booted when its turn comes, destroyed after), idle VM last.
VM_IPS = {GUARDIAND: "192.0.2.21", SUPERVISORD: "192.0.2.22", MONIT: "192.0.2.23",
          "idle": "192.0.2.24"}


def run_benchmark(
    runs: int = 5,
    *,
    idle_seconds: float | None = 60.0,
    systems: Sequence[str] = SYSTEMS,
    scenarios: Sequence[str] = SCENARIOS,
    run_timeout: float = 30.0,
    seed: int | None = None,
    log: Log = _stderr,
) -> list[dict[str, Any]]:
    """Run the benchmark in a fresh lab; returns the JSON records (see the module doc).
    ``idle_seconds=None`` skips the idle measurement."""
    if runs < 1:
        raise ValueError("runs must be >= 1")
    for s in systems:
        if s not in SYSTEMS:
            raise ValueError(f"unknown system {s!r}; known: {', '.join(SYSTEMS)}")
    for sc in scenarios:
        if sc not in SCENARIOS:
            raise ValueError(f"unknown scenario {sc!r}; known: {', '.join(SCENARIOS)}")
    rng = random.Random(seed)
    results: dict[tuple[str, str], Result] = {}
    idle: IdleResult | None = None
    with Lab() as lab, ExitStack() as stack:
        log(f"lab {lab.id}: {runs} run(s) per system and scenario")
        client = lab.host("client", CLIENT_IP)
        clock = OutageClock(client)
        stack.callback(clock.close)
        for name in systems:
            todo = [sc for sc in scenarios if name in MEASURED[sc]]
            if not todo:
                continue
            log(f"{name}: booting its VM")
            try:
                with _system(name, lab, VM_IPS[name]) as system:
                    for sc in todo:
                        if any(results[s, name].broken for s in todo if (s, name) in results):
                            why = f"not run: {name} did not recover in an earlier scenario"
                            results[sc, name] = Result(sc, name, "", failures=[why])
                            continue
                        results[sc, name] = run_scenario(system, clock, sc, runs,
                                                         timeout=run_timeout, rng=rng, log=log)
            except SYSTEM_ERRORS as exc:
                log(f"{name}: {exc}")
                for sc in todo:
                    if (sc, name) not in results:
                        why = f"not run: {name} could not be set up: {_first(exc)}"
                        results[sc, name] = Result(sc, name, "", failures=[why])
        if idle_seconds is not None:
            log(f"idle: guardiand with the shipped sample config for {idle_seconds:g} s")
            idle = measure_idle(lab, VM_IPS["idle"], idle_seconds, log)
    records: list[dict[str, Any]] = []
    for sc in scenarios:
        base = results.get((sc, GUARDIAND))
        for name in systems:
            if (sc, name) in results:
                r = results[sc, name]
                records.append(r.record(None if name == GUARDIAND else base))
            elif name not in MEASURED[sc]:
                na = Result(sc, name, SUPERVISORD_SETTINGS, measured=False)
                records.append(na.record())
    if idle is not None:
        records.append(idle.record())
    return records


# ---------------------------------------------------------------- reporting
def _fmt_s(x: Any) -> str:
    if not isinstance(x, int | float):
        return "n/a"
    return f"{x:.3f} s"


SCENARIO_TITLES = {
    SIGKILL: "SIGKILL apache2's process group -> first HTTP 200 from a new apache2",
    SIGSTOP: "SIGSTOP apache2's process group (hung) -> first HTTP 200 from a new apache2",
}


def format_report(records: Sequence[dict[str, Any]]) -> str:
    """The table printed at the end: per scenario, per system median/max/min and the
    ratio to guardiand, then the settings of every system, the goals, the idle cost."""
    lines: list[str] = []
    outage = [r for r in records if r["scenario"] in SCENARIOS]
    for sc in SCENARIOS:
        rows = [r for r in outage if r["scenario"] == sc]
        if not rows:
            continue
        lines.append(f"{sc}: {SCENARIO_TITLES[sc]}")
        lines.append(f"  {'system':<12} {'runs':>5} {'median':>9} {'max':>9} {'min':>9}  "
                     "median ratio")
        for r in rows:
            ratio = r.get("ratio_vs_guardiand")
            if r.get("note"):
                runs, rtxt = "n/a", "n/a (does not notice a hung process)"
            else:
                runs = f"{r['runs']}/{r['attempts']}"
                rtxt = "" if r["system"] == GUARDIAND else (
                    f"{r['system']}/guardiand = {ratio:.1f}x"
                    if isinstance(ratio, float) else "n/a")
            lines.append(f"  {r['system']:<12} {runs:>5} {_fmt_s(r['median_s']):>9} "
                         f"{_fmt_s(r['max_s']):>9} {_fmt_s(r.get('min_s')):>9}  {rtxt}")
        lines.append("")
    if outage:
        lines.append("settings:")
        printed: dict[str, str] = {}
        for r in outage:
            name, text = r["system"], r["settings"]
            if r.get("note") or printed.get(name) == text:
                continue
            if name in printed and text.startswith(printed[name]):
                extra = text[len(printed[name]):].lstrip("; ")
                lines += _wrap(f"{name}, {r['scenario']}: {extra}")
            else:
                printed[name] = text
                lines += _wrap(f"{name}: {text}")
        for r in outage:
            for why in r.get("failure_reasons", []):
                lines += _wrap(f"FAILED run: {r['scenario']} {r['system']}: {why}")
        lines.append("")
        lines += _goals(outage)
    for r in records:
        if r["scenario"].startswith("idle-"):
            lines.append(f"guardiand idle for {r['seconds']:g} s: RSS {r['rss_mib']:.1f} MiB "
                         f"(peak {r['rss_hwm_mib']:.1f} MiB), CPU {r['cpu_percent']:.2f}% "
                         f"({r['cpu_seconds']:.2f} s of CPU)")
            lines += _wrap(r["settings"])
    return "\n".join(lines)


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, width=100, initial_indent="  ", subsequent_indent="      ")


def _goals(outage: Sequence[dict[str, Any]]) -> list[str]:
    by = {(r["scenario"], r["system"]): r for r in outage}
    out = [f"goals (sigkill; {ANCHORS}):"]
    g = by.get((SIGKILL, GUARDIAND))
    if g is None or g["median_s"] is None:
        return out + ["  guardiand sigkill not measured"]
    ok = g["median_s"] <= GOAL_MEDIAN_S
    out.append(f"  guardiand median <= {GOAL_MEDIAN_S:g} s: {_fmt_s(g['median_s'])} "
               f"{'met' if ok else 'MISSED'}")
    for name, want in GOAL_RATIO.items():
        r = by.get((SIGKILL, name))
        ratio = None if r is None else r.get("ratio_vs_guardiand")
        if not isinstance(ratio, float):
            continue
        out.append(f"  >= {want:g}x faster than {name}: {ratio:.1f}x "
                   f"{'met' if ratio >= want else 'MISSED'}")
    return out


def _check_finite(records: Sequence[dict[str, Any]]) -> None:
    for r in records:
        for k, v in r.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"record {r['scenario']}/{r['system']}: {k} is {v}")


# ---------------------------------------------------------------- command line
def _csv(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return items
    return parse


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guardian.lab.bench",
        description="Crash/hang -> serving again: guardiand vs supervisord vs monit, "
        "and guardiand's idle cost (root; builds a network-namespace lab).")
    parser.add_argument("--runs", type=int, default=5, help="runs per system and scenario")
    parser.add_argument("--json", type=Path, help="write the records to this file")
    parser.add_argument("--idle-seconds", type=float, default=60.0,
                        help="idle measurement length (0: skip it; default %(default)g)")
    parser.add_argument("--systems", type=_csv(SYSTEMS), default=",".join(SYSTEMS),
                        help="comma-separated (default %(default)s)")
    parser.add_argument("--scenarios", type=_csv(SCENARIOS), default=",".join(SCENARIOS),
                        help="comma-separated (default %(default)s)")
    parser.add_argument("--run-timeout", type=float, default=30.0,
                        help="a run longer than this is a failure (default %(default)g s)")
    parser.add_argument("--seed", type=int, help="seed of the random pre-kill waits")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    return run_main("bench", lambda: run_benchmark(
        args.runs,
        idle_seconds=args.idle_seconds if args.idle_seconds > 0 else None,
        systems=args.systems, scenarios=args.scenarios,
        run_timeout=args.run_timeout, seed=args.seed,
    ), format_report, args.json)


def run_main(name: str, run: Callable[[], list[dict[str, Any]]],
             report: Callable[[list[dict[str, Any]]], str], json_path: Path | None) -> int:
    """The common tail of a benchmark's main(): refuse where the lab cannot run, turn
    SIGTERM into an orderly unwind (every process stopped), run, report, save."""
    reason = unavailable_reason()
    if reason is not None:
        print(f"{name}: the lab cannot run here: {reason}", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the cleanup finish
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds: every process is stopped

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    try:
        records = run()
    except KeyboardInterrupt:
        print(f"{name}: interrupted; the lab was removed", file=sys.stderr)
        return 130
    return report_and_save(records, report(records), started, json_path)


def report_and_save(records: list[dict[str, Any]], report: str, started: float,
                    json_path: Path | None) -> int:
    """Print the report and the time taken, write the JSON records; the exit status
    (1 when any run failed)."""
    _check_finite(records)
    print(report)
    print(f"\nbenchmark took {time.monotonic() - started:.0f} s")
    if json_path is not None:
        json_path.write_text(json.dumps(records, indent=2) + "\n")
        print(f"records written to {json_path}")
    return 1 if any(r.get("failures") for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
