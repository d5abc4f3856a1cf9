"""A stand-in xenstored on unix sockets, for tests and the lab.

``<dir>/socket`` is dom0's (privileged).  Every guest domain gets
``<dir>/domain-<domid>.sock``: a connection's domain id is the socket it came in on
(the socket stands in for the domain's xenbus ring), and ``<dir>/<name>.sock`` is a
symlink to the current domain of that name, so a recreated guest finds its new
domain.  The real ``xenstore-*`` tools talk to it with ``XENSTORED_PATH`` set to one
of these sockets.

Run it alone: ``python -m guardian.xenstore.standin --dir DIR [--domain NAME:UUID]...``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ._daemon import Connection, Daemon, Quota
from ._wire import HEADER_SIZE, Message, XenstoreError, decode_header

log = logging.getLogger("guardian.xenstore")


class _Peer:
    """One accepted connection: a reader thread feeding the daemon, a writer thread
    draining a bounded queue (a peer that does not read is dropped, never waited for)."""

    def __init__(self, server: StandIn, sock: socket.socket, domid: int) -> None:
        self.server = server
        self.sock = sock
        self.domid = domid
        self.queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.queued = 0
        self.lock = threading.Lock()
        self.dead = False
        self.conn: Connection | None = None

    def start(self) -> None:
        try:
            self.conn = self.server.daemon.connect(self.domid, self.send)
        except XenstoreError as exc:
            log.warning("xenstore stand-in: domain %d refused: %s", self.domid, exc)
            self.sock.close()
            return
        threading.Thread(target=self._reader, daemon=True,
                         name=f"xs-read-{self.domid}").start()
        threading.Thread(target=self._writer, daemon=True,
                         name=f"xs-write-{self.domid}").start()

    def send(self, data: bytes) -> None:
        with self.lock:
            if self.dead:
                return
            if self.queued + len(data) > self.server.daemon.quota.max_queued:
                log.warning("xenstore stand-in: domain %d does not read its replies; "
                            "dropped", self.domid)
                self._kill()
                return
            self.queued += len(data)
        self.queue.put(data)

    def _kill(self) -> None:
        self.dead = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.queue.put(None)

    def close(self) -> None:
        with self.lock:
            if not self.dead:
                self._kill()

    def _writer(self) -> None:
        while True:
            data = self.queue.get()
            if data is None:
                break
            with self.lock:
                self.queued -= len(data)
            try:
                self.sock.sendall(data)
            except OSError:
                self.close()
                break

    def _recv_exact(self, n: int) -> bytes | None:
        chunks, got = [], 0
        while got < n:
            data = self.sock.recv(n - got)
            if not data:
                return None
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)

    def _reader(self) -> None:
        assert self.conn is not None
        try:
            while not self.dead:
                head = self._recv_exact(HEADER_SIZE)
                if head is None:
                    break
                op, rid, tx, length = decode_header(head)
                payload = self._recv_exact(length) if length else b""
                if payload is None:
                    break
                if self.conn.closed:
                    break
                self.server.daemon.handle(self.conn, Message(op, rid, tx, payload))
        except XenstoreError as exc:
            log.warning("xenstore stand-in: domain %d: %s; dropped", self.domid, exc)
        except OSError:
            pass
        finally:
            self.server.daemon.disconnect(self.conn)
            self.close()
            self.server._forget(self)
            self.sock.close()


class _Listener:
    def __init__(self, server: StandIn, path: Path, domid: int) -> None:
        self.server = server
        self.path = path
        self.domid = domid
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o600)
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._accept, daemon=True,
                                       name=f"xs-listen-{domid}")
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            peer = _Peer(self.server, sock, self.domid)
            self.server._remember(peer)
            peer.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class StandIn:
    """The stand-in server.  ``start()`` listens on dom0's socket; ``create_domain``
    introduces a guest (libxl's layout, its socket, @introduceDomain);
    ``destroy_domain`` releases it (its nodes removed, its connections dropped,
    @releaseDomain)."""

    def __init__(self, directory: Path | str, quota: Quota | None = None) -> None:
        self.directory = Path(directory)
        self.daemon = Daemon(quota)
        self.daemon.on_release = self._released
        self._listeners: dict[int, _Listener] = {}
        self._names: dict[int, str] = {}
        self._peers: set[_Peer] = set()
        self._peers_lock = threading.Lock()
        self._next_domid = 1

    @property
    def dom0_socket(self) -> Path:
        return self.directory / "socket"

    def domain_socket(self, domid: int) -> Path:
        return self.directory / f"domain-{domid}.sock"

    def name_socket(self, name: str) -> Path:
        return self.directory / f"{name}.sock"

    def start(self) -> StandIn:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._listeners[0] = _Listener(self, self.dom0_socket, 0)
        return self

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def create_domain(self, name: str, uuid: str, domid: int | None = None) -> int:
        """A new guest domain (the next free domid unless given)."""
        with self.daemon.lock:
            if domid is None:
                while self._next_domid in self.daemon.domains:
                    self._next_domid += 1
                domid = self._next_domid
            self._next_domid = max(self._next_domid, domid + 1)
            self.daemon.introduce(domid, name, uuid)
            self._listeners[domid] = _Listener(self, self.domain_socket(domid), domid)
            self._names[domid] = name
            link = self.name_socket(name)
            tmp = link.with_name(f".{name}.{domid}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self.domain_socket(domid).name)
            os.replace(tmp, link)
            return domid

    def destroy_domain(self, domid: int) -> None:
        self.daemon.release(domid)

    def domid_of(self, name: str) -> int | None:
        with self.daemon.lock:
            for domid, n in self._names.items():
                if n == name:
                    return domid
        return None

    def _remember(self, peer: _Peer) -> None:
        with self._peers_lock:
            self._peers.add(peer)

    def _forget(self, peer: _Peer) -> None:
        with self._peers_lock:
            self._peers.discard(peer)

    def _peers_now(self) -> list[_Peer]:
        with self._peers_lock:
            return list(self._peers)

    def _released(self, domid: int) -> None:
        listener = self._listeners.pop(domid, None)
        if listener is not None:
            listener.close()
        for peer in self._peers_now():
            if peer.domid == domid:
                peer.close()
        name = self._names.pop(domid, None)
        if name is not None:
            link = self.name_socket(name)
            with contextlib.suppress(OSError):
                if os.readlink(link) == self.domain_socket(domid).name:
                    link.unlink()

    def close(self) -> None:
        for listener in list(self._listeners.values()):
            listener.close()
        self._listeners.clear()
        for peer in self._peers_now():
            peer.close()
        for name in list(self._names.values()):
            with contextlib.suppress(OSError):
                self.name_socket(name).unlink()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m guardian.xenstore.standin",
                                description="a stand-in xenstored on unix sockets")
    p.add_argument("--dir", required=True, help="directory for the sockets")
    p.add_argument("--domain", action="append", default=[], metavar="NAME:UUID",
                   help="introduce a guest domain (repeatable)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    server = StandIn(args.dir).start()
    for item in args.domain:
        name, sep, uuid = item.partition(":")
        if not sep or not name or not uuid:
            p.error(f"--domain {item!r}: give NAME:UUID")
        domid = server.create_domain(name, uuid)
        print(f"{name}: domain {domid}, XENSTORED_PATH={server.domain_socket(domid)}",
              flush=True)
    print(f"dom0: XENSTORED_PATH={server.dom0_socket}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
