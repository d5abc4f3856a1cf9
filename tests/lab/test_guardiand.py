"""guardiand in a lab VM, supervising Debian's real apache2, named and exim4.

The VM's supervisord has autorestart=false for every program, so whatever brings a
service back is guardiand (through its supervisord backend). Each test starts its
own guardiand on a config written here and stops it at the end; the VM is put back
into a healthy state before every test.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from guardian.lab import (
    CLIENT_IP,
    TEST_ZONE,
    VIP,
    VM,
    VM01_IP,
    Guardiand,
    Host,
    Lab,
    LabError,
    cleanup_stale,
    listener_program,
)

pytestmark = pytest.mark.lab

SUPERVISORCTL = ["/usr/bin/supervisorctl", "-c", "/etc/supervisor/supervisord.conf"]
LADDER_EXEC_OUT = "/run/ladder-exec"
ALERT_OUT = "/run/alert-hook"


def supervisord_service(name: str, check: str, *, requires: str, budget: int,
                        ladder: str = '["alert"]', slow_retry: bool = True,
                        timeout: str = "500ms") -> str:
    """A ``[services.NAME]`` run by the VM's supervisord, with its restart policy
    (``slow_retry``: backoff up to 1 s, a retry 2 s after the ladder) and one
    check every 500 ms."""
    retry = 'backoff_max = "1s"\nexhausted_retry = "2s"\n' if slow_retry else ""
    return f"""
[services.{name}]
backend = "supervisord"
{requires}start_grace = "5s"
ladder = {ladder}
[services.{name}.restart]
budget = {budget}
window = "2m"
backoff = "200ms"
{retry}[[services.{name}.checks]]
{check}interval = "500ms"
timeout = "{timeout}"
"""


def make_config(*, supervise_supervisord: bool = False, budget: int = 3) -> str:
    """The test configuration: the shipped sample's shape with faster checks, a
    short retry after the ladder, and hooks that leave files behind."""
    requires = 'requires = ["supervisord"]\n' if supervise_supervisord else ""
    text = f"""\
[guardian]
control_socket = "/run/guardian/control.sock"
log_level = "debug"
alert_command = ["/bin/sh", "-c", "env | grep ^GUARDIAN_ | sort > {ALERT_OUT}.$GUARDIAN_SERVICE"]
hook_timeout = "5s"

[backends.supervisord]
url = "unix:///run/supervisor.sock"
kill_after = "2s"
"""
    text += supervisord_service("apache2", """\
type = "http"
url = "http://127.0.0.1/"
expect_status = [200]
""", requires=requires, budget=budget, ladder=f"""[
  {{ action = "exec", command = ["/bin/sh", "-c",
     "env | grep ^GUARDIAN_ | sort > {LADDER_EXEC_OUT}.$GUARDIAN_SERVICE"] }},
  "alert",
]""")
    text += supervisord_service("named", f"""\
type = "dns"
server = "127.0.0.1"
qname = "www.{TEST_ZONE}"
rdtype = "A"
expect = ["{VIP}"]
require_aa = true
""", requires=requires, budget=budget)
    text += supervisord_service("exim4", """\
type = "smtp"
host = "127.0.0.1"
expect_banner_code = 220
""", requires=requires, budget=budget, slow_retry=False, timeout="1s")
    if supervise_supervisord:
        text += """
[services.supervisord]
backend = "command"
start_command = ["/usr/bin/supervisord", "-c", "/etc/supervisor/supervisord.conf"]
pidfile = "/run/supervisord.pid"
ladder = ["alert"]
[[services.supervisord.checks]]
type = "exec"
command = ["/bin/sh", "-c",
  "/usr/bin/supervisorctl -c /etc/supervisor/supervisord.conf pid >/dev/null || exit 2"]
interval = "1s"
timeout = "1s"
"""
    return text


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def glab() -> Iterator[Lab]:
    """A lab whose VM's supervisord never restarts anything by itself."""
    cleanup_stale()
    with Lab() as lab:
        lab.host("client", CLIENT_IP)
        vm = lab.vm("vm01", VM01_IP, autorestart=False, startsecs=0,
                    extra_programs=(listener_program(),), boot=False)
        vm.boot()
        vm.wait_ready(timeout=30)
        yield lab


@pytest.fixture
def gclient(glab: Lab) -> Host:
    return glab["client"]


@pytest.fixture
def gvm(glab: Lab) -> VM:
    vm = glab["vm01"]
    assert isinstance(vm, VM)
    if not vm.running:
        vm.destroy()
        vm.boot()
    try:
        vm.supervisor.state()
    except LabError:
        # supervisord itself was killed by a test and not brought back: start it
        vm.run(["/usr/bin/supervisord", "-c", "/etc/supervisor/supervisord.conf"])
        wait_until(lambda: vm.run(SUPERVISORCTL + ["pid"], check=False).returncode == 0,
                   10, "supervisord back")
    vm.fix_apache_config()
    if vm.zone_address != vm.spec.www_address:
        vm.serve_right_zone(reload=False)
    for info in vm.supervisor.all_process_info():
        if info.statename != "RUNNING":
            vm.supervisor.start(info.name, True)
    vm.wait_ready(timeout=20)
    vm.run(["sh", "-c", f"rm -f {LADDER_EXEC_OUT}.* {ALERT_OUT}.*"])
    return vm


@pytest.fixture
def start_guardiand(gvm: VM, request: pytest.FixtureRequest) -> Iterator[Callable[..., Guardiand]]:
    started: list[Guardiand] = []

    def start(config: str | None = None) -> Guardiand:
        g = Guardiand(gvm, config or make_config())
        started.append(g)
        g.start()
        for s in g.status()["services"]:
            assert s["state"] in ("up", "recovering"), s
        return g

    yield start
    for g in started:
        rc = g.stop()
        print(g.log()[-5000:])   # shown by pytest when the test failed
        assert rc == 0, f"guardiand exited {rc} on SIGTERM:\n{g.log()[-3000:]}"


# --------------------------------------------------------------------------- helpers
def serves(client: Host, vm: VM, service: str) -> bool:
    try:
        if service == "apache2":
            return client.http_get(vm.spec.ip, timeout=0.5).status == 200
        if service == "named":
            return VIP in client.dns_query(vm.spec.ip, f"www.{TEST_ZONE}", timeout=0.5)
        if service == "exim4":
            return client.smtp_banner(vm.spec.ip, timeout=1.0).startswith("220")
    except Exception:  # noqa: BLE001 - any failure to answer is 'not serving'
        return False
    raise AssertionError(service)


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - start


def serving_again(client: Host, vm: VM, service: str, old_pid: int, timeout: float) -> float:
    def ok() -> bool:
        pid = vm.pid(service)
        return pid is not None and pid != old_pid and serves(client, vm, service)

    return wait_until(ok, timeout, f"{service} serving from a new process")


def pid_when_up(g: Guardiand, vm: VM, service: str) -> int:
    """The pid of ``service`` once guardiand says it is up."""
    g.wait_state(service, "up")
    pid = vm.pid(service)
    assert pid is not None
    return pid


def history(entry: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(h["from"], h["to"], h["reason"]) for h in entry["history"]]


# --------------------------------------------------------------------------- tests
SERVICES = ["apache2", "named", "exim4"]


@pytest.mark.parametrize("service", SERVICES)
def test_sigkill_is_restarted_by_guardiand(
    gclient: Host, gvm: VM, start_guardiand: Callable[..., Guardiand], service: str
) -> None:
    g = start_guardiand()
    old = pid_when_up(g, gvm, service)
    gvm.signal(service, signal.SIGKILL, group=True)
    took = serving_again(gclient, gvm, service, old, timeout=10)
    entry = g.wait_state(service, "recovering", "up")
    assert entry["restarts_total"] == 1, entry
    assert entry["restarts_used"] == 1
    # the crash was seen through the process (pidfd/event), not after probe failures
    reasons = " | ".join(r for _, _, r in history(entry))
    assert f"process {old} exited" in reasons, reasons
    assert f"restarting {service}:" in g.log()
    assert took < 5.0, f"{service} took {took:.2f} s"
    print(f"{service}: SIGKILL -> serving again in {took:.3f} s")


@pytest.mark.parametrize("service", SERVICES)
def test_sigstop_hung_service_is_restarted(
    gclient: Host, gvm: VM, start_guardiand: Callable[..., Guardiand], service: str
) -> None:
    g = start_guardiand()
    old = pid_when_up(g, gvm, service)
    gvm.signal(service, signal.SIGSTOP, group=True)
    try:
        took = serving_again(gclient, gvm, service, old, timeout=20)
    finally:
        # if guardiand did not get rid of it, do not leave a stopped group behind
        try:
            os.killpg(old, signal.SIGCONT)
        except ProcessLookupError:
            pass
    entry = g.service(service)
    assert entry["restarts_total"] >= 1, entry
    reasons = " | ".join(r for _, _, r in history(entry))
    assert "CRITICAL" in reasons, reasons
    assert not os.path.exists(f"/proc/{old}"), "the hung process is still there"
    print(f"{service}: SIGSTOP -> serving again in {took:.3f} s")


def test_broken_config_spends_budget_then_ladder_then_recovers(
    gclient: Host, gvm: VM, start_guardiand: Callable[..., Guardiand]
) -> None:
    g = start_guardiand(make_config(budget=2))
    g.wait_state("apache2", "up")
    gvm.break_apache_config()
    gvm.signal("apache2", signal.SIGKILL, group=True)
    entry = g.wait_state("apache2", "exhausted", timeout=20)
    assert entry["restarts_used"] == 2, entry
    assert entry["verdict"] == "CRITICAL"
    assert entry["next_action"], entry   # it says what it will do next

    # the ladder: exec, then alert, in that order, with the incident in the env
    def read_env(path: str) -> dict[str, str]:
        text = gvm.read_file(path)
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    wait_until(lambda: gvm.run(["test", "-s", f"{ALERT_OUT}.apache2"], check=False)
               .returncode == 0, 10, "alert hook output")
    exec_env = read_env(f"{LADDER_EXEC_OUT}.apache2")
    alert_env = read_env(f"{ALERT_OUT}.apache2")
    assert exec_env["GUARDIAN_SERVICE"] == "apache2"
    assert exec_env["GUARDIAN_ACTION"] == "exec"
    assert alert_env["GUARDIAN_ACTION"] == "alert"
    assert exec_env["GUARDIAN_RESTARTS"] == "2"
    assert exec_env["GUARDIAN_BUDGET"] == "2"
    assert "supervisord:apache2" in exec_env["GUARDIAN_UNIT"]
    assert "ALERT apache2" in g.log()
    assert not serves(gclient, gvm, "apache2")

    # the other services were left alone
    for other in ("named", "exim4"):
        assert g.service(other)["restarts_total"] == 0

    # an operator fixes the config: guardiand brings it back by itself
    gvm.fix_apache_config()
    wait_until(lambda: serves(gclient, gvm, "apache2"), 20, "apache2 back after the fix")
    g.wait_state("apache2", "up", timeout=10)


def test_wrong_zone_restart_does_not_help_then_recovers(
    gclient: Host, gvm: VM, start_guardiand: Callable[..., Guardiand]
) -> None:
    g = start_guardiand(make_config(budget=2))
    g.wait_state("named", "up")
    gvm.serve_wrong_zone()   # named reloads the zone: answers, but wrong
    entry = g.wait_state("named", "exhausted", timeout=30)
    assert entry["restarts_used"] == 2
    verdicts = [c["detail"] for c in entry["checks"]]
    assert any(VIP in (d or "") for d in verdicts), verdicts   # says what it expected
    # restarting did not help: named is running (a fresh pid) and still answers wrong
    assert not serves(gclient, gvm, "named")
    assert gvm.state("named") == "RUNNING"
    wait_until(lambda: gvm.run(["test", "-s", f"{ALERT_OUT}.named"], check=False)
               .returncode == 0, 10, "alert hook output")
    # the right zone comes back on disk; guardian's slow retry restart picks it up
    gvm.serve_right_zone(reload=False)
    g.wait_state("named", "up", timeout=30)
    assert serves(gclient, gvm, "named")


def test_killed_supervisord_is_restarted_and_services_come_back(
    gclient: Host, gvm: VM, start_guardiand: Callable[..., Guardiand]
) -> None:
    g = start_guardiand(make_config(supervise_supervisord=True))
    g.wait_state("supervisord", "up")
    old = int(gvm.read_file("/run/supervisord.pid"))
    os.kill(old, signal.SIGKILL)
    g.wait(lambda st: any(s["name"] == "supervisord" and s["restarts_total"] == 1
                          and s["state"] in ("recovering", "up") for s in st["services"]),
           timeout=10, what="supervisord restarted")
    new = int(gvm.read_file("/run/supervisord.pid"))
    assert new != old
    # every service ends up RUNNING under the new supervisord, serving, "up" in
    # guardiand, which watches the new processes (not the orphans of the old one)
    def settled(service: str) -> bool:
        entry = g.service(service)
        return (gvm.state(service) == "RUNNING" and entry["state"] == "up"
                and entry["pid"] == gvm.pid(service) and serves(gclient, gvm, service))

    for service in SERVICES:
        wait_until(lambda s=service: settled(s), 30, f"{service} settled")  # type: ignore[misc]
    g.wait_state("supervisord", "up", timeout=10)
    info = gvm.supervisor.all_process_info()
    assert all(i.statename == "RUNNING" for i in info), info


def test_status_command_in_the_vm(gvm: VM, start_guardiand: Callable[..., Guardiand]) -> None:
    g = start_guardiand()
    out = g.cli("status")
    assert out.returncode == 0, out.stderr
    for service in SERVICES:
        assert service in out.stdout
    assert "SERVICE" in out.stdout.upper()
    one = g.cli("status", "apache2")
    assert one.returncode == 0 and "http://127.0.0.1/" in one.stdout, one.stdout
    js = g.cli("status", "--json")
    import json

    data = json.loads(js.stdout)
    assert sorted(s["name"] for s in data["services"]) == sorted(SERVICES)
    # the control socket is root-only
    mode = os.stat(g.socket).st_mode & 0o777
    assert mode == 0o600, oct(mode)


def test_incident_timeline_and_metrics(
    gclient: Host, gvm: VM, start_guardiand: Callable[..., Guardiand]
) -> None:
    """SIGKILL apache2: the journal's timeline has the incident, its phases add up
    to the outage the client saw (give or take a probe interval), and a scrape of the
    metrics endpoint parses and counts the restart."""
    import json
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    config = make_config().replace(
        'hook_timeout = "5s"\n', 'hook_timeout = "5s"\nmetrics_listen = "127.0.0.1:9817"\n')
    g = start_guardiand(config)
    g.wait_state("apache2", "up")
    old = gvm.pid("apache2")
    assert old is not None
    t0, wall0 = time.monotonic(), time.time()
    gvm.signal("apache2", signal.SIGKILL, group=True)
    outage = serving_again(gclient, gvm, "apache2", old, timeout=10)
    g.wait_state("apache2", "up", timeout=10)

    out = g.cli("events", "--service", "apache2", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    # the VM's journal survives guardiand restarts: earlier tests' incidents are there too
    done = [i for i in doc["incidents"] if not i["open"] and i["start"] >= wall0 - 0.1]
    assert len(done) == 1, doc
    kinds = [r["kind"] for r in done[0]["records"]]
    for kind in ("unit_down", "restart_issued", "restart_done", "recovered"):
        assert kind in kinds, kinds
    from guardian._timeline import phases

    ph = phases(done[0]["records"])
    assert done[0]["phases"]["total"] == ph.total
    parts = ph.detect + ph.decide + ph.act + ph.serving
    assert abs(parts - ph.total) < 1e-6, ph
    # guardian's "serving again" is its first OK probe after the restart (probes run
    # at once after a restart, then every interval/5 until up): close to the client's
    assert abs(ph.total - outage) < 0.4, (ph, outage)
    text = g.cli("events").stdout
    assert "apache2" in text and "restart" in text
    print(f"outage seen by the client {outage:.3f} s; timeline {ph}; "
          f"{time.monotonic() - t0:.1f} s in all")

    def scrape() -> str:
        with urllib.request.urlopen("http://127.0.0.1:9817/metrics", timeout=2) as resp:
            return str(resp.read().decode())

    body = gvm.call(scrape)
    families = {f.name: f for f in text_string_to_metric_families(body)}
    restarts = [s for s in families["guardian_restarts"].samples
                if s.name == "guardian_restarts_total" and s.labels.get("service") == "apache2"]
    assert restarts and sum(s.value for s in restarts) >= 1, restarts
    assert "guardian_probe_duration_seconds" in families
