"""guardian.lab: the test lab, real parts on one machine (design.md section 3).

A LAN of network namespaces (root needed): a switch namespace with a bridge, plain
hosts (``client``, ``dom0``) and VMs (a network namespace plus a private mount and UTS
namespace, running Debian's supervisord, apache2, named and exim4). Used by the lab
tests, the demo and the benchmark::

    from guardian.lab import Lab, CLIENT_IP, VM01_IP

    with Lab() as lab:
        client = lab.host("client", CLIENT_IP)
        vm01 = lab.vm("vm01", VM01_IP, autorestart=False)
        vm01.wait_ready()
        print(client.http_get(VM01_IP).body)     # "served by vm01"
        vm01.signal("apache2", signal.SIGKILL)   # inject a fault
        vm01.destroy(); vm01.boot()              # what dom0 does to a sick VM

guardian-hostd's ``lab`` driver (``LabDriver``) does that to a VM found by name.

Everything a lab creates is named ``<id>-...`` (id = ``g`` + 5 hex digits) and removed
by ``Lab.close()``; ``cleanup_stale()`` removes what crashed runs left behind.
"""

from ._errors import CommandError, LabError, LabTimeout, LabUnavailable, SupervisorError
from ._escalation import EscalationRig, HostdInDom0, RigDriver
from ._guardian import Guardiand, listener_program
from ._host import Host
from ._hostd_driver import LabDriver, find_vm
from ._lab import Lab
from ._netns import call_in_netns, netns_executor
from ._probes import HttpResponse, ProbeError, dns_query, http_get, smtp_banner
from ._registry import DEFAULT_ROOT, ID_PATTERN, CleanupReport, cleanup_stale
from ._render import SUPERVISOR_CONF, SUPERVISOR_SOCKET, VM_ENV
from ._requirements import missing_requirements, unavailable_reason
from ._spec import (
    CLIENT_IP,
    DOM0_IP,
    LAN_V4,
    LAN_V6,
    SERVICES,
    TEST_ZONE,
    VIP,
    VIP6,
    VM01_IP,
    VM02_IP,
    WRONG_ADDRESS,
    Program,
    ProgramKind,
    VMSpec,
    stock_programs,
)
from ._supervisor import ProcessInfo, Supervisor
from ._vm import VM

__all__ = [
    "Guardiand",
    "listener_program",
    "CLIENT_IP",
    "DEFAULT_ROOT",
    "DOM0_IP",
    "ID_PATTERN",
    "LAN_V4",
    "LAN_V6",
    "SERVICES",
    "SUPERVISOR_CONF",
    "SUPERVISOR_SOCKET",
    "TEST_ZONE",
    "VIP",
    "VIP6",
    "VM",
    "VM01_IP",
    "VM02_IP",
    "VM_ENV",
    "WRONG_ADDRESS",
    "CleanupReport",
    "CommandError",
    "EscalationRig",
    "HostdInDom0",
    "RigDriver",
    "Host",
    "HttpResponse",
    "Lab",
    "LabDriver",
    "LabError",
    "LabTimeout",
    "LabUnavailable",
    "ProbeError",
    "ProcessInfo",
    "Program",
    "ProgramKind",
    "Supervisor",
    "SupervisorError",
    "VMSpec",
    "call_in_netns",
    "cleanup_stale",
    "dns_query",
    "find_vm",
    "http_get",
    "missing_requirements",
    "netns_executor",
    "smtp_banner",
    "stock_programs",
    "unavailable_reason",
]
