"""The store behind the stand-in: nodes, permissions, watches, transactions, quotas.

Transport-free and thread-safe (one lock): a server hands each connection's
messages to ``Daemon.handle`` and gives each ``Connection`` a ``send`` callable that
queues bytes for the peer.  The semantics follow C xenstored:

* a path not starting with ``/`` (or ``@``) is relative to the connection's domain
  path ``/local/domain/<domid>``;
* dom0 (domid 0) is privileged; a node's owner (its first permission's domid) has
  full access; a later entry for the caller's domid gives that access; otherwise
  the first entry's access applies.  A missing node answers ENOENT only if its
  nearest existing ancestor is readable (writable, to create it), else EACCES;
* a node created by a guest is owned by that guest and otherwise inherits its
  parent's permissions; only the owner (or dom0) may change permissions and a guest
  may not give a node away (EPERM);
* a watch fires for its node and everything under it (a removal also fires watches
  below the removed node), once when it is set, and only for nodes the watcher may
  read; ``@introduceDomain`` and ``@releaseDomain`` fire for dom0's watches;
* a transaction works on a snapshot; its commit fails with EAGAIN if anything it
  looked at changed meanwhile; its watch events fire at commit;
* per guest domain: at most ``Quota.max_nodes`` owned nodes, ``max_value`` bytes per
  value (ENOSPC), ``max_watches`` watches (E2BIG), ``max_transactions`` open
  transactions per connection (ENOSPC).
"""

from __future__ import annotations

import collections
import string
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ._wire import (
    ABS_PATH_MAX,
    PAYLOAD_MAX,
    REL_PATH_MAX,
    Access,
    Message,
    Op,
    Perm,
    XenstoreError,
    format_perms,
    parse_perms,
    split_strings,
    strings,
)

SPECIAL = ("@introduceDomain", "@releaseDomain")
HISTORY = 1000
_VALID = set(string.ascii_letters + string.digits + "-/_@")


@dataclass(frozen=True)
class Quota:
    max_nodes: int = 1000          # nodes a guest domain may own
    max_value: int = 2048          # bytes in one value written by a guest
    max_watches: int = 128         # watches of one guest domain (all its connections)
    max_transactions: int = 10     # open transactions per guest connection
    max_connections: int = 8       # connections per guest domain
    max_queued: int = 256 * 1024   # bytes waiting to be sent to one connection


@dataclass(frozen=True)
class Node:
    value: bytes
    perms: tuple[Perm, ...]
    children: tuple[str, ...] = ()


def domain_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def parent_of(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[1]


def is_under(path: str, top: str) -> bool:
    """``path`` is ``top`` or below it."""
    return path == top or top == "/" or path.startswith(top + "/")


def _must(tree: Tree, path: str) -> Node:
    node = tree.get(path)
    assert node is not None
    return node


class Tree:
    """Path -> Node, copy-on-write (a change replaces the Node object), with the
    number of nodes each domain owns.  ``accessed`` records the paths looked at."""

    def __init__(self, nodes: dict[str, Node] | None = None,
                 owned: dict[int, int] | None = None) -> None:
        self.nodes: dict[str, Node] = dict(nodes or {})
        self.owned: dict[int, int] = dict(owned or {})
        self.accessed: set[str] | None = None
        self.changed: set[str] | None = None

    def copy(self) -> Tree:
        return Tree(self.nodes, self.owned)

    def get(self, path: str) -> Node | None:
        if self.accessed is not None:
            self.accessed.add(path)
        return self.nodes.get(path)

    def put(self, path: str, node: Node | None) -> None:
        old = self.nodes.get(path)
        if old is not None:
            owner = old.perms[0].domid
            self.owned[owner] = self.owned.get(owner, 0) - 1
        if node is None:
            self.nodes.pop(path, None)
        else:
            self.nodes[path] = node
            owner = node.perms[0].domid
            self.owned[owner] = self.owned.get(owner, 0) + 1
        if self.accessed is not None:
            self.accessed.add(path)
        if self.changed is not None:
            self.changed.add(path)


@dataclass(eq=False)
class Transaction:
    tx_id: int
    start: dict[str, Node]
    tree: Tree
    events: list[tuple[str, bool, Node]] = field(default_factory=list)


@dataclass(eq=False)
class Watch:
    path: str          # absolute, or @special
    token: str
    given: str         # as the client gave it (relative paths are reported relative)


@dataclass(eq=False)
class Connection:
    """One client; ``send`` queues bytes for it (and may close it when over quota)."""

    domid: int
    send: Callable[[bytes], None]
    watches: list[Watch] = field(default_factory=list)
    transactions: dict[int, Transaction] = field(default_factory=dict)
    closed: bool = False

    @property
    def privileged(self) -> bool:
        return self.domid == 0


class Daemon:
    def __init__(self, quota: Quota | None = None) -> None:
        self.quota = quota or Quota()
        self.lock = threading.RLock()
        self.tree = Tree()
        root = (Perm(0, Access.NONE),)
        for path in ("/", "/local", "/local/domain", "/vm", "/tool"):
            self._create(self.tree, 0, path, b"", root)
        self.connections: list[Connection] = []
        self.domains: dict[int, str] = {}     # introduced guest domid -> uuid
        self._next_tx = 1
        #: the latest requests: (domid, message type, first argument, "OK" or the
        #: errno name) -- what tests check the real tools against
        self.history: collections.deque[tuple[int, str, str, str]] = collections.deque(
            maxlen=HISTORY)
        #: called (under the lock) after a domain is released: the server drops its
        #: connections and socket
        self.on_release: Callable[[int], None] | None = None

    # ------------------------------------------------------------------ connections
    def connect(self, domid: int, send: Callable[[bytes], None]) -> Connection:
        with self.lock:
            if domid != 0:
                if domid not in self.domains:
                    raise XenstoreError("ENOENT", f"domain {domid} is not introduced")
                mine = sum(1 for c in self.connections if c.domid == domid)
                if mine >= self.quota.max_connections:
                    raise XenstoreError("ENOSPC", f"domain {domid} has {mine} connections")
            conn = Connection(domid, send)
            self.connections.append(conn)
            return conn

    def disconnect(self, conn: Connection) -> None:
        with self.lock:
            conn.closed = True
            conn.watches.clear()
            conn.transactions.clear()
            if conn in self.connections:
                self.connections.remove(conn)

    # ------------------------------------------------------------------ paths, perms
    @staticmethod
    def canonical(conn_domid: int, path: str, *, special: bool = False) -> str:
        """The absolute path (EINVAL for an invalid one)."""
        if not path or any(c not in _VALID for c in path):
            raise XenstoreError("EINVAL", f"bad path {path!r}")
        if path.startswith("@"):
            if special and path in SPECIAL:
                return path
            raise XenstoreError("EINVAL", f"bad path {path!r}")
        if not path.startswith("/"):
            if len(path) > REL_PATH_MAX:
                raise XenstoreError("EINVAL", "path too long")
            path = f"{domain_path(conn_domid)}/{path}"
        if "//" in path or (path.endswith("/") and path != "/") or len(path) > ABS_PATH_MAX:
            raise XenstoreError("EINVAL", f"bad path {path!r}")
        return path

    @staticmethod
    def access(domid: int, node: Node) -> Access:
        if domid == 0 or node.perms[0].domid == domid:
            return Access.BOTH
        for p in node.perms[1:]:
            if p.domid == domid:
                return p.access
        return node.perms[0].access

    def _ancestor(self, tree: Tree, path: str) -> Node:
        while True:
            path = parent_of(path)
            node = tree.get(path)
            if node is not None:
                return node

    def _get(self, tree: Tree, domid: int, path: str, need: Access) -> Node:
        node = tree.get(path)
        if node is None:
            if path != "/" and need in self.access(domid, self._ancestor(tree, path)):
                raise XenstoreError("ENOENT", path)
            raise XenstoreError("EACCES", path)
        if need not in self.access(domid, node):
            raise XenstoreError("EACCES", path)
        return node

    # ------------------------------------------------------------------ operations
    def _create(self, tree: Tree, domid: int, path: str, value: bytes,
                perms: tuple[Perm, ...] | None = None) -> list[str]:
        """Create ``path`` and missing ancestors; returns the created paths."""
        missing: list[str] = []
        p = path
        while tree.get(p) is None:
            missing.append(p)
            if p == "/":
                break
            p = parent_of(p)
        if not missing:
            return []
        if missing[-1] != "/":
            top = tree.get(parent_of(missing[-1]))
            assert top is not None
            if Access.WRITE not in self.access(domid, top):
                raise XenstoreError("EACCES", path)
        if domid != 0 and (tree.owned.get(domid, 0) + len(missing) > self.quota.max_nodes):
            raise XenstoreError("ENOSPC", f"domain {domid} node quota")
        for p in reversed(missing):
            if p == "/":
                tree.put(p, Node(b"", perms or (Perm(0, Access.NONE),)))
                continue
            parent = tree.get(parent_of(p))
            assert parent is not None
            inherited = parent.perms
            if perms is not None and p == path:
                inherited = perms
            if domid != 0:
                inherited = (Perm(domid, inherited[0].access),) + inherited[1:]
            tree.put(p, Node(value if p == path else b"", inherited))
            tree.put(parent_of(p), Node(parent.value, parent.perms,
                                        parent.children + (_basename(p),)))
        return missing

    def _write(self, tree: Tree, domid: int, path: str, value: bytes) -> None:
        if domid != 0 and len(value) > self.quota.max_value:
            raise XenstoreError("ENOSPC", f"value of {len(value)} bytes")
        node = tree.get(path)
        if node is None:
            self._create(tree, domid, path, value)
            return
        if Access.WRITE not in self.access(domid, node):
            raise XenstoreError("EACCES", path)
        tree.put(path, Node(value, node.perms, node.children))

    def _mkdir(self, tree: Tree, domid: int, path: str) -> bool:
        node = tree.get(path)
        if node is not None:
            if Access.WRITE not in self.access(domid, node):
                raise XenstoreError("EACCES", path)
            return False
        self._create(tree, domid, path, b"")
        return True

    def _rm(self, tree: Tree, domid: int, path: str) -> Node | None:
        """Remove ``path`` and everything under it; the removed node, or None when it
        did not exist (and its parent does: not an error)."""
        if path == "/":
            raise XenstoreError("EINVAL", "cannot remove /")
        try:
            node = self._get(tree, domid, path, Access.WRITE)
        except XenstoreError as exc:
            if exc.name == "ENOENT" and tree.get(parent_of(path)) is not None:
                return None
            raise
        stack = [path]
        while stack:
            p = stack.pop()
            n = tree.get(p)
            if n is None:
                continue
            stack.extend(f"{p}/{c}" for c in n.children)
            tree.put(p, None)
        parent = tree.get(parent_of(path))
        if parent is not None:
            name = _basename(path)
            tree.put(parent_of(path), Node(parent.value, parent.perms,
                                           tuple(c for c in parent.children if c != name)))
        return node

    def _set_perms(self, tree: Tree, domid: int, path: str, perms: tuple[Perm, ...]) -> None:
        node = self._get(tree, domid, path, Access.WRITE)
        if domid != 0:
            if node.perms[0].domid != domid:
                raise XenstoreError("EACCES", f"{path}: not the owner")
            if perms[0].domid != node.perms[0].domid:
                raise XenstoreError("EPERM", f"{path}: a guest cannot give a node away")
        new_owner = perms[0].domid
        if (new_owner != 0 and new_owner != node.perms[0].domid
                and tree.owned.get(new_owner, 0) + 1 > self.quota.max_nodes):
            raise XenstoreError("ENOSPC", f"domain {new_owner} node quota")
        tree.put(path, Node(node.value, perms, node.children))

    # ------------------------------------------------------------------ dispatch
    def handle(self, conn: Connection, msg: Message) -> None:
        """Answer one request (the reply and then any watch events go out through
        the connections' ``send``)."""
        with self.lock:
            events: list[tuple[str, bool, Node]] = []
            initial: Watch | None = None
            try:
                payload, events, initial = self._dispatch(conn, msg)
                reply = Message(msg.op, msg.req_id, msg.tx_id, payload)
            except XenstoreError as exc:
                events, initial = [], None
                reply = Message(Op.ERROR, msg.req_id, msg.tx_id, strings(exc.name))
            if len(reply.payload) > PAYLOAD_MAX:
                reply = Message(Op.ERROR, msg.req_id, msg.tx_id, strings("E2BIG"))
                events, initial = [], None
            try:
                kind = Op(msg.op).name
            except ValueError:
                kind = str(msg.op)
            first = msg.payload.split(b"\0", 1)[0].decode("utf-8", "replace")[:200]
            outcome = ("OK" if reply.op != Op.ERROR
                       else reply.payload.rstrip(b"\0").decode("ascii", "replace"))
            self.history.append((conn.domid, kind, first, outcome))
            conn.send(reply.encode())
            if initial is not None:
                conn.send(Message(Op.WATCH_EVENT, 0, 0,
                                  strings(initial.given, initial.token)).encode())
            for path, removal, node in events:
                self._fire(path, removal, node)

    def _dispatch(self, conn: Connection, msg: Message
                  ) -> tuple[bytes, list[tuple[str, bool, Node]], Watch | None]:
        op, domid = msg.op, conn.domid
        args = split_strings(msg.payload)
        tx: Transaction | None = None
        if msg.tx_id:
            tx = conn.transactions.get(msg.tx_id)
            if tx is None:
                raise XenstoreError("ENOENT", f"no transaction {msg.tx_id}")
        tree = tx.tree if tx is not None else self.tree
        events: list[tuple[str, bool, Node]] = []

        def path_arg(n: int = 1) -> str:
            if len(args) < n:
                raise XenstoreError("EINVAL", "missing argument")
            return self.canonical(domid, args[0])

        ok = strings("OK")
        if op == Op.READ:
            return self._get(tree, domid, path_arg(), Access.READ).value, [], None
        if op == Op.DIRECTORY:
            node = self._get(tree, domid, path_arg(), Access.READ)
            return strings(*node.children), [], None
        if op == Op.DIRECTORY_PART:
            path = path_arg(2)
            node = self._get(tree, domid, path, Access.READ)
            return self._directory_part(node, args[1]), [], None
        if op == Op.GET_PERMS:
            node = self._get(tree, domid, path_arg(), Access.READ)
            return strings(*format_perms(node.perms)), [], None
        if op == Op.WRITE:
            name, sep, value = msg.payload.partition(b"\0")
            if not sep:
                raise XenstoreError("EINVAL", "write without a value")
            path = self.canonical(domid, name.decode("utf-8", "replace"))
            self._write(tree, domid, path, value)
            events.append((path, False, _must(tree, path)))
        elif op == Op.MKDIR:
            path = path_arg()
            if self._mkdir(tree, domid, path):
                events.append((path, False, _must(tree, path)))
        elif op == Op.RM:
            path = path_arg()
            removed = self._rm(tree, domid, path)
            if removed is not None:
                events.append((path, True, removed))
        elif op == Op.SET_PERMS:
            path = path_arg(2)
            self._set_perms(tree, domid, path, parse_perms(args[1:]))
            events.append((path, False, _must(tree, path)))
        elif op == Op.WATCH:
            return ok, [], self._watch(conn, args)
        elif op == Op.UNWATCH:
            if len(args) < 2:
                raise XenstoreError("EINVAL", "unwatch needs a path and a token")
            path = self.canonical(domid, args[0], special=True)
            for w in conn.watches:
                if w.path == path and w.token == args[1]:
                    conn.watches.remove(w)
                    return ok, [], None
            raise XenstoreError("ENOENT", "no such watch")
        elif op == Op.TRANSACTION_START:
            if msg.tx_id:
                raise XenstoreError("EBUSY", "nested transaction")
            if not conn.privileged and len(conn.transactions) >= self.quota.max_transactions:
                raise XenstoreError("ENOSPC", "too many transactions")
            tx_id = self._next_tx
            self._next_tx = self._next_tx % 0xFFFFFFF0 + 1
            t = Tree(self.tree.nodes, self.tree.owned)
            t.accessed, t.changed = set(), set()
            conn.transactions[tx_id] = Transaction(tx_id, dict(self.tree.nodes), t)
            return strings(str(tx_id)), [], None
        elif op == Op.TRANSACTION_END:
            if tx is None or not args or args[0] not in ("T", "F"):
                raise XenstoreError("EINVAL", "transaction end needs T or F in a transaction")
            del conn.transactions[tx.tx_id]
            if args[0] == "T":
                events = self._commit(tx)
            return ok, events, None
        elif op == Op.GET_DOMAIN_PATH:
            if not args or not args[0].isdigit():
                raise XenstoreError("EINVAL", "domain id")
            return strings(domain_path(int(args[0]))), [], None
        elif op == Op.IS_DOMAIN_INTRODUCED:
            self._privileged(conn)
            if not args or not args[0].isdigit():
                raise XenstoreError("EINVAL", "domain id")
            known = int(args[0]) == 0 or int(args[0]) in self.domains
            return strings("T" if known else "F"), [], None
        elif op == Op.RELEASE:
            self._privileged(conn)
            if not args or not args[0].isdigit() or int(args[0]) not in self.domains:
                raise XenstoreError("ENOENT", "domain id")
            self.release(int(args[0]), remove_nodes=False)
        elif op == Op.RESET_WATCHES:
            self._privileged(conn)
            for c in self.connections:
                c.watches.clear()
                c.transactions.clear()
        elif op in (Op.INTRODUCE, Op.RESUME, Op.SET_TARGET, Op.CONTROL):
            self._privileged(conn)
            raise XenstoreError("ENOSYS", f"{Op(op).name} is not supported by the stand-in")
        else:
            raise XenstoreError("EINVAL", f"unknown message type {op}")
        if tx is not None:
            tx.events.extend(events)
            return ok, [], None
        return ok, events, None

    @staticmethod
    def _privileged(conn: Connection) -> None:
        if not conn.privileged:
            raise XenstoreError("EACCES", "dom0 only")

    def _directory_part(self, node: Node, offset_text: str) -> bytes:
        if not offset_text.isdigit():
            raise XenstoreError("EINVAL", "offset")
        gen = strings(str(id(node) & 0xFFFFFFFF))
        listing = strings(*node.children)
        off = int(offset_text)
        if off >= len(listing):
            return gen + b"\0"
        room = PAYLOAD_MAX - len(gen) - 1
        end = off
        while end < len(listing):
            nxt = listing.index(b"\0", end) + 1
            if nxt - off > room:
                break
            end = nxt
        # the last chunk ends with an empty string (a second NUL): that ends the list
        return gen + listing[off:end] + (b"\0" if end == len(listing) else b"")

    def _watch(self, conn: Connection, args: list[str]) -> Watch:
        if len(args) < 2:
            raise XenstoreError("EINVAL", "watch needs a path and a token")
        path = self.canonical(conn.domid, args[0], special=True)
        for w in conn.watches:
            if w.path == path and w.token == args[1]:
                raise XenstoreError("EEXIST", "watch already set")
        if not conn.privileged:
            mine = sum(len(c.watches) for c in self.connections if c.domid == conn.domid)
            if mine >= self.quota.max_watches:
                raise XenstoreError("E2BIG", "watch quota")
        w = Watch(path, args[1], args[0])
        conn.watches.append(w)
        return w

    def _commit(self, tx: Transaction) -> list[tuple[str, bool, Node]]:
        assert tx.tree.accessed is not None and tx.tree.changed is not None
        for path in tx.tree.accessed:
            if self.tree.nodes.get(path) is not tx.start.get(path):
                raise XenstoreError("EAGAIN", "conflict")
        for path in tx.tree.changed:
            self.tree.put(path, tx.tree.nodes.get(path))
        return tx.events

    # ------------------------------------------------------------------ watches
    def _fire(self, path: str, removal: bool, node: Node) -> None:
        for conn in list(self.connections):
            for w in conn.watches:
                if path.startswith("@"):
                    hit = w.path == path and conn.privileged
                else:
                    hit = is_under(path, w.path) or (removal and is_under(w.path, path))
                    hit = hit and Access.READ in self.access(conn.domid, node)
                if not hit:
                    continue
                shown = path
                if not w.given.startswith(("/", "@")):
                    prefix = domain_path(conn.domid) + "/"
                    if path.startswith(prefix):
                        shown = path[len(prefix):]
                try:
                    conn.send(Message(Op.WATCH_EVENT, 0, 0, strings(shown, w.token)).encode())
                except OSError:
                    conn.closed = True

    def fire_special(self, name: str) -> None:
        with self.lock:
            self._fire(name, False, Node(b"", (Perm(0, Access.NONE),)))

    # ------------------------------------------------------------------ as dom0 (admin)
    def write(self, path: str, value: str | bytes, perms: list[str] | None = None) -> None:
        """Write as dom0 (firing watches); ``perms`` like ``["n0", "r3"]``."""
        with self.lock:
            data = value.encode() if isinstance(value, str) else value
            path = self.canonical(0, path)
            self._write(self.tree, 0, path, data)
            if perms is not None:
                self._set_perms(self.tree, 0, path, parse_perms(perms))
            node = self.tree.get(path)
            assert node is not None
            self._fire(path, False, node)

    def read(self, path: str) -> bytes | None:
        with self.lock:
            node = self.tree.get(self.canonical(0, path))
            return None if node is None else node.value

    def perms(self, path: str) -> list[str] | None:
        with self.lock:
            node = self.tree.get(self.canonical(0, path))
            return None if node is None else format_perms(node.perms)

    def children(self, path: str) -> list[str]:
        with self.lock:
            node = self.tree.get(self.canonical(0, path))
            return [] if node is None else list(node.children)

    def remove(self, path: str) -> None:
        with self.lock:
            path = self.canonical(0, path)
            removed = self._rm(self.tree, 0, path)
            if removed is not None:
                self._fire(path, True, removed)

    def owned(self, domid: int) -> int:
        with self.lock:
            return self.tree.owned.get(domid, 0)

    def introduce(self, domid: int, name: str, uuid: str) -> None:
        """Build the layout libxl writes for a new domain and fire @introduceDomain::

            /local/domain/<domid>          n0 r<domid>  (name, vm, domid inherit it)
            /local/domain/<domid>/data     n<domid>     (the guest's own)
            /vm/<uuid>                     n0 r<domid>  (uuid, name)
        """
        if domid <= 0 or domid >= 0x7FF0:
            raise ValueError(f"domid {domid} is not a guest domain id")
        with self.lock:
            if domid in self.domains:
                raise ValueError(f"domain {domid} already exists")
            top, vm = domain_path(domid), f"/vm/{uuid}"
            ro = ["n0", f"r{domid}"]
            self.write(vm, "", ro)
            self.write(f"{vm}/uuid", uuid)
            self.write(f"{vm}/name", name)
            self.write(top, "", ro)
            self.write(f"{top}/vm", vm)
            self.write(f"{top}/name", name)
            self.write(f"{top}/domid", str(domid))
            self.write(f"{top}/data", "", [f"n{domid}"])
            self.domains[domid] = uuid
            self._fire("@introduceDomain", False, Node(b"", (Perm(0, Access.NONE),)))

    def release(self, domid: int, *, remove_nodes: bool = True) -> None:
        """The domain is gone: drop its connections, remove its nodes (as libxl
        does on destroy) and fire @releaseDomain."""
        with self.lock:
            uuid = self.domains.pop(domid, None)
            for conn in [c for c in self.connections if c.domid == domid]:
                self.disconnect(conn)
            if remove_nodes:
                self.remove(domain_path(domid))
                if uuid is not None and uuid not in self.domains.values():
                    self.remove(f"/vm/{uuid}")
            self._fire("@releaseDomain", False, Node(b"", (Perm(0, Access.NONE),)))
            if self.on_release is not None:
                self.on_release(domid)
