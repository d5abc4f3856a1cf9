"""supervisord event listener that forwards process state changes to guardiand.

supervisord runs it (see ``guardian.backends.supervisord.listener_config_snippet``)::

    [eventlistener:guardian]
    command=/usr/bin/python3 -m guardian.backends.listener --socket /run/guardian/events.sock
    events=PROCESS_STATE

It speaks supervisord's event-listener protocol with ``supervisor.childutils``
on stdin/stdout and sends each event as one JSON datagram to a unix datagram
socket where guardiand listens.  The send never blocks: if guardiand is not
listening, or is not keeping up, the event is dropped (guardiand also polls
status and watches pids) and the event is still acknowledged, so supervisord
is never held up and never re-sends.

Only the standard library and ``supervisor`` are used, so this file also runs
as a plain script.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Sequence
from typing import IO, Any

from supervisor import childutils

DEFAULT_SOCKET = "/run/guardian/events.sock"

_INT_FIELDS = ("pid", "expected", "tries", "serial", "poolserial")


def parse_event(header_line: str, payload: str) -> dict[str, Any]:
    """An event (header line and payload from supervisord) as a flat dict.

    ``eventname``, ``serial``, ``pool`` from the header; ``processname``,
    ``groupname``, ``from_state``, ``pid``, ``expected``, ``tries`` ... from
    the payload's first line; numbers as ints.
    """
    headers = childutils.get_headers(header_line)
    message: dict[str, Any] = {
        "eventname": headers.get("eventname", ""),
        "serial": headers.get("serial", ""),
        "pool": headers.get("pool", ""),
        "poolserial": headers.get("poolserial", ""),
    }
    first_line = payload.split("\n", 1)[0]
    if first_line.strip():
        body, _ = childutils.eventdata(payload + "\n")
        message.update(body)
    for key in _INT_FIELDS:
        value = message.get(key)
        if isinstance(value, str) and value.isdigit():
            message[key] = int(value)
    return message


class Forwarder:
    """Sends datagrams to guardiand without ever blocking; remembers why not."""

    def __init__(self, path: str, log: IO[str]) -> None:
        self.path = path
        self.log = log
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.last_problem = ""
        self.sent = 0
        self.dropped = 0

    def send(self, message: dict[str, Any]) -> bool:
        data = json.dumps(message, separators=(",", ":")).encode()
        try:
            self.sock.sendto(data, self.path)
        except BlockingIOError:
            problem = "guardiand is not keeping up; dropping events"
        except (FileNotFoundError, ConnectionRefusedError):
            problem = "guardiand is not listening; dropping events"
        except OSError as exc:
            problem = f"cannot send events: {exc.strerror or exc}"
        else:
            self.sent += 1
            if self.last_problem:
                self.note(f"delivering events to {self.path} again")
                self.last_problem = ""
            return True
        self.dropped += 1
        if problem != self.last_problem:  # say it once, not per event
            self.note(f"{problem} ({self.path})")
            self.last_problem = problem
        return False

    def note(self, text: str) -> None:
        self.log.write(f"guardian listener: {text}\n")
        self.log.flush()

    def close(self) -> None:
        self.sock.close()


def serve(forwarder: Forwarder, stdin: IO[bytes], stdout: IO[str]) -> int:
    """The protocol loop: READY, read one event, forward it, OK; until EOF."""
    while True:
        childutils.listener.ready(stdout)
        header_line = stdin.readline()
        if not header_line:
            return 0  # supervisord went away
        text = header_line.decode("utf-8", "replace")
        try:
            length = int(childutils.get_headers(text)["len"])
            payload = stdin.read(length).decode("utf-8", "replace")
        except (KeyError, ValueError) as exc:
            forwarder.note(f"unreadable event header {text.strip()!r}: {exc}")
            childutils.listener.ok(stdout)
            continue
        try:
            message = parse_event(text, payload)
        except ValueError as exc:
            forwarder.note(f"unreadable event {payload[:200]!r}: {exc}")
        else:
            forwarder.send(message)
        childutils.listener.ok(stdout)  # always: never make supervisord re-send


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guardian.backends.listener",
        description="supervisord event listener forwarding PROCESS_STATE events to guardiand")
    parser.add_argument("--socket", default=DEFAULT_SOCKET,
                        help=f"guardiand's event socket (default {DEFAULT_SOCKET})")
    args = parser.parse_args(argv)
    forwarder = Forwarder(args.socket, sys.stderr)
    try:
        return serve(forwarder, sys.stdin.buffer, sys.stdout)
    except KeyboardInterrupt:
        return 0
    finally:
        forwarder.close()


if __name__ == "__main__":
    sys.exit(main())
