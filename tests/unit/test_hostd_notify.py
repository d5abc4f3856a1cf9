"""guardian-hostd under systemd's Type=notify: READY once the port is bound, the
watchdog petted from the event loop, STOPPING on SIGTERM; no VM configured is a
valid (if idle) configuration."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from unit_helpers import free_port


def test_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "hostd.toml"
    conf.write_text(f'[hostd]\nlisten = "127.0.0.1:{port}"\nstate_dir = "{tmp_path}/state"\n')
    check = subprocess.run([sys.executable, "-m", "guardian.hostd", "validate", "--config",
                            str(conf)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert "no VM configured" in check.stdout

    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(10)
        env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="1000000")
        env.pop("WATCHDOG_PID", None)
        proc = subprocess.Popen([sys.executable, "-m", "guardian.hostd", "run", "--config",
                                 str(conf)], env=env, stderr=subprocess.PIPE, text=True)
        try:
            ready = sock.recv(4096).decode()
            assert ready.startswith("READY=1"), ready
            # the port is bound by the time READY arrives
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
            pets = 0
            deadline = time.monotonic() + 3
            while pets < 2 and time.monotonic() < deadline:
                if sock.recv(4096).decode() == "WATCHDOG=1":
                    pets += 1
            assert pets >= 2
            proc.send_signal(signal.SIGTERM)
            msgs = []
            while "STOPPING=1" not in msgs:
                msgs.append(sock.recv(4096).decode())
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_decisions_are_counted_for_prometheus(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from guardian._metrics import Metrics
    from guardian.hostd._app import CountingJournal

    metrics = Metrics("test")
    journal = CountingJournal(tmp_path / "journal", metrics)
    journal.append({"decision": "accepted", "vm": "vm01"})
    journal.append({"decision": "rate-limited", "vm": "vm01"})
    journal.append({"decision": "accepted", "vm": "vm02"})
    journal.close()
    fams = {f.name: f for f in text_string_to_metric_families(metrics.text())}
    got = {s.labels["decision"]: s.value for s in fams["guardian_hostd_decisions"].samples
           if s.name.endswith("_total")}
    assert got == {"accepted": 2.0, "rate-limited": 1.0}
    assert len((tmp_path / "journal" / "journal.jsonl").read_text().splitlines()) == 3


def test_hostd_counters_are_exported_on_scrape(tmp_path: Path) -> None:
    """guardian_hostd_events_total follows the engine's and the alerter's in-memory
    counters (refusals before a decision, suppressed alerts), increases only."""
    from prometheus_client.parser import text_string_to_metric_families

    from guardian.hostd import HostdSpec, PolicySpec, VMSpec, build
    from ipfailover._wire import KeyRing

    spec = HostdSpec(source="t", host="127.0.0.1", port=0, state_dir=tmp_path,
                     journal_dir=tmp_path, policy=PolicySpec(), alert_command=("/bin/true",),
                     vms={"vm01": VMSpec(name="vm01", uuid="u-1", key_file=tmp_path / "k",
                                         driver="command", domain="vm01",
                                         destroy_command=("true",), create_command=("true",),
                                         state_command=("true",),
                                         keys=KeyRing({1: b"k" * 32}))})
    hostd = build(spec)

    def events() -> dict[str, float]:
        fams = {f.name: f for f in text_string_to_metric_families(hostd.metrics.text())}
        return {s.labels["event"]: s.value for s in fams["guardian_hostd_events"].samples
                if s.name.endswith("_total")}

    hostd.engine.count("auth_failures")
    hostd.engine.count("auth_failures")
    assert hostd.engine.alerter is not None
    hostd.engine.alerter.counters["alerts_suppressed"] = 3
    assert events() == {"auth_failures": 2.0, "alerts_suppressed": 3.0}
    hostd.engine.count("bad_requests")
    assert events() == {"auth_failures": 2.0, "alerts_suppressed": 3.0, "bad_requests": 1.0}
    hostd.engine.alerter.close(1)
    hostd.journal.close()
