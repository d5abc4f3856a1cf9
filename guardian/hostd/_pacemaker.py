"""The ``pacemaker`` driver: for sites whose VMs are Pacemaker resources
(``ocf:heartbeat:Xen`` or ``ocf:heartbeat:VirtualDomain``), so that placement across
many hosts is left to Pacemaker. Only Pacemaker's command-line tools are used::

    [vms.web1]
    driver = "pacemaker"
    resource = "vm-web1"          # the primitive's id (default: domain)
    ban_node = "dom0b"            # optional: the node fence-peer bans it from
    cib_file = "/path/cib.xml"    # optional: CIB_file= (an offline CIB; tests)

Mapping to the driver interface (hostd's engine wants death confirmed before a
create; Pacemaker owns starting and stopping, so the two are not done separately):

* ``recreate()`` — a *managed restart*: ``crm_resource --resource R --restart``.
  crm_resource sets target-role=Stopped, waits until the cluster reports the resource
  stopped everywhere (a failed stop makes Pacemaker fence the node: the stop is
  confirmed by the cluster), then restores the role and waits for the start, wherever
  Pacemaker places it. The engine calls this one method for ``recreate`` and counts a
  new incarnation only once it returned.
* ``destroy()`` (``fence-peer``) — ``crm_resource --resource R --ban --node N``: a
  -INFINITY location constraint for the node the resource runs on (or ``ban_node``);
  Pacemaker stops it there. ``state()`` then reports the instance on that node: DYING
  while it is still active there, SHUT once Pacemaker reports it stopped there (it may
  already run elsewhere: a new, freshly booted instance).
* ``create()`` — ``crm_resource --resource R --clear``: drops the ban constraints, so
  Pacemaker may start it again where it likes.
* ``state()`` — ``crm_mon --output-as=xml`` (one shot): the resource's role and flags.
  Never SHUT where Pacemaker's "stopped" is not a confirmation: a node of the cluster
  unclean, or offline with ``stonith-enabled=false`` (Pacemaker's "blind faith"), a
  blocked resource, a resource not in the CIB — UNKNOWN or DriverError.

What runs where: ``crm_mon`` and ``crm_resource --locate/--ban/--clear`` work on a
file CIB (``CIB_file=``, how the tests exercise them for real); ``--restart`` waits
for a live cluster to act (its controller and scheduler) and needs one.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import ClassVar

from ._config import VMSpec
from ._drivers import DomainState, DriverError, _fail, _run

_WAITED_STOP = re.compile(r"Waiting for (\d+) resources? to stop")


@dataclass(frozen=True)
class ResourceView:
    """What ``crm_mon`` says about one resource."""

    role: str
    active: bool
    failed: bool
    blocked: bool
    managed: bool
    nodes: tuple[str, ...]  # where it is active
    bad_nodes: frozenset[str]  # unclean or pending nodes, or offline without fencing


def parse_crm_mon(text: str, resource: str) -> ResourceView | None:
    """The view of ``resource`` in ``crm_mon --output-as=xml`` output (None: not in it)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise DriverError(f"crm_mon: output is not XML: {exc}") from None
    opts = root.find(".//cluster_options")
    stonith = opts is None or opts.get("stonith-enabled", "true") == "true"
    bad: set[str] = set()
    for node in root.iterfind("./nodes/node"):
        name = node.get("name", "")
        if (node.get("unclean") == "true" or node.get("pending") == "true"
                or (node.get("online") != "true" and not stonith)):
            bad.add(name)
    for res in root.iter("resource"):
        if res.get("id") == resource:
            return ResourceView(
                role=res.get("role", ""),
                active=res.get("active") == "true",
                failed=res.get("failed") == "true",
                blocked=res.get("blocked") == "true",
                managed=res.get("managed", "true") == "true",
                nodes=tuple(n.get("name", "") for n in res.iterfind("node")),
                bad_nodes=frozenset(bad),
            )
    return None


def view_state(view: ResourceView, node: str | None = None) -> DomainState:
    """The DomainState of ``view`` (only its instance on ``node``, if given)."""
    if view.blocked:
        return DomainState.UNKNOWN
    on = view.nodes if node is None else tuple(n for n in view.nodes if n == node)
    if on:
        if any(n in view.bad_nodes for n in on):
            return DomainState.UNKNOWN
        if view.role == "Stopping":
            return DomainState.DYING
        if view.failed:
            return DomainState.CRASHED
        return DomainState.RUNNING
    # not active (there): only trusted where every node that could run it is accounted for
    if (node is None and view.bad_nodes) or (node is not None and node in view.bad_nodes):
        return DomainState.UNKNOWN
    return DomainState.SHUT


class PacemakerDriver:
    KEYS: ClassVar[frozenset[str]] = frozenset(
        {"resource", "crm_resource", "crm_mon", "ban_node", "cib_file"})
    REQUIRED: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, resource: str, *, crm_resource: str = "crm_resource",
                 crm_mon: str = "crm_mon", ban_node: str | None = None,
                 cib_file: str | None = None, timeout: float = 60.0) -> None:
        self.resource = resource
        self.crm_resource = crm_resource
        self.crm_mon = crm_mon
        self.ban_node = ban_node
        self.cib_file = cib_file
        self.timeout = timeout
        #: the nodes destroy() banned it from (state() then reports those instances)
        self.banned: tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, vm: VMSpec) -> PacemakerDriver:
        return cls(vm.resource or vm.domain, crm_resource=vm.crm_resource or "crm_resource",
                   crm_mon=vm.crm_mon or "crm_mon", ban_node=vm.ban_node,
                   cib_file=vm.cib_file, timeout=vm.command_timeout)

    def _env(self) -> dict[str, str] | None:
        if self.cib_file is None:
            return None
        return {**os.environ, "CIB_file": self.cib_file}

    def _call(self, argv: list[str], timeout: float | None = None) -> str:
        proc = _run(argv, timeout if timeout is not None else self.timeout, self._env())
        if proc.returncode != 0:
            raise _fail(argv, proc)
        return proc.stdout

    def view(self) -> ResourceView:
        out = self._call([self.crm_mon, "--output-as=xml", "--one-shot",
                          "--include=none,options,nodes,resources"])
        view = parse_crm_mon(out, self.resource)
        if view is None:
            raise DriverError(f"pacemaker: resource {self.resource!r} is not in the CIB")
        return view

    def state(self) -> DomainState:
        view = self.view()
        if not self.banned:
            return view_state(view)
        states = [view_state(view, node) for node in self.banned]
        for worst in (DomainState.UNKNOWN, DomainState.RUNNING, DomainState.CRASHED,
                      DomainState.DYING):
            if worst in states:
                return worst
        return DomainState.SHUT

    def destroy(self) -> None:
        """Ban it from the node it runs on (``ban_node`` if set); nothing if it runs
        nowhere."""
        if self.ban_node is not None:
            nodes: tuple[str, ...] = (self.ban_node,)
        else:
            view = self.view()
            if any(n in view.bad_nodes for n in view.nodes) or view.blocked:
                raise DriverError(f"pacemaker: resource {self.resource!r} is on a node "
                                  "Pacemaker cannot vouch for; not banned")
            nodes = view.nodes
        for node in nodes:
            self._call([self.crm_resource, "--resource", self.resource, "--ban",
                        "--node", node])
        self.banned = nodes

    def create(self) -> None:
        """Drop the ban constraints: Pacemaker starts it again where it likes."""
        self._call([self.crm_resource, "--resource", self.resource, "--clear"])
        self.banned = ()

    def recreate(self) -> None:
        """Managed restart: Pacemaker stops it (confirmed), then starts it; checked
        afterwards: running again, and a resource that was active was waited for."""
        if self.cib_file is not None:
            raise DriverError(f"pacemaker: a restart of {self.resource!r} needs a live "
                              f"cluster, not the file CIB {self.cib_file}")
        was_active = bool(self.view().nodes)
        secs = max(1, int(self.timeout))
        out = self._call([self.crm_resource, "--resource", self.resource, "--restart",
                          f"--timeout={secs}s"], timeout=self.timeout + 15)
        self.banned = ()
        m = _WAITED_STOP.search(out)
        if was_active and m is not None and int(m.group(1)) == 0:
            # what crm_resource prints when no cluster acted (e.g. CIB_file= in the
            # environment): nothing was stopped, nothing is confirmed
            raise DriverError(f"pacemaker: crm_resource --restart of {self.resource!r} "
                              "waited for no stop: nothing confirmed")
        st = self.state()
        if st is not DomainState.RUNNING:
            raise DriverError(f"pacemaker: {self.resource!r} is {st.value} after the "
                              "restart")
