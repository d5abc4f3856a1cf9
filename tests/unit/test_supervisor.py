"""The supervisor core with real processes: guardian (in-process through the
library API, or ``guardian run`` as a subprocess) watching tiny HTTP servers run
by a private supervisord or by the ``command`` backend, probed over 127.0.0.1.

Every process a test starts is killed by pid at the end (see the fixtures).
Waits poll the supervisor's status against a deadline.  Timings are printed
(run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from unit_helpers import free_port, kill_all, pids_in, serving, until, wait_for

from checks import Check, CheckResult, Options, Status
from guardian import (
    CheckSpec,
    GuardianSpec,
    RestartPolicy,
    ServiceSpec,
    Supervisor,
    config,
)
from guardian._control import request
from guardian.backends import UnitEvent, UnitState
from guardian.backends._proc import pid_alive

if TYPE_CHECKING:
    from conftest import SupervisordFactory, SupervisordProc

PY = sys.executable
Json = dict[str, Any]


# ----------------------------------------------------------------------------- helpers
def svc(sup: Supervisor, name: str) -> Json:
    for s in sup.status()["services"]:
        if s["name"] == name:
            return dict(s)
    raise AssertionError(f"no service {name!r} in status")


def in_state(sup: Supervisor, name: str, state: str) -> Json | None:
    s = svc(sup, name)
    return s if s["state"] == state else None


def transitions(s: Json) -> list[tuple[str, str, str]]:
    return [(h["from"], h["to"], h["reason"]) for h in s["history"]]


@contextlib.asynccontextmanager
async def supervising(spec: GuardianSpec, **kwargs: Any) -> AsyncIterator[Supervisor]:
    """Run a Supervisor for the body; stop it and wait for it at the end."""
    kwargs.setdefault("control", False)
    sup = Supervisor(spec, **kwargs)
    task = asyncio.create_task(sup.run(), name="supervisor")
    ready = asyncio.create_task(sup.ready.wait())
    await asyncio.wait({task, ready}, timeout=10.0, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()
        raise AssertionError("Supervisor.run() returned before it was ready")
    assert ready.done(), "Supervisor did not become ready"
    try:
        yield sup
    finally:
        sup.stop()
        async with asyncio.timeout(10.0):
            await task


def web_program(port: int, flag: Path) -> str:
    """A supervisord program serving HTTP on ``port`` -- that exits at once
    (cannot start) while the file ``flag`` exists."""
    return f"""\
command=sh -c 'test -e {flag} && exit 1; exec {PY} -m http.server --bind 127.0.0.1 {port}'
autostart=true
autorestart=false
startsecs=0
startretries=0
stopwaitsecs=5
"""


def web_programs(factory: SupervisordFactory, **flags: Path) -> SupervisordProc:
    """A supervisord running a :func:`web_program` per keyword (name=flag), each on
    a free port noted in ``ports``; returns once they all serve."""
    ports = {name: free_port() for name in flags}
    sd = factory({name: web_program(ports[name], flag) for name, flag in flags.items()},
                 ready=lambda: all(serving(port) for port in ports.values()))
    sd.ports.update(ports)
    return sd


def guardian_toml(sd: SupervisordProc, services: str, guardian_extra: str = "") -> str:
    return f"""\
[guardian]
control_socket = "{sd.dir}/g.sock"
state_dir = "{sd.dir}/state"
{guardian_extra}

[backends.supervisord]
url = "{sd.url}"
event_socket = "{sd.event_socket}"

{services}
"""


def http_service(name: str, port: int, *, backend: str = "supervisord", rise: int = 2,
                 fall: int = 2, interval: str = "100ms", budget: int = 3,
                 exhausted_retry: str = "5m", start_grace: str = "1s", extra: str = "",
                 checks: str = "") -> str:
    return f"""\
[services.{name}]
backend = "{backend}"
rise = {rise}
fall = {fall}
start_grace = "{start_grace}"
{extra}

[services.{name}.restart]
budget = {budget}
window = "1m"
backoff = "100ms"
backoff_max = "200ms"
jitter = 0
timeout = "5s"
exhausted_retry = "{exhausted_retry}"

[[services.{name}.checks]]
type = "http"
url = "http://127.0.0.1:{port}/"
interval = "{interval}"
timeout = "500ms"
{checks}
"""


@dataclass
class CommandServer:
    """An HTTP server started by a ``command`` backend start_command (daemonised,
    its pid in ``pidfile``); every pid it ever had is in ``allpids``."""

    port: int
    dir: Path

    @property
    def pidfile(self) -> Path:
        return self.dir / f"srv{self.port}.pid"

    @property
    def allpids(self) -> Path:
        return self.dir / "allpids"

    def start_command(self) -> list[str]:
        return ["sh", "-c",
                f"{PY} -m http.server --bind 127.0.0.1 {self.port} "
                f">>{self.dir}/srv{self.port}.log 2>&1 & "
                f"echo $! > {self.pidfile}; echo $! >> {self.allpids}"]

    def toml(self) -> str:
        return (f"start_command = {json.dumps(self.start_command())}\n"
                f'pidfile = "{self.pidfile}"\n')

    def start(self) -> int:
        subprocess.run(self.start_command(), check=True, timeout=10)
        wait_for(lambda: serving(self.port), 10.0, f"command server on {self.port}")
        return self.pid()

    def pid(self) -> int:
        return int(self.pidfile.read_text().split()[0])


@pytest.fixture
def command_servers(tmp_path: Path) -> Iterator[Callable[[], CommandServer]]:
    """``command_servers()`` -> a new CommandServer on a free port; all of their
    processes are killed at the end."""
    made: list[CommandServer] = []

    def make() -> CommandServer:
        srv = CommandServer(free_port(), tmp_path)
        made.append(srv)
        return srv

    try:
        yield make
    finally:
        kill_all(pids_in(tmp_path / "allpids"))


@pytest.fixture(autouse=True)
def guardian_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """guardian's log at INFO, shown when a test fails."""
    caplog.set_level(logging.INFO, logger="guardian")
    return caplog


# ----------------------------------------------------------------------------- (a) crashes
def test_sigkill_is_restarted_quickly(supervisord_factory: SupervisordFactory,
                                      tmp_path: Path) -> None:
    sd = web_programs(supervisord_factory, web=tmp_path / "broken")
    port = sd.ports["web"]
    spec = config.loads(guardian_toml(sd, http_service("web", port)), "guardian.toml")

    async def scenario() -> None:
        async with supervising(spec) as sup:
            show = sup.status
            before = await until(lambda: in_state(sup, "web", "up"), 5.0, "web up", show)
            old = before["pid"]
            assert old == sd.pid("web")
            assert before["restarts_total"] == 0 and before["verdict"] == "OK"

            os.kill(old, signal.SIGKILL)
            t0 = time.monotonic()
            after = await until(
                lambda: (s := svc(sup, "web"))["state"] == "up" and s["pid"] not in (None, old)
                and s,
                5.0, "web up again with a new pid", show)
            back = time.monotonic() - t0
            assert await asyncio.to_thread(serving, port)
            assert after["pid"] == sd.pid("web")
            assert after["restarts_total"] == 1
            assert after["restarts_used"] == 1
            hist = transitions(after)
            assert hist[0] == ("starting", "up", "all checks passing")
            (f1, t1, why), (f2, t2, restarted), (f3, t3, passing) = hist[1:4]
            assert (f1, t1) == ("up", "restarting")
            assert "exited" in why.lower() and "budget 1/3" in why, why
            assert (f2, t2) == ("restarting", "recovering")
            assert restarted.startswith("restarted: supervisord:web in ")
            assert f"pid {after['pid']}" in restarted
            assert (f3, t3, passing) == ("recovering", "up", "all checks passing")
            print(f"\nsupervisord program SIGKILLed -> guardian UP again: {back * 1000:.0f} ms")
            assert back < 2.0

    asyncio.run(scenario())


def test_command_backend_crash_seen_by_the_checks(
        command_servers: Callable[[], CommandServer]) -> None:
    """No pid watching: the HTTP check notices (failing), then the restart."""
    srv = command_servers()
    first_pid = srv.start()
    spec = config.loads(http_service("web", srv.port, backend="command", fall=2,
                                     extra=srv.toml() + "watch_pid = false\n"))

    async def scenario() -> None:
        async with supervising(spec) as sup:
            show = sup.status
            await until(lambda: in_state(sup, "web", "up"), 5.0, "web up", show)
            os.kill(first_pid, signal.SIGKILL)
            t0 = time.monotonic()
            after = await until(
                lambda: (s := svc(sup, "web"))["state"] == "up" and s["restarts_total"] == 1
                and s, 5.0, "web up again", show)
            back = time.monotonic() - t0
            new_pid = srv.pid()
            assert new_pid != first_pid and pid_alive(new_pid) and not pid_alive(first_pid)
            assert await asyncio.to_thread(serving, srv.port)
            states = [(f, t) for f, t, _ in transitions(after)]
            assert states == [("starting", "up"), ("up", "failing"), ("failing", "restarting"),
                              ("restarting", "recovering"), ("recovering", "up")], states
            reasons = [r for _, _, r in transitions(after)]
            assert reasons[1].startswith("1/2 CRITICAL (")
            assert reasons[2].startswith("2/2 CRITICAL (") and "budget 1/3" in reasons[2]
            assert reasons[3].startswith("restarted: command:web in ")
            assert after["unit"] == "command:web" and after["backend"] == "command"
            print(f"\ncommand service SIGKILLed, seen by HTTP checks -> UP again: "
                  f"{back * 1000:.0f} ms")

    asyncio.run(scenario())


# ----------------------------------------------------------------------------- (b) ladder
def test_budget_spent_runs_the_ladder_then_recovers_by_itself(
        supervisord_factory: SupervisordFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    flag = tmp_path / "broken"
    sd = web_programs(supervisord_factory, web=flag)
    port = sd.ports["web"]
    exec_env, alert_env, runs = tmp_path / "exec.env", tmp_path / "alert.env", tmp_path / "runs"

    def hook(out: Path, tag: str) -> str:
        return json.dumps(["sh", "-c", f"env | grep '^GUARDIAN_' | sort > {out}.tmp && "
                                       f"mv {out}.tmp {out}; echo {tag} >> {runs}"])

    ladder = f'ladder = [{{ action = "exec", command = {hook(exec_env, "exec")} }}, "alert"]\n'
    text = guardian_toml(
        sd, http_service("web", port, budget=2, exhausted_retry="1s", start_grace="3s",
                         extra=ladder),
        guardian_extra=f"alert_command = {hook(alert_env, 'alert')}")
    spec = config.loads(text, "guardian.toml")

    def env_of(path: Path) -> dict[str, str]:
        return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)

    async def scenario() -> None:
        async with supervising(spec, control=True) as sup:
            show = sup.status
            await until(lambda: in_state(sup, "web", "up"), 5.0, "web up", show)
            flag.touch()                      # from now on the program exits at once
            os.kill(sd.pid("web"), signal.SIGKILL)
            t0 = time.monotonic()
            ex = await until(lambda: in_state(sup, "web", "exhausted"), 8.0, "exhausted", show)
            await until(lambda: runs.exists() and len(runs.read_text().split()) == 2, 5.0,
                        "the exec and alert rungs", show)
            spent = time.monotonic() - t0
            print(f"\nbroken program: budget spent and ladder run after {spent:.2f} s")
            # a restarted program that dies at once is seen at once, not after the grace
            assert spent < 2.0
            assert ex["verdict"] == "CRITICAL"
            assert ex["restarts_used"] == 2 and ex["restart_budget"] == 2
            # (the reason of the move; the current ``reason`` may already be a later
            # report of the same death, e.g. supervisord's EXITED event)
            to_exhausted = [r for _, t, r in transitions(ex) if t == "exhausted"]
            assert to_exhausted[-1].startswith("restart budget spent (2/2 in 60s): ")
            assert "retry restart in" in ex["next_action"]
            assert runs.read_text().split() == ["exec", "alert"]   # in ladder order

            env = env_of(exec_env)
            assert env["GUARDIAN_SERVICE"] == "web"
            assert env["GUARDIAN_ACTION"] == "exec"
            assert env["GUARDIAN_STATE"] == "exhausted"
            assert env["GUARDIAN_RESTARTS"] == "2" and env["GUARDIAN_BUDGET"] == "2"
            assert env["GUARDIAN_UNIT"] == "supervisord:web"
            assert env["GUARDIAN_REASON"].startswith("restart budget spent (2/2 in 60s)")
            assert float(env["GUARDIAN_INCIDENT_AGE"]) > 0
            assert f"http=CRITICAL: http://127.0.0.1:{port}/" in env["GUARDIAN_VERDICTS"]
            alert = env_of(alert_env)
            assert alert["GUARDIAN_ACTION"] == "alert"
            assert alert["GUARDIAN_REASON"] == env["GUARDIAN_REASON"]
            assert any(r.getMessage().startswith("ALERT web: restart budget spent")
                       for r in caplog.records)
            # `guardian status` says so, with exit status 2 (CRITICAL)
            table = await asyncio.to_thread(run_cli, "status", "--socket", str(sd.dir / "g.sock"))
            assert table.returncode == 2, table.stdout + table.stderr
            assert table.stdout.splitlines()[2].split()[:3] == ["web", "EXHAUSTED", "CRITICAL"]
            assert "\n  web: " in table.stdout   # the reason, under the table

            # still probing, and retrying slowly (the ladder does not run again)
            runs_then = svc(sup, "web")["checks"][0]["runs"]
            total_then = svc(sup, "web")["restarts_total"]
            await until(lambda: svc(sup, "web")["restarts_total"] > total_then, 3.0,
                        "a slow retry", show)
            await until(lambda: in_state(sup, "web", "exhausted"), 3.0, "exhausted again",
                        show)
            assert svc(sup, "web")["checks"][0]["runs"] > runs_then + 5
            assert runs.read_text().split() == ["exec", "alert"]

            # fixed: the next slow retry brings it back, no human needed
            flag.unlink()
            t1 = time.monotonic()
            up = await until(lambda: in_state(sup, "web", "up"), 5.0, "web up after fix", show)
            assert await asyncio.to_thread(serving, port)
            assert up["verdict"] == "OK" and up["pid"] == sd.pid("web")
            assert transitions(up)[-1][:2] == ("recovering", "up")
            print(f"program fixed -> UP through a slow retry: {time.monotonic() - t1:.2f} s")
            assert runs.read_text().split() == ["exec", "alert"]

    asyncio.run(scenario())


# ----------------------------------------------------------------------------- (c) requires
def test_required_service_down_blocks_without_restarts(
        supervisord_factory: SupervisordFactory, tmp_path: Path,
        command_servers: Callable[[], CommandServer]) -> None:
    """web (command backend) requires db (supervisord): while db cannot start,
    web's failing link check blocks it instead of restarting it."""
    flag = tmp_path / "db-broken"
    sd = web_programs(supervisord_factory, db=flag)
    db_port = sd.ports["db"]
    web = command_servers()
    web_pid = web.start()
    link_check = f"""
[[services.web.checks]]
type = "tcp"
name = "db-link"
host = "127.0.0.1"
port = {db_port}
interval = "100ms"
timeout = "500ms"
"""
    text = guardian_toml(
        sd,
        http_service("db", db_port, rise=3, budget=1, exhausted_retry="500ms")
        + http_service("web", web.port, backend="command",
                       extra=web.toml() + 'requires = ["db"]\n', checks=link_check))
    spec = config.loads(text, "guardian.toml")
    assert spec.start_order() == ["db", "web"]

    async def scenario() -> None:
        async with supervising(spec) as sup:
            show = sup.status
            await until(lambda: in_state(sup, "db", "up") and in_state(sup, "web", "up"),
                        5.0, "db and web up", show)
            assert svc(sup, "web")["pid"] == web_pid
            flag.touch()
            os.kill(sd.pid("db"), signal.SIGKILL)
            blocked = await until(lambda: in_state(sup, "web", "blocked"), 5.0, "web blocked",
                                  show)
            assert blocked["blocked_by"] == ["db"]
            assert blocked["requires"] == ["db"]
            assert "blocked by dependency db (down)" in blocked["reason"]
            assert blocked["verdict"] == "CRITICAL"
            assert blocked["next_action"] == "wait for db"
            # stays blocked through db's slow retries: never restarted
            db_total = svc(sup, "db")["restarts_total"]
            await until(lambda: svc(sup, "db")["restarts_total"] > db_total, 3.0,
                        "a slow retry of db", show)
            now = svc(sup, "web")
            assert now["state"] == "blocked" and now["restarts_total"] == 0, now
            assert web.pid() == web_pid and pid_alive(web_pid)
            assert await asyncio.to_thread(serving, web.port)

            flag.unlink()
            await until(lambda: in_state(sup, "db", "up") and in_state(sup, "web", "up"),
                        5.0, "db and web up again", show)
            final = svc(sup, "web")
            assert final["blocked_by"] == [] and final["restarts_total"] == 0
            assert web.pid() == web_pid

    asyncio.run(scenario())


# ----------------------------------------------------------------------------- (d) control
def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "guardian", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_control_socket_and_status_cli(supervisord_factory: SupervisordFactory,
                                       tmp_path: Path) -> None:
    sd = web_programs(supervisord_factory, web=tmp_path / "broken")
    port = sd.ports["web"]
    spec = config.loads(guardian_toml(sd, http_service("web", port)), "guardian.toml")
    sock = sd.dir / "g.sock"

    async def scenario() -> None:
        async with supervising(spec, control=True) as sup:
            await until(lambda: in_state(sup, "web", "up"), 5.0, "web up", sup.status)
            assert stat.S_ISSOCK(os.stat(sock).st_mode)
            assert os.stat(sock).st_mode & 0o777 == 0o600

            reply = await asyncio.to_thread(request, sock, "ping")
            assert reply == {"ok": True, "pong": True}
            reply = await asyncio.to_thread(request, sock, "status")
            assert reply["ok"] is True
            status = reply["status"]
            assert status["pid"] == os.getpid()
            assert status["config"] == ["guardian.toml"]
            assert status["last_reload_error"] is None
            (web,) = status["services"]
            assert (web["name"], web["state"], web["verdict"]) == ("web", "up", "OK")
            assert web["pid"] == sd.pid("web")
            assert web["checks"][0]["status"] == "OK" and web["checks"][0]["stale"] is False
            reply = await asyncio.to_thread(request, sock, "frobnicate")
            assert reply == {"ok": False, "error": "unknown command 'frobnicate'"}
            reply = await asyncio.to_thread(request, sock, "reload")
            assert reply["ok"] is False and "not started from a configuration file" \
                in reply["error"]

            table = await asyncio.to_thread(run_cli, "status", "--socket", str(sock))
            assert table.returncode == 0, table.stderr
            lines = table.stdout.splitlines()
            assert lines[0].startswith(f"guardiand 0.1.0 pid {os.getpid()}, up ")
            assert lines[1].split()[:4] == ["SERVICE", "STATE", "VERDICT", "AGE"]
            assert lines[2].split()[:3] == ["web", "UP", "OK"]
            assert "0/3" in lines[2]

            js = await asyncio.to_thread(run_cli, "status", "--socket", str(sock), "--json")
            assert js.returncode == 0, js.stderr
            parsed = json.loads(js.stdout)
            assert [s["name"] for s in parsed["services"]] == ["web"]
            assert parsed["services"][0]["state"] == "up"

            one = await asyncio.to_thread(run_cli, "status", "web", "--socket", str(sock))
            assert one.returncode == 0, one.stderr
            assert one.stdout.startswith("web: UP (OK) for ")
            assert "unit:        supervisord:web (backend supervisord, pid " in one.stdout

        assert not sock.exists()
        gone = await asyncio.to_thread(run_cli, "status", "--socket", str(sock))
        assert gone.returncode == 3
        assert "no such socket (is guardiand running?)" in gone.stderr

    asyncio.run(scenario())


# ----------------------------------------------------------------------------- (e) reload
def test_reload_by_diff_keeps_unchanged_services(
        supervisord_factory: SupervisordFactory, tmp_path: Path) -> None:
    sd = web_programs(supervisord_factory, web=tmp_path / "b1", app=tmp_path / "b2")
    web_port, app_port = sd.ports["web"], sd.ports["app"]

    def spec_with(app_interval: str, with_app: bool = True) -> GuardianSpec:
        services = http_service("web", web_port)
        if with_app:
            services += http_service("app", app_port, interval=app_interval)
        return config.loads(guardian_toml(sd, services), "guardian.toml")

    async def scenario() -> None:
        async with supervising(spec_with("100ms")) as sup:
            show = sup.status
            await until(lambda: in_state(sup, "web", "up") and in_state(sup, "app", "up"),
                        5.0, "both up", show)
            old = sd.pid("web")
            os.kill(old, signal.SIGKILL)
            await until(lambda: (s := svc(sup, "web"))["state"] == "up"
                        and s["restarts_total"] == 1 and s["pid"] != old, 5.0,
                        "web restarted", show)
            web_runner, app_runner = sup.runners["web"], sup.runners["app"]
            web_machine = web_runner.machine
            web_before = svc(sup, "web")
            app_runs = svc(sup, "app")["checks"][0]["runs"]

            sup.reload(spec_with("200ms"))
            assert sup.status()["reloads"] == 1
            # unchanged: the very same runner, machine, counters and history
            assert sup.runners["web"] is web_runner
            assert web_runner.machine is web_machine
            web_after = svc(sup, "web")
            for key in ("state", "restarts_total", "restarts_used", "pid", "reason"):
                assert web_after[key] == web_before[key], key
            assert transitions(web_after) == transitions(web_before)
            assert web_after["since"] >= web_before["since"]
            assert web_after["checks"][0]["runs"] >= web_before["checks"][0]["runs"]
            # changed: a new runner with the new configuration, starting afresh
            new_app = sup.runners["app"]
            assert new_app is not app_runner
            assert new_app.spec.checks[0].interval == 0.2
            fresh = svc(sup, "app")
            assert fresh["state"] == "starting" and fresh["checks"][0]["runs"] < app_runs
            assert fresh["checks"][0]["interval"] == 0.2
            await until(lambda: in_state(sup, "app", "up"), 5.0, "app up again", show)
            # the old runner's tasks are gone
            await until(lambda: all(t.done() for t in app_runner._tasks), 2.0,
                        "the old runner's tasks to end", show)

            # a service removed from the configuration is no longer supervised
            sup.reload(spec_with("200ms", with_app=False))
            assert [s["name"] for s in sup.status()["services"]] == ["web"]
            assert sup.runners["web"] is web_runner
            await until(lambda: all(t.done() for t in new_app._tasks), 2.0,
                        "the removed runner's tasks to end", show)
            assert sd.info("app")["statename"] == "RUNNING"   # not stopped, just unwatched

    asyncio.run(scenario())


def wait_reply(sock: Path, timeout: float, pred: Callable[[Json], bool],
               what: str) -> Json:
    last: Json = {}

    def check() -> Json | None:
        nonlocal last
        try:
            reply = request(sock, "status", timeout=2.0)
        except Exception:  # noqa: BLE001 - not listening yet
            return None
        last = reply.get("status", {})
        return last if pred(last) else None

    try:
        return wait_for(check, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast status: {json.dumps(last, indent=1)}") from None


def by_name(status: Json) -> dict[str, Json]:
    return {s["name"]: s for s in status.get("services", [])}


def all_up(status: Json, *names: str) -> bool:
    services = by_name(status)
    return all(n in services and services[n]["state"] == "up" for n in names)


def test_guardian_run_sighup_reload_and_sigterm(
        supervisord_factory: SupervisordFactory, tmp_path: Path,
        command_servers: Callable[[], CommandServer]) -> None:
    """``guardian run`` as a process: SIGHUP reloads by diff and refuses a broken
    file (the old configuration keeps running); SIGTERM ends it cleanly and
    leaves the supervised programs running."""
    sd = web_programs(supervisord_factory, web=tmp_path / "broken")
    port = sd.ports["web"]
    cmd = command_servers()
    cmd_pid = cmd.start()
    conf = tmp_path / "guardian.toml"

    def write(cmd_interval: str, web_extra: str = "") -> None:
        conf.write_text(guardian_toml(
            sd, http_service("web", port, extra=web_extra)
            + http_service("cmd", cmd.port, backend="command", interval=cmd_interval,
                           extra=cmd.toml()), guardian_extra='log_level = "debug"'))

    write("100ms")
    sock = sd.dir / "g.sock"
    log = tmp_path / "guardiand.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([PY, "-m", "guardian", "--config", str(conf), "run"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        first = wait_reply(sock, 10.0, lambda s: all_up(s, "web", "cmd"), "both up")
        assert first["pid"] == proc.pid and first["reloads"] == 0
        assert os.stat(sock).st_mode & 0o777 == 0o600
        web_since = by_name(first)["web"]["since"]
        t_first = time.monotonic()

        # 1. change cmd only, SIGHUP: web keeps its state; cmd gets the new config
        write("250ms")
        proc.send_signal(signal.SIGHUP)
        st = wait_reply(sock, 5.0, lambda s: s["reloads"] == 1, "the reload")
        assert st["last_reload_error"] is None
        web = by_name(st)["web"]
        assert web["state"] == "up"
        assert web["since"] >= web_since + (time.monotonic() - t_first) - 0.5  # not reset
        assert by_name(st)["cmd"]["checks"][0]["interval"] == 0.25
        wait_reply(sock, 5.0, lambda s: all_up(s, "web", "cmd"), "both up after reload")

        # 2. a broken file: refused, the running configuration stays
        write("250ms", web_extra='watch_pid = "maybe"\n')
        proc.send_signal(signal.SIGHUP)
        st = wait_reply(sock, 5.0, lambda s: s["last_reload_error"] is not None,
                        "the refused reload")
        err = st["last_reload_error"]
        assert err.startswith("reload refused, the running configuration stays:")
        assert "guardian.toml: services.web.watch_pid" in err
        assert st["reloads"] == 1
        assert all_up(st, "web", "cmd")
        runs = by_name(st)["web"]["checks"][0]["runs"]
        wait_reply(sock, 5.0, lambda s: by_name(s)["web"]["checks"][0]["runs"] > runs + 3,
                   "web still probed")
        table = run_cli("status", "--socket", str(sock))
        assert "last reload refused" in table.stdout, table.stdout
        assert "services.web.watch_pid" in table.stdout

        # 3. SIGTERM: exit 0, socket removed, supervised programs untouched
        web_pid = sd.pid("web")
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert proc.wait(10.0) == 0, log.read_text()
        print(f"\nguardian run: SIGTERM -> exited in {(time.monotonic() - t0) * 1000:.0f} ms")
        assert not sock.exists()
        assert not os.path.exists(sd.event_socket)
        assert sd.info("web")["statename"] == "RUNNING" and sd.pid("web") == web_pid
        assert pid_alive(cmd_pid) and cmd.pid() == cmd_pid
        assert serving(port) and serving(cmd.port)
        text = log.read_text()
        assert "reload refused" in text and "guardiand stopped" in text
        assert "Traceback" not in text, text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5.0)


def test_unit_events_about_other_processes_do_not_move_the_watch() -> None:
    spec = config.loads(http_service("svc", free_port(), backend="command",
                                     extra='start_command = ["true"]\n'))
    sleeper = subprocess.Popen(["sleep", "30"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        async def scenario() -> None:
            async with supervising(spec) as sup:
                runner = sup.runners["svc"]
                runner._watch(sleeper.pid)
                await asyncio.sleep(0.05)
                downs = runner.inbox.qsize()
                # a late RUNNING event of a dead process: the watch stays
                runner.unit_event(UnitEvent("svc", UnitState.RUNNING, gone.pid))
                assert runner.pid == sleeper.pid
                # an exit of an older process: not this one's death
                runner.unit_event(UnitEvent("svc", UnitState.EXITED, gone.pid, "old"))
                assert runner.inbox.qsize() == downs
                assert runner.pid == sleeper.pid
                # the watched process dies: seen through its pidfd
                sleeper.kill()
                exited = f"command:svc: process {sleeper.pid} exited"
                await until(lambda: any(exited in r for _, _, r in transitions(svc(sup, "svc"))),
                            3.0, "the exit seen", sup.status)

        asyncio.run(scenario())
    finally:
        sleeper.kill()
        sleeper.wait()


# ----------------------------------------------------------------------------- stale results
class StubbornCheck(Check):
    """An async plug-in that swallows cancellation while ``stuck`` (a bug: it
    keeps its check loop from producing results, so its last one goes stale)."""

    kind = "test-stubborn"

    def __init__(self) -> None:
        self.stuck = False
        self.release = asyncio.Event()

    @classmethod
    def from_options(cls, opts: Options) -> StubbornCheck:
        return cls()

    async def probe(self, deadline: float) -> CheckResult:
        while self.stuck and not self.release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await self.release.wait()
        return CheckResult(Status.OK, "fine")


def test_a_stale_result_is_reported_stale_not_as_its_value() -> None:
    stubborn = StubbornCheck()
    spec = GuardianSpec(services={"svc": ServiceSpec(
        name="svc", backend="command", controller_options={"start_command": ["true"]},
        checks=(CheckSpec("stub", stubborn, interval=0.05, timeout=0.05),),
        rise=2, start_grace=1.0, watch_pid=False, restart=RestartPolicy(budget=0),
        ladder=())})

    async def scenario() -> None:
        async with supervising(spec) as sup:
            try:
                ok = await until(lambda: in_state(sup, "svc", "up"), 5.0, "up", sup.status)
                assert ok["verdict"] == "OK" and ok["checks"][0]["stale"] is False
                stubborn.stuck = True
                stale = await until(lambda: (s := svc(sup, "svc"))["checks"][0]["stale"] and s,
                                    10.0, "the result to go stale", sup.status)
                check = stale["checks"][0]
                # the last value is still shown, marked stale, and is not the verdict
                assert check["status"] == "OK" and check["age"] > 3 * 0.05 + 0.05
                assert stale["verdict"] == "UNKNOWN"
                table = _table(sup)
                assert "UNKNOWN" in table.splitlines()[2]
                from guardian.cli import format_service_detail
                assert " STALE " in format_service_detail(stale)
                stubborn.release.set()
                back = await until(lambda: (s := svc(sup, "svc"))["verdict"] == "OK"
                                   and not s["checks"][0]["stale"] and s, 10.0, "fresh again",
                                   sup.status)
                assert back["state"] == "up"
            finally:
                stubborn.release.set()   # else stopping would wait on the stuck probe

    asyncio.run(scenario())


def _table(sup: Supervisor) -> str:
    from guardian.cli import format_status_table
    return format_status_table(sup.status())
