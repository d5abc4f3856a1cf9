"""guardian.xenstore: the wire format, the client, and the stand-in xenstored --
its permissions, watches, transactions and quotas -- checked with our client and
with the real xenstore-* tools (Debian's xenstore-utils) against the same sockets."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardian.xenstore import (
    Client,
    Message,
    Op,
    Perm,
    Quota,
    StandIn,
    XenstoreError,
    parse_perms,
)
from guardian.xenstore._wire import Access, decode_header, split_strings, strings

U1 = "6c1b3f0e-0000-4000-8000-000000000001"
U2 = "6c1b3f0e-0000-4000-8000-000000000002"


@pytest.fixture
def xs(tmp_path: Path) -> Iterator[StandIn]:
    server = StandIn(tmp_path / "xs", Quota(max_nodes=40, max_value=512, max_watches=4,
                                            max_transactions=2))
    server.start()
    server.create_domain("vm01", U1)   # domid 1
    server.create_domain("vm02", U2)   # domid 2
    yield server
    server.close()


def client(server: StandIn, domid: int) -> Client:
    path = server.dom0_socket if domid == 0 else server.domain_socket(domid)
    return Client(path, timeout=5)


# ----------------------------------------------------------------------------- wire
def test_wire_header_strings_and_perms() -> None:
    m = Message(Op.WRITE, 7, 0, b"a/b\0value")
    raw = m.encode()
    assert raw[:16] == bytes([11, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0])
    assert decode_header(raw[:16]) == (11, 7, 0, 9)
    assert strings("a", "b") == b"a\0b\0" and split_strings(b"a\0b\0") == ["a", "b"]
    assert parse_perms(["n0", "r3", "w4", "b5"]) == (
        Perm(0, Access.NONE), Perm(3, Access.READ), Perm(4, Access.WRITE),
        Perm(5, Access.BOTH))
    assert [str(p) for p in parse_perms(["b5", "n0"])] == ["b5", "n0"]
    with pytest.raises(XenstoreError, match="EINVAL"):
        Perm.parse("x1")
    with pytest.raises(XenstoreError, match="E2BIG"):
        Message(Op.WRITE, 1, 0, b"x" * 4097).encode()
    with pytest.raises(XenstoreError):
        decode_header(bytes(12) + (5000).to_bytes(4, "little"))
    assert (Op.DIRECTORY, Op.READ, Op.WATCH_EVENT, Op.ERROR, Op.DIRECTORY_PART) == (
        1, 2, 15, 16, 22)


# ----------------------------------------------------------------------------- client, layout
def test_libxl_layout_relative_paths_and_domain_path(xs: StandIn) -> None:
    with client(xs, 0) as d0, client(xs, 1) as g1:
        assert d0.read_text("/local/domain/1/vm") == f"/vm/{U1}"
        assert d0.read_text(f"/vm/{U1}/uuid") == U1
        assert d0.get_perms("/local/domain/1") == ["n0", "r1"]
        assert d0.get_perms("/local/domain/1/name") == ["n0", "r1"]
        assert d0.get_perms("/local/domain/1/data") == ["n1"]
        assert g1.get_domain_path(1) == "/local/domain/1"
        g1.write("data/guardian/x", "1")                     # relative to its domain path
        assert d0.read_text("/local/domain/1/data/guardian/x") == "1"
        assert d0.get_perms("/local/domain/1/data/guardian/x") == ["n1"]  # owns what it makes
        assert g1.directory("data/guardian") == ["x"]
        assert g1.read_text("name") == "vm01"
        g1.rm("data/guardian")
        assert not g1.exists("data/guardian")
        g1.rm("data/guardian")                               # gone, parent there: fine
        with pytest.raises(XenstoreError) as info:
            g1.rm("data/nothing/deeper")
        assert info.value.name == "ENOENT"
        d0.mkdir("/tool/t")
        d0.mkdir("/tool/t")                                  # exists: fine
        with pytest.raises(XenstoreError, match="EINVAL"):
            d0.write("/bad//path", "x")


def test_permissions(xs: StandIn) -> None:
    with client(xs, 0) as d0, client(xs, 1) as g1, client(xs, 2) as g2:
        d0.write("/local/domain/1/guardian/incarnation", "3")
        d0.set_perms("/local/domain/1/guardian/incarnation", ["n0", "r1"])

        def err(fn: object, *args: object) -> str:
            with pytest.raises(XenstoreError) as info:
                fn(*args)  # type: ignore[operator]
            return info.value.name

        assert g1.read_text("guardian/incarnation") == "3"
        assert err(g1.write, "guardian/incarnation", "4") == "EACCES"
        assert err(g1.write, "guardian/answer/x", "{}") == "EACCES"
        assert err(g1.write, "/local/domain/1/name", "evil") == "EACCES"
        assert err(g1.rm, "guardian/incarnation") == "EACCES"
        assert err(g1.set_perms, "guardian/incarnation", ["b1"]) == "EACCES"
        g2.write("data/secret", "s")
        assert err(g1.read, "/local/domain/2/data/secret") == "EACCES"
        assert err(g1.read, "/local/domain/2/data/missing") == "EACCES"   # no existence leak
        assert err(g1.directory, "/local/domain/2") == "EACCES"
        assert err(g1.write, "/local/domain/2/data/x", "1") == "EACCES"
        assert err(g1.read, "guardian/missing") == "ENOENT"               # readable parent
        # the owner shares a node; it may not give it away
        g2.set_perms("data/secret", ["n2", "r1"])
        assert g1.read_text("/local/domain/2/data/secret") == "s"
        assert err(g1.write, "/local/domain/2/data/secret", "x") == "EACCES"
        assert err(g2.set_perms, "data/secret", ["n1"]) == "EPERM"
        assert err(g1.call, Op.IS_DOMAIN_INTRODUCED, strings("2")) == "EACCES"
        assert d0.call(Op.IS_DOMAIN_INTRODUCED, strings("2")) == b"T\0"


def test_watches_fire_for_the_node_and_below_with_read_permission(xs: StandIn) -> None:
    with client(xs, 0) as d0, client(xs, 1) as g1, client(xs, 2) as g2:
        d0.watch("/local/domain/1/data", "d0")
        assert d0.read_event(2) == ("/local/domain/1/data", "d0")   # the initial event
        g1.watch("data", "mine")
        assert g1.read_event(2) == ("data", "mine")                  # relative stays relative
        g2.watch("/local/domain/1/data", "spy")
        assert g2.read_event(2) == ("/local/domain/1/data", "spy")
        g1.write("data/a/b", "1")
        assert d0.read_event(2) == ("/local/domain/1/data/a/b", "d0")
        assert g1.read_event(2) == ("data/a/b", "mine")
        assert g2.read_event(0.3) is None                            # may not read it
        d0.watch("/local/domain/1/data/a/b", "deep")
        assert d0.read_event(2) == ("/local/domain/1/data/a/b", "deep")
        g1.rm("data/a")                                              # fires below too
        got = {d0.read_event(2), d0.read_event(2)}
        assert got == {("/local/domain/1/data/a", "d0"), ("/local/domain/1/data/a", "deep")}
        d0.unwatch("/local/domain/1/data", "d0")
        with pytest.raises(XenstoreError, match="ENOENT"):
            d0.unwatch("/local/domain/1/data", "d0")
        d0.watch("@releaseDomain", "rel")
        d0.watch("@introduceDomain", "intro")
        assert {d0.read_event(2), d0.read_event(2)} == {("@releaseDomain", "rel"),
                                                        ("@introduceDomain", "intro")}
        xs.create_domain("vm03", "u3")
        assert d0.read_event(2) == ("@introduceDomain", "intro")
        xs.destroy_domain(3)
        events = [d0.read_event(2), d0.read_event(2)]
        assert ("@releaseDomain", "rel") in events


def test_release_and_reintroduce(xs: StandIn) -> None:
    with client(xs, 0) as d0:
        g1 = client(xs, 1)
        g1.write("data/guardian/escalation/r", "x")
        xs.destroy_domain(1)
        with pytest.raises(XenstoreError):
            g1.read("name")                                  # its connection is gone
        g1.close()
        assert not d0.exists("/local/domain/1")
        assert not d0.exists(f"/vm/{U1}")
        assert not xs.domain_socket(1).exists()
        new = xs.create_domain("vm01", U1)
        assert new == 3
        assert os.readlink(xs.name_socket("vm01")) == "domain-3.sock"
        with Client(xs.name_socket("vm01"), timeout=5) as g:
            assert g.read_text("domid") == "3" and g.read_text("vm") == f"/vm/{U1}"


def test_transactions_isolation_and_conflict(xs: StandIn) -> None:
    with client(xs, 0) as a, client(xs, 0) as b:
        a.write("/tool/n", "0")
        tx = a.transaction_start()
        a.write("/tool/n", "1", tx)
        assert a.read_text("/tool/n", tx) == "1"
        assert b.read_text("/tool/n") == "0"                  # not visible before commit
        a.transaction_end(tx)
        assert b.read_text("/tool/n") == "1"
        tx = a.transaction_start()
        a.read("/tool/n", tx)
        b.write("/tool/n", "2")                                # someone else changed it
        a.write("/tool/n", "3", tx)
        with pytest.raises(XenstoreError) as info:
            a.transaction_end(tx)
        assert info.value.name == "EAGAIN"
        assert b.read_text("/tool/n") == "2"
        tx = a.transaction_start()
        a.write("/tool/m", "x", tx)
        a.transaction_end(tx, commit=False)
        assert not b.exists("/tool/m")

        calls: list[int] = []

        def incr(t: int) -> int:
            v = int(a.read_text("/tool/n", t)) + 1
            if not calls:
                b.write("/tool/n", "10")                       # conflict on the first try
            calls.append(v)
            a.write("/tool/n", str(v), t)
            return v

        assert a.transact(incr) == 11 and len(calls) == 2
        assert b.read_text("/tool/n") == "11"
        with pytest.raises(XenstoreError, match="ENOENT"):
            a.read("/tool/n", 9999)


def test_guest_quotas(xs: StandIn) -> None:
    with client(xs, 1) as g1, client(xs, 2) as g2:
        with pytest.raises(XenstoreError) as info:
            g1.write("data/big", "x" * 513)
        assert info.value.name == "ENOSPC"
        written = 0
        with pytest.raises(XenstoreError) as info:
            for i in range(100):
                g1.write(f"data/n{i}", "1")
                written += 1
        assert info.value.name == "ENOSPC" and written < 40
        assert xs.daemon.owned(1) <= 40
        g2.write("data/ok", "still works for the other guest")
        for i in range(4):
            g1.watch(f"data/n{i}", "t")
        with pytest.raises(XenstoreError) as info:
            g1.watch("data", "one-too-many")
        assert info.value.name == "E2BIG"
        g1.transaction_start()
        g1.transaction_start()
        with pytest.raises(XenstoreError, match="ENOSPC"):
            g1.transaction_start()


def test_a_guest_that_never_reads_is_dropped(tmp_path: Path) -> None:
    server = StandIn(tmp_path / "xs", Quota(max_queued=4096)).start()
    try:
        server.create_domain("vm01", U1)
        lazy = client(server, 1)
        lazy.watch("data", "t")                 # then never reads its events
        other = client(server, 1)
        for i in range(5000):                   # more than the socket buffers hold
            server.daemon.write(f"/local/domain/1/data/n{i % 50}", "x")
            if not any(c.domid == 1 and c.watches for c in server.daemon.connections):
                break
        deadline = time.monotonic() + 5
        while any(c.domid == 1 and c.watches for c in server.daemon.connections):
            assert time.monotonic() < deadline, "the lazy connection was not dropped"
            time.sleep(0.01)
        with client(server, 0) as d0:           # the store still serves everyone else
            assert d0.read_text("/local/domain/1/data/n0") == "x"
        assert other.read_text("name") == "vm01"
        lazy.close()
        other.close()
    finally:
        server.close()


def test_garbage_on_the_socket_drops_only_that_connection(xs: StandIn) -> None:
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.connect(str(xs.domain_socket(1)))
    s.sendall(b"\x02\0\0\0" + bytes(8) + (10_000).to_bytes(4, "little"))
    s.settimeout(2)
    assert s.recv(10) == b""
    s.close()
    with client(xs, 1) as g1:
        assert g1.read_text("name") == "vm01"
        with pytest.raises(XenstoreError, match="EINVAL"):
            g1.call(Op.RESUME + 40, b"")  # type: ignore[arg-type]


def test_concurrent_clients(xs: StandIn) -> None:
    errors: list[BaseException] = []

    def worker(domid: int) -> None:
        try:
            with client(xs, domid) as c:
                for i in range(20):
                    c.write(f"data/c{i}", str(i))
                    assert c.read_text(f"data/c{i}") == str(i)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(d,)) for d in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors


# ----------------------------------------------------------------------------- real tools
TOOLS = ("xenstore-read", "xenstore-write", "xenstore-ls", "xenstore-rm", "xenstore-chmod",
         "xenstore-watch", "xenstore-list")
needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in TOOLS),
    reason="xenstore-utils is not installed (apt-get install xenstore-utils)")


def tool(sock: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XENSTORED_PATH=str(sock))
    return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=10)


def last(xs: StandIn, domid: int, kind: str) -> tuple[int, str, str, str]:
    return [h for h in xs.daemon.history if h[0] == domid and h[1] == kind][-1]


@needs_tools
def test_real_tools_read_write_ls_rm_chmod(xs: StandIn) -> None:
    d0, g1 = xs.dom0_socket, xs.domain_socket(1)
    assert tool(d0, "xenstore-write", "/tool/guardian/x", "hello").returncode == 0
    assert tool(d0, "xenstore-read", "/tool/guardian/x").stdout == "hello\n"
    assert tool(d0, "xenstore-chmod", "/tool/guardian/x", "n0", "r1").returncode == 0
    assert xs.daemon.perms("/tool/guardian/x") == ["n0", "r1"]
    ls = tool(d0, "xenstore-ls", "-p", "/local/domain/1")
    assert ls.returncode == 0
    assert 'name = "vm01"' in ls.stdout and "(n1)" in ls.stdout and "(n0,r1)" in ls.stdout
    # relative paths from the guest's socket land under its domain path
    assert tool(g1, "xenstore-write", "data/guardian/escalation/r1", '{"a":1}').returncode == 0
    assert xs.daemon.read("/local/domain/1/data/guardian/escalation/r1") == b'{"a":1}'
    assert tool(g1, "xenstore-read", "/tool/guardian/x").stdout == "hello\n"
    assert tool(g1, "xenstore-rm", "data/guardian/escalation/r1").returncode == 0
    assert xs.daemon.read("/local/domain/1/data/guardian/escalation/r1") is None
    # xenstore-rm (and -list, -chmod, -exists) run in a transaction; a single
    # xenstore-write or -read does not
    xs.daemon.history.clear()
    assert tool(g1, "xenstore-write", "data/t", "1").returncode == 0
    assert tool(g1, "xenstore-rm", "data/t").returncode == 0
    assert [h[1] for h in xs.daemon.history] == ["WRITE", "TRANSACTION_START", "RM",
                                                 "TRANSACTION_END"]


@needs_tools
def test_real_tools_are_denied_with_eacces(xs: StandIn) -> None:
    g1, g2 = xs.domain_socket(1), xs.domain_socket(2)
    xs.daemon.write("/local/domain/1/guardian/incarnation", "3", ["n0", "r1"])
    assert tool(g1, "xenstore-read", "guardian/incarnation").stdout == "3\n"
    r = tool(g1, "xenstore-write", "guardian/incarnation", "9")
    assert r.returncode != 0 and last(xs, 1, "WRITE")[3] == "EACCES"
    r = tool(g1, "xenstore-write", "/local/domain/1/guardian/answer/x", "{}")
    assert r.returncode != 0 and last(xs, 1, "WRITE")[3] == "EACCES"
    assert xs.daemon.read("/local/domain/1/guardian/incarnation") == b"3"
    assert tool(g2, "xenstore-write", "data/private", "p").returncode == 0
    r = tool(g1, "xenstore-read", "/local/domain/2/data/private")
    assert r.returncode != 0 and last(xs, 1, "READ")[3] == "EACCES"
    r = tool(g1, "xenstore-chmod", "/local/domain/2/data/private", "b1")
    assert r.returncode != 0 and last(xs, 1, "SET_PERMS")[3] == "EACCES"
    r = tool(g1, "xenstore-rm", "/local/domain/1/name")
    assert r.returncode != 0 and last(xs, 1, "RM")[3] == "EACCES"
    # libxenstore turns the error name into errno: EPERM for giving a node away
    assert tool(g1, "xenstore-write", "data/mine", "m").returncode == 0
    r = tool(g1, "xenstore-chmod", "data/mine", "n2")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr
    assert last(xs, 1, "SET_PERMS")[3] == "EPERM"
    assert tool(g1, "xenstore-chmod", "data/mine", "n1", "r2").returncode == 0
    assert tool(g2, "xenstore-read", "/local/domain/1/data/mine").stdout == "m\n"
    # a value over the guest's quota
    r = tool(g1, "xenstore-write", "data/big", "x" * 600)
    assert r.returncode != 0 and last(xs, 1, "WRITE")[3] == "ENOSPC"


@needs_tools
def test_real_tools_list_a_big_directory_in_parts(xs: StandIn) -> None:
    for i in range(300):
        xs.daemon.write(f"/tool/big/child-with-a-long-name-{i:04d}", "v")
    r = tool(xs.dom0_socket, "xenstore-list", "/tool/big")
    assert r.returncode == 0 and len(r.stdout.split()) == 300
    assert last(xs, 0, "DIRECTORY")[3] == "E2BIG"
    assert sum(1 for h in xs.daemon.history if h[1] == "DIRECTORY_PART") >= 3
    with client(xs, 0) as c:                                   # our client does the same
        assert c.directory("/tool/big") == [f"child-with-a-long-name-{i:04d}"
                                            for i in range(300)]


@needs_tools
def test_real_xenstore_watch(xs: StandIn) -> None:
    env = dict(os.environ, XENSTORED_PATH=str(xs.dom0_socket))
    p = subprocess.Popen(["xenstore-watch", "-n", "3", "/local/domain/1/data"], env=env,
                         stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 5
        while not any(h[1] == "WATCH" for h in xs.daemon.history):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with client(xs, 1) as g1:
            g1.write("data/a", "1")
            g1.rm("data/a")
        out, _ = p.communicate(timeout=5)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert out.split() == ["/local/domain/1/data", "/local/domain/1/data/a",
                           "/local/domain/1/data/a"]


@needs_tools
def test_real_xenstore_watch_from_a_guest_reports_relative_paths(xs: StandIn) -> None:
    env = dict(os.environ, XENSTORED_PATH=str(xs.domain_socket(1)))
    p = subprocess.Popen(["xenstore-watch", "-n", "2", "data"], env=env,
                         stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 5
        while not any(h[1] == "WATCH" for h in xs.daemon.history):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        xs.daemon.write("/local/domain/1/data/a", "1")
        out, _ = p.communicate(timeout=5)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert out.split() == ["data", "data/a"]


def test_standin_runs_as_a_module(tmp_path: Path) -> None:
    import signal
    import sys

    d = tmp_path / "xs"
    p = subprocess.Popen([sys.executable, "-m", "guardian.xenstore.standin", "--dir", str(d),
                          "--domain", f"vm01:{U1}"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        first = p.stdout.readline()
        assert first.startswith("vm01: domain 1, XENSTORED_PATH=")
        assert p.stdout.readline().startswith("dom0: XENSTORED_PATH=")
        with Client(d / "vm01.sock", timeout=5) as g:
            assert g.read_text("vm") == f"/vm/{U1}"
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
