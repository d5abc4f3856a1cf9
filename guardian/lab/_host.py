"""A lab host: a network namespace plugged into the lab's LAN switch."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import _probes
from ._netns import (
    call_in_netns,
    netns_add,
    netns_delete,
    netns_executor,
    netns_inode,
    netns_path,
)
from ._proc import DEFAULT_TIMEOUT, run
from ._registry import kill_vm_processes
from ._spec import check_host_name, lan_ipv4, lan_ipv6

if TYPE_CHECKING:
    from ._lab import Lab

T = TypeVar("T")


class Host:
    """A plain network namespace ``<labid>-<name>`` with ``eth0`` on the lab LAN.

    Its ``eth0`` is one end of a veth pair; the other end, ``<labid>-<name>``, is a
    port of the bridge in the lab's switch namespace ``<labid>-lan``.
    """

    def __init__(self, lab: Lab, name: str, ip: str, ip6: str | None = None) -> None:
        self.lab = lab
        self.name = check_host_name(name)
        self.ip = lan_ipv4(ip)
        self.ip6 = lan_ipv6(ip6, self.ip)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.ip} netns={self.netns}>"

    @property
    def netns(self) -> str:
        """The ``ip netns`` name of this host's network namespace."""
        return f"{self.lab.id}-{self.name}"

    @property
    def netns_path(self) -> Path:
        return netns_path(self.netns)

    @property
    def port(self) -> str:
        """This host's switch port: the veth end in the lab's switch namespace."""
        return f"{self.lab.id}-{self.name}"

    @property
    def mac(self) -> str:
        """eth0's MAC, fixed by the IPv4 address (like a Xen vif's configured MAC), so
        peers' neighbour caches stay right across ``VM.destroy()``/``boot()``."""
        a, b, c, d = (int(x) for x in self.ip.split("."))
        return f"02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}"

    # -- plumbing ------------------------------------------------------------------

    def _plug(self) -> None:
        """Create the namespace and wire it to the switch (nothing in the root ns)."""
        netns_add(self.netns)
        lan = self.lab.lan_netns
        run(
            ["ip", "-n", lan, "-batch", "-"],
            input=(
                f"link add {self.port} type veth"
                f" peer name eth0 address {self.mac} netns {self.netns}\n"
                f"link set {self.port} master {self.lab.bridge} up\n"
            ),
        )
        run(
            ["ip", "-n", self.netns, "-batch", "-"],
            input=(
                "link set lo up\n"
                f"addr add {self.ip}/24 dev eth0\n"
                f"addr add {self.ip6}/64 dev eth0 nodad\n"
                "link set eth0 up\n"
            ),
        )

    def _cut_port(self) -> None:
        """Delete this host's switch port (and so its eth0, the other end of the veth
        pair), as Xen's toolstack removes a destroyed domain's vif: whatever still
        pins the namespace (a test's thread in it), the addresses are gone from the
        LAN."""
        run(["ip", "-n", self.lab.lan_netns, "link", "del", self.port], check=False)

    def _unplug(self, timeout: float = 5.0) -> None:
        """Kill every process in the namespace, then delete it (the veth pair goes too)."""
        ino = netns_inode(self.netns)
        if ino is not None:
            kill_vm_processes(nets={ino}, holders=[], timeout=timeout)
        netns_delete(self.netns)

    # -- commands ------------------------------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run in this host."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in this host; text output captured; bounded by ``timeout``."""
        return run(self.command(argv), check=check, timeout=timeout, input=input, env=env)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command in this host (``subprocess.Popen`` keywords). The lab kills and
        reaps it at the latest on close."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.command(argv), **kwargs)
        self.lab._track(proc)
        return proc

    def ip_cmd(self, *args: str, check: bool = True) -> str:
        """``ip -n <netns> ARGS...`` (e.g. ``host.ip_cmd("addr", "show", "eth0")``)."""
        return run(["ip", "-n", self.netns, *args], check=check).stdout

    # -- Python code inside the namespace ------------------------------------------

    def call(self, fn: Callable[[], T], *, timeout: float = DEFAULT_TIMEOUT) -> T:
        """Run ``fn()`` in a thread inside this host's network namespace (sockets it
        opens belong to this host). Use functools.partial or a lambda for arguments."""
        return call_in_netns(self.netns_path, fn, timeout)

    def executor(self, max_workers: int = 1) -> ThreadPoolExecutor:
        """A thread pool living in this host's network namespace (for many probes).
        It keeps the namespace it entered: after ``VM.boot()`` make a new one."""
        return netns_executor(self.netns_path, max_workers)

    def http_get(
        self, host: str, path: str = "/", *, port: int = 80, timeout: float = 2.0
    ) -> _probes.HttpResponse:
        """GET http://HOST:PORT/PATH from this host."""
        fn = functools.partial(_probes.http_get, host, path, port=port, timeout=timeout)
        return self.call(fn, timeout=timeout + 2)

    def dns_query(
        self, server: str, qname: str, rdtype: str = "A", *, timeout: float = 2.0
    ) -> list[str]:
        """Query ``server`` from this host; the answer's records as text."""
        fn = functools.partial(_probes.dns_query, server, qname, rdtype, timeout=timeout)
        return self.call(fn, timeout=timeout + 2)

    def smtp_banner(self, server: str, *, port: int = 25, timeout: float = 2.0) -> str:
        """The SMTP greeting of ``server`` as seen from this host."""
        fn = functools.partial(_probes.smtp_banner, server, port=port, timeout=timeout)
        return self.call(fn, timeout=timeout + 2)

    # -- faults ----------------------------------------------------------------------

    def link_down(self) -> None:
        """Unplug the cable: set this host's switch port down (host or VM "crash" as
        seen from the LAN; the host itself keeps running)."""
        run(["ip", "-n", self.lab.lan_netns, "link", "set", self.port, "down"])

    def link_up(self) -> None:
        run(["ip", "-n", self.lab.lan_netns, "link", "set", self.port, "up"])
