"""guardian's supervisord event listener: the protocol on stdin/stdout, and the
datagrams it forwards (or drops without blocking when nobody listens)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from guardian.backends.listener import Forwarder, parse_event, serve
from guardian.backends.supervisord import event_from_message

READY = "READY\n"
OK = "RESULT 2\nOK"


def envelope(eventname: str, payload: str, serial: int = 21) -> bytes:
    body = payload.encode()
    header = (f"ver:3.0 server:supervisor serial:{serial} pool:guardian poolserial:{serial} "
              f"eventname:{eventname} len:{len(body)}\n")
    return header.encode() + body


def test_parse_event() -> None:
    msg = parse_event("ver:3.0 server:supervisor serial:7 pool:guardian poolserial:3 "
                      "eventname:PROCESS_STATE_EXITED len:60",
                      "processname:web groupname:web from_state:RUNNING expected:0 pid:4242")
    assert msg == {"eventname": "PROCESS_STATE_EXITED", "serial": 7, "pool": "guardian",
                   "poolserial": 3, "processname": "web", "groupname": "web",
                   "from_state": "RUNNING", "expected": 0, "pid": 4242}


def test_serve_forwards_and_acks(short_dir: Path) -> None:
    path = str(short_dir / "ev.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(2.0)
    stdin = io.BytesIO(
        envelope("PROCESS_STATE_EXITED",
                 "processname:web groupname:web from_state:RUNNING expected:0 pid:4242")
        + envelope("PROCESS_STATE_STARTING",
                   "processname:member groupname:grp from_state:EXITED tries:0", 22))
    stdout, log = io.StringIO(), io.StringIO()
    forwarder = Forwarder(path, log)
    try:
        assert serve(forwarder, stdin, stdout) == 0   # EOF: supervisord went away
        first = json.loads(receiver.recv(4096))
        second = json.loads(receiver.recv(4096))
    finally:
        forwarder.close()
        receiver.close()
    # READY, then one RESULT OK per event, READY again after each
    assert stdout.getvalue() == READY + OK + READY + OK + READY
    assert first["pid"] == 4242 and first["eventname"] == "PROCESS_STATE_EXITED"
    ev = event_from_message(json.dumps(second).encode())
    assert ev is not None and ev.unit == "grp:member" and ev.detail == "EXITED -> STARTING"
    assert (forwarder.sent, forwarder.dropped) == (2, 0)
    assert log.getvalue() == ""


def test_serve_acks_when_nobody_listens(short_dir: Path) -> None:
    stdin = io.BytesIO(b"".join(
        envelope("PROCESS_STATE_RUNNING",
                 f"processname:web groupname:web from_state:STARTING pid:{n}", n)
        for n in range(1, 51)))
    stdout, log = io.StringIO(), io.StringIO()
    forwarder = Forwarder(str(short_dir / "nobody.sock"), log)
    t0 = time.monotonic()
    try:
        serve(forwarder, stdin, stdout)
    finally:
        forwarder.close()
    assert time.monotonic() - t0 < 1.0
    assert stdout.getvalue() == READY + (OK + READY) * 50
    assert (forwarder.sent, forwarder.dropped) == (0, 50)
    # said once, not fifty times
    assert log.getvalue().count("not listening") == 1


def test_serve_never_blocks_on_a_full_receiver(short_dir: Path) -> None:
    path = str(short_dir / "ev.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)  # bound, but nobody reads: its queue fills up
    stdin = io.BytesIO(b"".join(
        envelope("PROCESS_STATE_RUNNING",
                 f"processname:web groupname:web from_state:STARTING pid:{n}", n)
        for n in range(1, 3001)))
    stdout, log = io.StringIO(), io.StringIO()
    forwarder = Forwarder(path, log)
    t0 = time.monotonic()
    try:
        serve(forwarder, stdin, stdout)
    finally:
        forwarder.close()
        receiver.close()
    assert time.monotonic() - t0 < 5.0
    assert stdout.getvalue().count(OK) == 3000
    assert forwarder.dropped > 0 and forwarder.sent > 0
    assert "not keeping up" in log.getvalue()


def test_garbage_header_is_acked_and_noted(short_dir: Path) -> None:
    stdin = io.BytesIO(b"this is not a header\n"
                       + envelope("PROCESS_STATE_RUNNING", "processname:a:b groupname:x"))
    stdout, log = io.StringIO(), io.StringIO()
    forwarder = Forwarder(str(short_dir / "nobody.sock"), log)
    try:
        serve(forwarder, stdin, stdout)
    finally:
        forwarder.close()
    assert stdout.getvalue() == READY + OK + READY + OK + READY
    assert "unreadable event header" in log.getvalue()
    assert "unreadable event " in log.getvalue()


def test_runs_as_a_module(short_dir: Path) -> None:
    """``python -m guardian.backends.listener`` speaks the protocol on real pipes."""
    path = str(short_dir / "ev.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(10.0)
    proc = subprocess.Popen([sys.executable, "-m", "guardian.backends.listener",
                             "--socket", path], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        assert os.read(proc.stdout.fileno(), 100) == b"READY\n"
        proc.stdin.write(envelope("PROCESS_STATE_FATAL",
                                  "processname:web groupname:web from_state:BACKOFF"))
        proc.stdin.flush()
        msg = json.loads(receiver.recv(4096))
        assert proc.stdout.read(len(OK + READY)) == (OK + READY).encode()
        proc.stdin.close()
        assert proc.wait(10.0) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        receiver.close()
    assert msg["eventname"] == "PROCESS_STATE_FATAL" and msg["processname"] == "web"
