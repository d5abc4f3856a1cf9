"""Who owns what: every lab records itself under /run/guardian-lab/<id>/ before it
creates anything, so its leftovers can be found and removed by id, and only those.

Layout::

    /run/guardian-lab/<id>/owner.json        creating pid + its start time
    /run/guardian-lab/<id>/<vm>/holder.json  the VM's holder pid, start time, ns inodes
    /run/guardian-lab/<id>/<vm>/...          the VM's generated files (bind-mounted)

A lab whose owner process is gone is stale: ``cleanup_stale()`` kills the processes in
its namespaces, deletes the namespaces and the directory. Namespaces named like a lab
but without a registry directory are reported, never touched.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import LabError
from ._netns import netns_delete, netns_inode, netns_names
from ._proc import ProcessRef, kill_until_gone, ns_inode, pids_in_namespaces

DEFAULT_ROOT = Path("/run/guardian-lab")
#: Lab ids: "g" + 5 hex digits.
ID_PATTERN = r"g[0-9a-f]{5}"
_CREATION_GRACE = 60.0


def create_lab_dir(root: Path = DEFAULT_ROOT) -> tuple[str, Path]:
    """Pick a fresh id and claim it atomically (mkdir); record the owner."""
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        lab_id = "g" + secrets.token_hex(3)[:5]
        labdir = root / lab_id
        if any(n.startswith(lab_id + "-") for n in netns_names()):
            continue
        try:
            labdir.mkdir()
        except FileExistsError:
            continue
        me = ProcessRef.of(os.getpid())
        assert me is not None
        _write_json(
            labdir / "owner.json",
            {"pid": me.pid, "start_time": me.start_time, "created": time.time()},
        )
        return lab_id, labdir
    raise LabError(f"no free lab id under {root}")


def _write_json(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _int(data: dict[str, object], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int):
        raise ValueError(f"{key}: not an int")
    return value


def owner_alive(labdir: Path) -> bool:
    data = _read_json(labdir / "owner.json")
    if data is None:
        # Being created right now (mkdir, then owner.json), or garbage.
        try:
            return time.time() - labdir.stat().st_mtime < _CREATION_GRACE
        except OSError:
            return False
    try:
        return ProcessRef(_int(data, "pid"), _int(data, "start_time")).alive()
    except ValueError:
        return False


@dataclass(frozen=True)
class HolderRecord:
    """A VM's holder process and the namespaces it pins."""

    vm: str
    ref: ProcessRef
    mnt: int
    net: int

    def alive(self) -> bool:
        return self.ref.alive() and ns_inode(self.ref.pid, "mnt") == self.mnt


def write_holder(vmdir: Path, record: HolderRecord) -> None:
    _write_json(
        vmdir / "holder.json",
        {
            "vm": record.vm,
            "pid": record.ref.pid,
            "start_time": record.ref.start_time,
            "mnt": record.mnt,
            "net": record.net,
        },
    )


def read_holders(labdir: Path) -> list[HolderRecord]:
    out = []
    for path in sorted(labdir.glob("*/holder.json")):
        data = _read_json(path)
        if data is None:
            continue
        try:
            ref = ProcessRef(_int(data, "pid"), _int(data, "start_time"))
            out.append(HolderRecord(str(data.get("vm")), ref, _int(data, "mnt"), _int(data, "net")))
        except ValueError:
            continue
    return out


def kill_vm_processes(*, nets: set[int], holders: list[HolderRecord], timeout: float = 5.0) -> None:
    """Kill every process of the given VMs/hosts: first all processes whose network
    namespace is in ``nets`` or whose mount namespace is a live holder's, then the
    holders (which pin the mount namespaces, so an inode cannot be reused meanwhile),
    then a last sweep by network namespace (pinned by /run/netns until deleted)."""
    live = [h for h in holders if h.alive()]
    mnts = {h.mnt for h in live}
    holder_pids = {h.ref.pid for h in live}
    kill_until_gone(
        lambda: pids_in_namespaces(net=nets, mnt=mnts, exclude=holder_pids), timeout=timeout
    )
    kill_until_gone(lambda: [h.ref.pid for h in live if h.ref.alive()], timeout=timeout)
    if nets:
        kill_until_gone(lambda: pids_in_namespaces(net=nets), timeout=timeout)


def teardown(lab_id: str, *, root: Path = DEFAULT_ROOT, timeout: float = 10.0) -> list[str]:
    """Remove everything of lab ``lab_id``: its processes, its namespaces, its directory.
    Goes on after errors; returns them."""
    errors: list[str] = []
    labdir = root / lab_id
    names = [n for n in netns_names() if n.startswith(lab_id + "-")]
    nets = {ino for ino in (netns_inode(n) for n in names) if ino is not None}
    try:
        kill_vm_processes(nets=nets, holders=read_holders(labdir), timeout=timeout)
    except LabError as exc:
        errors.append(str(exc))
    for name in names:
        try:
            netns_delete(name)
        except LabError as exc:
            errors.append(str(exc))
    shutil.rmtree(labdir, ignore_errors=True)
    if labdir.exists():
        errors.append(f"cannot remove {labdir}")
    return errors


@dataclass
class CleanupReport:
    """What ``cleanup_stale()`` did."""

    removed: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)
    unowned: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def cleanup_stale(
    pattern: str = ID_PATTERN, *, root: Path = DEFAULT_ROOT, timeout: float = 10.0
) -> CleanupReport:
    """Remove the leftovers of labs (ids matching ``pattern``) whose creating process
    is gone. Live labs, and namespaces without a registry entry, are left alone."""
    rx = re.compile(pattern)
    ids: set[str] = set()
    if root.is_dir():
        ids |= {d.name for d in root.iterdir() if d.is_dir() and rx.fullmatch(d.name)}
    for name in netns_names():
        head = name.split("-", 1)[0]
        if "-" in name and rx.fullmatch(head):
            ids.add(head)
    report = CleanupReport()
    for lab_id in sorted(ids):
        labdir = root / lab_id
        if not labdir.is_dir():
            report.unowned.append(lab_id)
        elif owner_alive(labdir):
            report.live.append(lab_id)
        else:
            report.errors += teardown(lab_id, root=root, timeout=timeout)
            report.removed.append(lab_id)
    return report
