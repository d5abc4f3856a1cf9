"""hostd's XenStore input: escalation requests that guests write into XenStore.

A guest writes its request (the same JSON as the HTTP body) to its own node
``/local/domain/<domid>/data/guardian/escalation/<request id>``.  hostd watches
``/local/domain`` (and ``@introduceDomain``/``@releaseDomain``), and on each scan:

* identifies every new domain by UUID, never by domid or name: ``/local/domain/<domid>/vm``
  (written by the toolstack, owned by dom0) names ``/vm/<uuid>``; a UUID that is not a
  configured VM's is ignored (and counted);
* publishes ``/local/domain/<domid>/guardian/incarnation`` for a configured VM's domain,
  owned by dom0 and readable by that domain only (``n0 r<domid>``), so a recreated
  guest reads its new incarnation and cannot forge one;
* takes at most ``per_domain`` requests from each domain per scan and ``rate`` a second
  on average (``burst`` at once): a flood from one guest neither delays another's nor
  fills the journal; reads each with a size cap, hands it to ``Engine.submit`` with
  the VM's name as sender (the same policy and journal as HTTP), writes the answer
  ``{"state", "detail", "decision", "incarnation"}`` to
  ``/local/domain/<domid>/guardian/answer/<request id>`` (``n0 r<domid>``) and removes
  the request.  A rate-limited request stays (answer ``retry``) and is taken again when
  its time comes;
* runs accepted actions with ``asyncio.to_thread(engine.execute, rid)`` and writes the
  final answer to the VM's current domain(s) -- after a recreate, that is the new one.

XenStore is read from worker threads (the client is blocking); a broken connection is
reconnected at the next scan.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from guardian.xenstore import Client, XenstoreError

from ._engine import Engine, Reply

log = logging.getLogger("guardian.hostd")

#: a request node's value may be at most this long (the HTTP body limit is larger;
#: a request is a few hundred bytes)
MAX_REQUEST = 2048
#: requests taken from one domain per scan
PER_DOMAIN = 4
#: requests taken from one domain: RATE a second on average, BURST at once (the rest
#: wait in the guest's own nodes, within its XenStore quota)
RATE = 1.0
BURST = 20
#: seconds between scans when no watch fires
RESCAN = 5.0
#: answers kept per VM (re-published into a recreated domain) and per domain (older
#: answer nodes are removed, so a guest cannot make dom0 fill the store)
ANSWERS_KEPT = 16
REQUEST_DIR = "data/guardian/escalation"
_RID = re.compile(r"^[0-9a-fA-F-]{8,64}$")
_WAKE = re.compile(r"^/local/domain(/\d+(/vm|/data(/guardian(/escalation(/.*)?)?)?)?)?$")


@dataclass
class _Domain:
    domid: int
    uuid: str
    vm: str | None                 # None: not a configured VM
    published: int | None = None   # the incarnation last written
    tokens: float = float(BURST)   # requests it may send now
    refilled: float = 0.0          # monotonic time tokens were last added


def answer_for(reply: Reply, incarnation: int) -> dict[str, Any]:
    """The answer node's JSON for an ``Engine.submit`` reply."""
    body = reply.body
    if reply.status in (200, 202):
        inc = body.get("incarnation")
        return {"state": body.get("state", "accepted"), "detail": body.get("detail", ""),
                "decision": body.get("decision", ""),
                "incarnation": inc if isinstance(inc, int) else incarnation}
    error = str(body.get("detail") or body.get("error") or "")
    answer: dict[str, Any] = {"detail": error, "decision": "", "incarnation": incarnation}
    if reply.status == 400:
        answer["state"] = "rejected"
    elif reply.status == 401:
        answer.update(state="refused", detail="the request names another VM than the one "
                      "running in this domain")
    elif reply.status == 409 and "stale" in str(body.get("error", "")):
        answer["state"] = "stale"
    elif reply.status == 429:
        answer.update(state="retry", retry_after=body.get("retry_after", 1))
    else:
        answer["state"] = "refused"
    return answer


class XenstoreInput:
    def __init__(self, engine: Engine, path: str, *, per_domain: int = PER_DOMAIN,
                 rate: float = RATE, burst: int = BURST, rescan: float = RESCAN,
                 timeout: float = 10.0) -> None:
        self.engine = engine
        self.path = path
        self.per_domain = per_domain
        self.rate = rate
        self.burst = burst
        #: monotonic time a throttled domain may send again (None: none throttled)
        self.throttled_until: float | None = None
        self.rescan = rescan
        self.timeout = timeout
        self.uuids = {vm.uuid.lower(): name for name, vm in engine.vms.items()}
        self.domains: dict[int, _Domain] = {}
        #: per VM: request id -> latest answer (re-published into a new domain)
        self.answers: dict[str, collections.OrderedDict[str, dict[str, Any]]] = {}
        #: answer nodes written, per domain, oldest first
        self.written: dict[int, collections.deque[str]] = {}
        #: rate-limited requests: (domid, request id) -> monotonic time to take it again
        self.deferred: dict[tuple[int, str], float] = {}
        self._io = threading.Lock()
        self._client: Client | None = None
        self._stop = threading.Event()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._watcher: threading.Thread | None = None
        self._jobs: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, args=(loop,), daemon=True,
                                         name="hostd-xenstore-watch")
        self._watcher.start()
        self._task = loop.create_task(self._run())

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.join, 2.0)
        await asyncio.to_thread(self._drop_client)

    def _drop_client(self) -> None:
        with self._io:
            if self._client is not None:
                self._client.close()
            self._client = None

    def kick(self) -> None:
        """Scan now (from the event loop)."""
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            more = False
            try:
                more, jobs = await asyncio.to_thread(self.scan)
            except (XenstoreError, OSError) as exc:
                self.engine.count("xenstore_errors")
                log.warning("hostd: xenstore %s: %s; retrying", self.path, exc)
                await asyncio.to_thread(self._drop_client)
                jobs = []
                await asyncio.sleep(1.0)
            except Exception:  # noqa: BLE001 - a bug must not end the input
                self.engine.count("internal_errors")
                log.exception("hostd: xenstore input: error during a scan")
                await asyncio.to_thread(self._drop_client)
                jobs = []
                await asyncio.sleep(1.0)
            for vm, rid in jobs:
                task = asyncio.get_running_loop().create_task(self._execute(vm, rid))
                self._jobs.add(task)
                task.add_done_callback(self._jobs.discard)
            if more:
                await asyncio.sleep(0)
                continue
            wait = self.rescan
            due = list(self.deferred.values())
            if self.throttled_until is not None:
                due.append(self.throttled_until)
            if due:
                wait = min(wait, max(0.0, min(due) - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """A second connection that only waits for watch events and wakes the scanner."""
        while not self._stop.is_set():
            try:
                with Client(self.path, timeout=self.timeout) as c:
                    c.watch("/local/domain", "domains")
                    c.watch("@introduceDomain", "introduce")
                    c.watch("@releaseDomain", "release")
                    while not self._stop.is_set():
                        ev = c.read_event(0.25)
                        if ev is not None and (ev[0].startswith("@") or _WAKE.match(ev[0])):
                            loop.call_soon_threadsafe(self.kick)
            except (XenstoreError, OSError) as exc:
                log.debug("hostd: xenstore watch: %s", exc)
                self._stop.wait(1.0)
            except RuntimeError:   # the loop is closed
                return

    async def _execute(self, vm: str, rid: str) -> None:
        await asyncio.to_thread(self.engine.execute, rid)
        reply = self.engine.status(vm, rid)
        answer = answer_for(reply, self.engine.store.incarnation(vm))
        try:
            await asyncio.to_thread(self._publish_answer, vm, rid, answer)
        except (XenstoreError, OSError) as exc:
            self.engine.count("xenstore_errors")
            log.warning("hostd: xenstore: answer for %s not written: %s", rid, exc)
        self.kick()

    # ------------------------------------------------------------------ blocking side
    def _conn(self) -> Client:
        if self._client is None:
            self._client = Client(self.path, timeout=self.timeout)
        return self._client

    def _publish_answer(self, vm: str, rid: str, answer: dict[str, Any]) -> None:
        with self._io:
            self._remember(vm, rid, answer)
            c = self._conn()
            for d in list(self.domains.values()):
                if d.vm == vm:
                    self._write_answer(c, d, rid, answer)

    def _remember(self, vm: str, rid: str, answer: dict[str, Any]) -> None:
        kept = self.answers.setdefault(vm, collections.OrderedDict())
        kept[rid] = answer
        kept.move_to_end(rid)
        while len(kept) > ANSWERS_KEPT:
            kept.popitem(last=False)

    def _write_answer(self, c: Client, d: _Domain, rid: str, answer: dict[str, Any]) -> None:
        if not self._put(c, d, f"answer/{rid}", json.dumps(answer, separators=(",", ":"))):
            return
        written = self.written.setdefault(d.domid, collections.deque())
        if rid in written:
            written.remove(rid)
        written.append(rid)
        while len(written) > ANSWERS_KEPT:
            c.rm(f"/local/domain/{d.domid}/guardian/answer/{written.popleft()}")

    @staticmethod
    def _put(c: Client, d: _Domain, name: str, value: str) -> bool:
        """Write ``/local/domain/<domid>/guardian/<name>`` and its directories, owned
        by dom0 and readable by the domain, in one transaction -- and only while the
        domain exists (a write after its release would make a ghost domain).  False
        when it is gone."""
        top = f"/local/domain/{d.domid}"
        ro = ["n0", f"r{d.domid}"]

        def body(tx: int) -> bool:
            try:
                c.read(f"{top}/vm", tx)
            except XenstoreError as exc:
                if exc.name == "ENOENT":
                    return False
                raise
            node = f"{top}/guardian"
            for part in ["", *name.split("/")[:-1]]:
                node = f"{node}/{part}" if part else node
                c.mkdir(node, tx)
                c.set_perms(node, ro, tx)
            c.write(f"{top}/guardian/{name}", value, tx)
            c.set_perms(f"{top}/guardian/{name}", ro, tx)
            return True

        return c.transact(body)

    def scan(self) -> tuple[bool, list[tuple[str, str]]]:
        """One pass over every domain: (more requests are waiting, accepted jobs)."""
        with self._io:
            c = self._conn()
            present = {int(n) for n in c.directory("/local/domain") if n.isdigit()}
            present.discard(0)
            for gone in set(self.domains) - present:
                del self.domains[gone]
                self.written.pop(gone, None)
                for key in [k for k in self.deferred if k[0] == gone]:
                    del self.deferred[key]
            for domid in sorted(present - set(self.domains)):
                found = self._identify(c, domid)
                if found is not None:
                    self.domains[domid] = found
                    if found.vm is not None:
                        for rid, answer in self.answers.get(found.vm, {}).items():
                            self._write_answer(c, found, rid, answer)
            jobs: list[tuple[str, str]] = []
            more = False
            self.throttled_until = None
            for d in list(self.domains.values()):
                if d.vm is None:
                    continue
                try:
                    self._publish_incarnation(c, d)
                    more |= self._take(c, d, jobs)
                except XenstoreError as exc:
                    if exc.name == "EIO":
                        raise
                    log.warning("hostd: xenstore: domain %d (%s): %s", d.domid, d.vm, exc)
            return more, jobs

    def _identify(self, c: Client, domid: int) -> _Domain | None:
        top = f"/local/domain/{domid}"
        try:
            vm_path = c.read_text(f"{top}/vm")
            owner = c.get_perms(f"{top}/vm")[0]
            uuid = vm_path.rsplit("/", 1)[-1]
            if c.exists(f"{vm_path}/uuid"):
                uuid = c.read_text(f"{vm_path}/uuid")
        except XenstoreError as exc:
            if exc.name == "EIO":
                raise
            return None          # being built or torn down: look again at the next scan
        uuid = uuid.strip().lower()
        name = self.uuids.get(uuid) if owner == "n0" and vm_path.startswith("/vm/") else None
        if name is None:
            self.engine.count("xenstore_unknown_domains")
            log.info("hostd: xenstore: domain %d (uuid %s) is not a configured VM; ignored",
                     domid, uuid)
        else:
            log.info("hostd: xenstore: domain %d is VM %s", domid, name)
        return _Domain(domid, uuid, name, tokens=float(self.burst), refilled=time.monotonic())

    def _publish_incarnation(self, c: Client, d: _Domain) -> None:
        assert d.vm is not None
        inc = self.engine.store.incarnation(d.vm)
        if d.published == inc:
            return
        if self._put(c, d, "incarnation", str(inc)):
            d.published = inc

    def _take(self, c: Client, d: _Domain, jobs: list[tuple[str, str]]) -> bool:
        base = f"/local/domain/{d.domid}/{REQUEST_DIR}"
        try:
            names = c.directory(base)
        except XenstoreError as exc:
            if exc.name in ("ENOENT", "EACCES"):
                return False
            raise
        now = time.monotonic()
        d.tokens = min(float(self.burst), d.tokens + (now - d.refilled) * self.rate)
        d.refilled = now
        taken = 0
        for name in names:
            due = self.deferred.get((d.domid, name))
            if due is not None and due > now:
                continue
            if taken >= self.per_domain:
                return True
            if d.tokens < 1.0:
                self.engine.count("xenstore_throttled")
                again = now + (1.0 - d.tokens) / self.rate
                if self.throttled_until is None or again < self.throttled_until:
                    self.throttled_until = again
                return False
            d.tokens -= 1.0
            taken += 1
            self._one(c, d, f"{base}/{name}", name, jobs)
        return False

    def _one(self, c: Client, d: _Domain, node: str, rid: str,
             jobs: list[tuple[str, str]]) -> None:
        assert d.vm is not None
        key = (d.domid, rid)
        if not _RID.match(rid):
            self.engine.count("xenstore_bad_nodes")
            log.warning("hostd: xenstore: domain %d (%s): %r is not a request id; removed",
                        d.domid, d.vm, rid)
            c.rm(node)
            return
        try:
            raw = c.read(node)
        except XenstoreError as exc:
            if exc.name == "ENOENT":
                return
            raise
        inc = self.engine.store.incarnation(d.vm)
        answer: dict[str, Any]
        job = None
        if len(raw) > MAX_REQUEST:
            self.engine.count("xenstore_oversized")
            answer = {"state": "rejected", "detail": f"request over {MAX_REQUEST} bytes",
                      "decision": "", "incarnation": inc}
        elif self._claimed_id(raw) not in (None, rid):
            answer = {"state": "rejected", "detail": "request_id differs from its node",
                      "decision": "", "incarnation": inc}
        else:
            reply, job = self.engine.submit(d.vm, raw)
            answer = answer_for(reply, inc)
        state = answer["state"]
        if state != "accepted":
            self.engine.count(f"xenstore_{state}")
            log.warning("hostd: xenstore: domain %d (%s) request %s: %s: %s", d.domid, d.vm,
                        rid, state, answer["detail"])
        self._remember(d.vm, rid, answer)
        self._write_answer(c, d, rid, answer)
        if state == "retry":
            wait = answer.get("retry_after", 1)
            self.deferred[key] = time.monotonic() + float(wait if isinstance(wait, int | float)
                                                          else 1)
            return
        self.deferred.pop(key, None)
        c.rm(node)
        if job is not None:
            jobs.append((d.vm, job))

    @staticmethod
    def _claimed_id(raw: bytes) -> str | None:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return None
        if isinstance(data, dict) and isinstance(data.get("request_id"), str):
            return str(data["request_id"])
        return None
