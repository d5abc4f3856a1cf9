"""guardian.hostd drivers: xl against a fake ``xl`` on PATH, the command driver,
libvirt (skipped without python3-libvirt), and the engine driving a fake xl."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from guardian.hostd import (
    CommandDriver,
    DomainState,
    DriverError,
    Engine,
    Journal,
    PolicySpec,
    StateStore,
    VMSpec,
    XlDriver,
    parse_xl_list,
)

# A fake xl: state in $FAKE_XL_DIR/state (running|dying:N|absent|stuck), calls appended
# to $FAKE_XL_DIR/calls.  "dying:N": the next N `xl list` show it dying, then it is gone.
FAKE_XL = r"""#!PYTHON
import os, sys
d = os.environ["FAKE_XL_DIR"]
with open(os.path.join(d, "calls"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
sf = os.path.join(d, "state")
state = open(sf).read().strip()
cmd, arg = sys.argv[1], sys.argv[2]
def put(s):
    open(sf, "w").write(s)
if cmd == "list":
    if state == "absent":
        sys.stderr.write(f"{arg} is an invalid domain identifier (rc=-6)\n"); sys.exit(1)
    flags = {"running": "-b----", "stuck": "--p--d"}.get(state, "-----d")
    if state.startswith("dying:"):
        n = int(state.split(":")[1])
        put("absent" if n <= 1 else f"dying:{n - 1}")
    print("Name                                        ID   Mem VCPUs\tState\tTime(s)")
    print(f"{arg:<40}  12  1024     2     {flags}      41.2")
elif cmd == "destroy":
    if state == "absent":
        sys.stderr.write(f"{arg} is an invalid domain identifier (rc=-6)\n"); sys.exit(1)
    if state == "running":
        put("dying:2")
elif cmd == "create":
    if os.path.exists(os.path.join(d, "fail_create")):
        sys.stderr.write("libxl: error: domain config broken\n"); sys.exit(3)
    if state != "absent":
        sys.stderr.write("domain with name already exists\n"); sys.exit(1)
    put("running")
"""


@pytest.fixture
def fake_xl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    xl = bindir / "xl"
    xl.write_text(FAKE_XL.replace("#!PYTHON", f"#!{sys.executable}"))
    xl.chmod(0o755)
    (tmp_path / "state").write_text("running")
    monkeypatch.setenv("FAKE_XL_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def calls(d: Path) -> list[str]:
    return (d / "calls").read_text().splitlines()


def test_parse_xl_list() -> None:
    head = "Name  ID   Mem VCPUs\tState\tTime(s)\n"
    assert parse_xl_list(head + "web1 3 1024 2 r----- 1.0\n", "web1") is DomainState.RUNNING
    assert parse_xl_list(head + "web1 3 1024 2 --p--- 1.0\n", "web1") is DomainState.PAUSED
    assert parse_xl_list(head + "web1 3 1024 2 ---s-- 1.0\n", "web1") is DomainState.SHUT
    assert parse_xl_list(head + "web1 3 1024 2 ----c- 1.0\n", "web1") is DomainState.CRASHED
    assert parse_xl_list(head + "web1 3 1024 2 -----d 1.0\n", "web1") is DomainState.DYING
    assert parse_xl_list(head + "web10 3 1024 2 r----- 1.0\n", "web1") is DomainState.ABSENT


def test_xl_driver(fake_xl: Path) -> None:
    drv = XlDriver("web1", "/etc/xen/web1.cfg", timeout=10)
    assert drv.state() is DomainState.RUNNING
    drv.destroy()
    assert drv.state() is DomainState.DYING
    assert drv.state() is DomainState.DYING
    assert drv.state() is DomainState.ABSENT
    drv.destroy()  # already gone: not an error
    drv.create()
    assert drv.state() is DomainState.RUNNING
    assert calls(fake_xl) == ["list web1", "destroy web1", "list web1", "list web1",
                              "list web1", "destroy web1", "create /etc/xen/web1.cfg", "list web1"]
    with pytest.raises(DriverError, match="already exists"):
        drv.create()


def test_xl_driver_missing_binary() -> None:
    with pytest.raises(DriverError, match="xl-nonexistent"):
        XlDriver("web1", "/x", xl="/nonexistent/xl-nonexistent").state()


class RealClock:
    def __init__(self) -> None:
        import time
        self._t = time

    def wall(self) -> float:
        return self._t.time()

    def monotonic(self) -> float:
        return self._t.monotonic()

    def sleep(self, s: float) -> None:
        self._t.sleep(s)


def _engine(tmp_path: Path, confirm: float = 5.0) -> Engine:
    vm = VMSpec(name="web1", uuid="u1", key_file=Path("/x"), driver="xl", domain="web1",
                config="/etc/xen/web1.cfg")
    return Engine({"web1": vm}, PolicySpec(confirm_timeout=confirm),
                  {"web1": XlDriver("web1", "/etc/xen/web1.cfg", timeout=10)},
                  StateStore(tmp_path / "st"), Journal(tmp_path / "st"), RealClock(),
                  poll_interval=0.01)


def _body(rid: str) -> bytes:
    return json.dumps({"request_id": rid, "vm": "web1", "vm_uuid": "u1", "incarnation": 0,
                       "action": "recreate", "peer": None, "reason": {"service": "apache2"},
                       "sent_at": 0.0}).encode()


def test_engine_recreates_through_fake_xl(fake_xl: Path) -> None:
    engine = _engine(fake_xl)
    rid = str(uuid.uuid4())
    _, job = engine.submit("web1", _body(rid))
    assert job == rid
    engine.execute(rid)
    assert engine.status("web1", rid).body["state"] == "done"
    assert calls(fake_xl) == ["destroy web1", "list web1", "list web1", "list web1",
                              "create /etc/xen/web1.cfg"]
    assert (fake_xl / "state").read_text() == "running"


def test_engine_stuck_domain_never_created(fake_xl: Path) -> None:
    (fake_xl / "state").write_text("stuck")
    engine = _engine(fake_xl, confirm=0.3)
    rid = str(uuid.uuid4())
    engine.submit("web1", _body(rid))
    engine.execute(rid)
    st = engine.status("web1", rid).body
    assert st["state"] == "failed" and "not confirmed" in st["detail"]
    assert not any(c.startswith("create") for c in calls(fake_xl))


def test_command_driver(tmp_path: Path) -> None:
    log = tmp_path / "log"
    state = tmp_path / "state"
    state.write_text("running\n")
    sh = "/bin/sh"
    drv = CommandDriver(
        "web1", "dom-web1",
        destroy=[sh, "-c", f"echo destroy {{domain}} >> {log}; echo shut > {state}"],
        create=[sh, "-c", f"echo create {{vm}} >> {log}; echo running > {state}"],
        state=["cat", str(state)], timeout=5)
    assert drv.state() is DomainState.RUNNING
    drv.destroy()
    assert drv.state() is DomainState.SHUT
    drv.create()
    assert drv.state() is DomainState.RUNNING
    assert log.read_text().splitlines() == ["destroy dom-web1", "create web1"]
    state.write_text("banana\n")
    assert drv.state() is DomainState.UNKNOWN
    bad = CommandDriver("w", "w", destroy=["false"], create=["false"], state=["false"])
    with pytest.raises(DriverError, match="exit 1"):
        bad.destroy()
    slow = CommandDriver("w", "w", destroy=["sleep", "5"], create=["true"], state=["true"],
                         timeout=0.2)
    with pytest.raises(DriverError, match="no answer"):
        slow.destroy()


@pytest.mark.skipif(importlib.util.find_spec("libvirt") is None,
                    reason="python3-libvirt is not installed (apt list --installed "
                           "python3-libvirt: none); the libvirt driver is untested here")
def test_libvirt_driver_test_uri() -> None:  # pragma: no cover - needs python3-libvirt
    from guardian.hostd import LibvirtDriver

    # libvirt's built-in test driver: a fake hypervisor with a running domain "test"
    drv = LibvirtDriver("test", "test:///default")
    assert drv.state() is DomainState.RUNNING
    drv.destroy()
    assert drv.state() is DomainState.SHUT
    drv.create()
    assert drv.state() is DomainState.RUNNING


def test_libvirt_driver_without_module() -> None:
    if importlib.util.find_spec("libvirt") is not None:
        pytest.skip("python3-libvirt is installed")
    from guardian.hostd import LibvirtDriver

    with pytest.raises(DriverError, match="python3-libvirt"):
        LibvirtDriver("web1")
