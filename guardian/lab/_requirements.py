"""Can this machine run the lab? (root, ip netns, the Debian packages)."""

from __future__ import annotations

import os
import shutil
import subprocess

_TOOLS = ("ip", "unshare", "nsenter", "mount", "pgrep", "cp")
_VM_BINARIES = (
    "/usr/sbin/apache2",
    "/usr/sbin/named",
    "/usr/sbin/exim4",
    "/usr/sbin/update-exim4.conf",
    "/usr/bin/supervisord",
    "/usr/bin/supervisorctl",
    "/usr/sbin/rndc",
)
_VM_CONFIG = ("/etc/apache2", "/etc/bind", "/etc/exim4", "/var/lib/exim4")


def missing_requirements(*, vms: bool = True) -> list[str]:
    """What is missing to run a lab (with VMs when ``vms``); empty when all is there."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("not root (network namespaces need CAP_SYS_ADMIN)")
    missing += [f"no {tool!r} in PATH" for tool in _TOOLS if shutil.which(tool) is None]
    if not missing:
        try:
            proc = subprocess.run(
                ["ip", "netns", "list"], capture_output=True, text=True, timeout=10
            )
            if proc.returncode != 0:
                missing.append(f"'ip netns list' fails: {proc.stderr.strip()}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            missing.append(f"'ip netns list' fails: {exc}")
    if not os.path.exists("/proc/self/ns/net"):
        missing.append("no /proc/self/ns/net (kernel without namespaces?)")
    if vms:
        missing += [f"{path} missing" for path in _VM_BINARIES if not os.path.exists(path)]
        missing += [f"{path} missing" for path in _VM_CONFIG if not os.path.isdir(path)]
    return missing


def unavailable_reason(*, vms: bool = True) -> str | None:
    """One line for ``pytest.skip``; None when the lab can run."""
    missing = missing_requirements(vms=vms)
    return "lab unavailable: " + "; ".join(missing) if missing else None
