"""guardian.hostd drivers: xl against a fake ``xl`` on PATH (the hypervisor cannot run
here), the command driver, finding drivers by name (entry points), the config keys,
and the engine driving a fake xl. libvirt: tests/unit/test_hostd_libvirt.py;
pacemaker: tests/unit/test_hostd_pacemaker.py."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from checks import ConfigErrors
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
    build_driver,
    parse,
    parse_xl_list,
)
from guardian.hostd._drivers import (
    ENTRY_POINT_GROUP,
    UnknownDriverError,
    available_drivers,
    load_driver_class,
    xl_entry_state,
)

UUID = "6f1c1d1e-0000-4000-8000-000000000001"

# A fake xl: state in $FAKE_XL_DIR/state (running|paused|crashed|shutdown|dying:N|absent|
# stuck|hang), the domain's uuid in $FAKE_XL_DIR/uuid, calls appended to
# $FAKE_XL_DIR/calls. "dying:N": the next N `xl list` show it dying (and `xl list -l`
# cannot read its config: an empty list, as real xl does), then it is gone. "hang": the
# toolstack does not answer.
FAKE_XL = r"""#!PYTHON
import json, os, sys, time
d = os.environ["FAKE_XL_DIR"]
args = sys.argv[1:]
with open(os.path.join(d, "calls"), "a") as f:
    f.write(" ".join(args) + "\n")
sf = os.path.join(d, "state")
state = open(sf).read().strip()
uuid = open(os.path.join(d, "uuid")).read().strip()
def put(s):
    open(sf, "w").write(s)
if state == "hang":
    time.sleep(30)
cmd = args[0]
if cmd == "list":
    long = args[1] == "-l"
    arg = args[-1]
    if state == "absent" or arg not in ("web1", "12"):
        sys.stderr.write(f"{arg} is an invalid domain identifier (rc=-6)\n"); sys.exit(1)
    flags = {"running": "-b----", "paused": "--p---", "crashed": "----c-",
             "shutdown": "---s--", "stuck": "--p--d"}.get(state, "-----d")
    if long:
        if state.startswith("dying") or state == "stuck":
            print("[\n]")
        else:
            print(json.dumps([{"domid": 12, "config": {"c_info": {
                "type": "pv", "name": "web1", "uuid": uuid}, "b_info": {}}}], indent=4))
        sys.exit(0)
    if state.startswith("dying:"):
        n = int(state.split(":")[1])
        put("absent" if n <= 1 else f"dying:{n - 1}")
    print("Name                                        ID   Mem VCPUs\tState\tTime(s)")
    print(f"web1                                        12  1024     2     {flags}      41.2")
elif cmd == "destroy":
    if state == "absent" or args[1] not in ("web1", "12"):
        sys.stderr.write(f"{args[1]} is an invalid domain identifier (rc=-6)\n"); sys.exit(1)
    if state in ("running", "paused", "crashed", "shutdown"):
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
    (tmp_path / "uuid").write_text(UUID)
    monkeypatch.setenv("FAKE_XL_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def calls(d: Path) -> list[str]:
    path = d / "calls"
    return path.read_text().splitlines() if path.exists() else []


def xl_driver(timeout: float = 10) -> XlDriver:
    return XlDriver("web1", "/etc/xen/web1.cfg", uuid=UUID, timeout=timeout)


def test_parse_xl_list() -> None:
    head = "Name  ID   Mem VCPUs\tState\tTime(s)\n"
    assert parse_xl_list(head + "web1 3 1024 2 r----- 1.0\n", "web1") is DomainState.RUNNING
    assert parse_xl_list(head + "web1 3 1024 2 --p--- 1.0\n", "web1") is DomainState.PAUSED
    assert parse_xl_list(head + "web1 3 1024 2 ---s-- 1.0\n", "web1") is DomainState.SHUT
    assert parse_xl_list(head + "web1 3 1024 2 ----c- 1.0\n", "web1") is DomainState.CRASHED
    assert parse_xl_list(head + "web1 3 1024 2 -----d 1.0\n", "web1") is DomainState.DYING
    assert parse_xl_list(head + "web10 3 1024 2 r----- 1.0\n", "web1") is DomainState.ABSENT


def test_xl_entry_state() -> None:
    assert xl_entry_state({"domid": 1, "config": {}}) is None  # real xl: no state in it
    assert xl_entry_state({"state": "--p---"}) is DomainState.PAUSED
    assert xl_entry_state({"info": {"running": True, "dying": False}}) is DomainState.RUNNING
    assert xl_entry_state({"info": {"blocked": True, "dying": True}}) is DomainState.DYING
    assert xl_entry_state({"info": {"running": False, "shutdown": True,
                                    "shutdown_reason": "crash"}}) is DomainState.CRASHED
    assert xl_entry_state({"info": {"running": False, "shutdown": True,
                                    "shutdown_reason": "poweroff"}}) is DomainState.SHUT


@pytest.mark.parametrize(("state", "expect"), [
    ("running", DomainState.RUNNING), ("paused", DomainState.PAUSED),
    ("crashed", DomainState.CRASHED), ("shutdown", DomainState.SHUT),
    ("dying:5", DomainState.DYING), ("absent", DomainState.ABSENT),
    ("stuck", DomainState.DYING),
])
def test_xl_states(fake_xl: Path, state: str, expect: DomainState) -> None:
    (fake_xl / "state").write_text(state)
    assert xl_driver().state() is expect


def test_xl_driver(fake_xl: Path) -> None:
    drv = xl_driver()
    assert drv.state() is DomainState.RUNNING
    drv.destroy()
    assert drv.state() is DomainState.DYING
    assert drv.state() is DomainState.DYING
    assert drv.state() is DomainState.ABSENT
    drv.destroy()  # already gone: not an error
    drv.create()
    assert drv.state() is DomainState.RUNNING
    assert calls(fake_xl) == [
        "list -l web1", "list web1",
        "list -l web1", "destroy 12",  # by the domid whose uuid was checked
        "list -l web1", "list web1", "list -l web1", "list web1",
        "list -l web1", "list web1",
        "list -l web1", "list web1", "destroy web1",
        "create /etc/xen/web1.cfg",
        "list -l web1", "list web1"]
    with pytest.raises(DriverError, match="already exists"):
        drv.create()


def test_xl_uuid_mismatch_never_destroyed(fake_xl: Path) -> None:
    (fake_xl / "uuid").write_text("0badc0de-0000-4000-8000-000000000099")
    drv = xl_driver()
    with pytest.raises(DriverError, match="another domain under that name"):
        drv.state()
    with pytest.raises(DriverError, match="not touched"):
        drv.destroy()
    assert not any(c.startswith("destroy") for c in calls(fake_xl))
    assert (fake_xl / "state").read_text() == "running"


def test_xl_uuid_compared_loosely(fake_xl: Path) -> None:
    (fake_xl / "uuid").write_text(UUID.upper())
    assert xl_driver().state() is DomainState.RUNNING


def test_xl_toolstack_hang_is_never_dead(fake_xl: Path) -> None:
    (fake_xl / "state").write_text("hang")
    drv = xl_driver(timeout=0.5)
    with pytest.raises(DriverError, match="no answer in 0.5s"):
        drv.state()
    with pytest.raises(DriverError, match="no answer"):
        drv.destroy()


def test_xl_not_json(fake_xl: Path) -> None:
    (fake_xl / "bin" / "xl").write_text(f"#!{sys.executable}\nprint('(domain (domid 12))')\n")
    with pytest.raises(DriverError, match="output_format"):
        xl_driver().state()


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


def _engine(tmp_path: Path, confirm: float = 5.0, timeout: float = 10) -> Engine:
    vm = VMSpec(name="web1", uuid=UUID, key_file=Path("/x"), driver="xl", domain="web1",
                config="/etc/xen/web1.cfg")
    return Engine({"web1": vm}, PolicySpec(confirm_timeout=confirm),
                  {"web1": xl_driver(timeout)},
                  StateStore(tmp_path / "st"), Journal(tmp_path / "st"), RealClock(),
                  poll_interval=0.01)


def _body(rid: str) -> bytes:
    return json.dumps({"request_id": rid, "vm": "web1", "vm_uuid": UUID, "incarnation": 0,
                       "action": "recreate", "peer": None, "reason": {"service": "apache2"},
                       "sent_at": 0.0}).encode()


def test_engine_recreates_through_fake_xl(fake_xl: Path) -> None:
    engine = _engine(fake_xl)
    rid = str(uuid.uuid4())
    _, job = engine.submit("web1", _body(rid))
    assert job == rid
    engine.execute(rid)
    assert engine.status("web1", rid).body["state"] == "done"
    assert calls(fake_xl) == ["list -l web1", "destroy 12",
                              "list -l web1", "list web1", "list -l web1", "list web1",
                              "list -l web1", "list web1",
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


def test_engine_hung_toolstack_never_created(fake_xl: Path) -> None:
    engine = _engine(fake_xl, confirm=0.5, timeout=0.3)
    rid = str(uuid.uuid4())
    engine.submit("web1", _body(rid))
    (fake_xl / "state").write_text("hang")
    engine.execute(rid)
    st = engine.status("web1", rid).body
    assert st["state"] == "failed" and "no answer" in st["detail"]
    assert not any(c.startswith("create") for c in calls(fake_xl))


def test_engine_uuid_mismatch_never_destroyed(fake_xl: Path) -> None:
    (fake_xl / "uuid").write_text("0badc0de-0000-4000-8000-000000000099")
    engine = _engine(fake_xl)
    rid = str(uuid.uuid4())
    engine.submit("web1", _body(rid))
    engine.execute(rid)
    st = engine.status("web1", rid).body
    assert st["state"] == "failed" and "not touched" in st["detail"]
    assert [c for c in calls(fake_xl) if not c.startswith("list")] == []


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


def test_command_driver_uuid_placeholder(tmp_path: Path) -> None:
    drv = CommandDriver("web1", "dom", destroy=["true"], create=["true"],
                        state=["echo", "{uuid}"], uuid=UUID)
    assert drv._argv(["x-{uuid}-{vm}-{domain}"]) == [f"x-{UUID}-web1-dom"]
    assert drv.state() is DomainState.UNKNOWN


def test_libvirt_driver_without_module() -> None:
    if importlib.util.find_spec("libvirt") is not None:
        pytest.skip("python3-libvirt is importable here: tests/unit/test_hostd_libvirt.py")
    from guardian.hostd import LibvirtDriver

    with pytest.raises(DriverError, match="python3-libvirt"):
        LibvirtDriver("web1")


# -- finding drivers, their config keys ----------------------------------------------


def test_builtin_drivers_found_by_name() -> None:
    names = available_drivers()
    assert {"xl", "libvirt", "command", "pacemaker", "lab"} <= set(names)
    assert load_driver_class("xl") is XlDriver
    assert load_driver_class("guardian.hostd._drivers:CommandDriver") is CommandDriver
    from guardian.hostd._pacemaker import PacemakerDriver

    assert load_driver_class("pacemaker") is PacemakerDriver
    with pytest.raises(UnknownDriverError, match="unknown driver 'vmware'.*known:.*xl"):
        load_driver_class("vmware")
    with pytest.raises(UnknownDriverError, match="not a driver class"):
        load_driver_class("json:dumps")


def test_entry_points_published() -> None:
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if not eps:
        pytest.skip("guardian is not installed (no entry points): the built-ins are used")
    assert eps["xl"] == "guardian.hostd._drivers:XlDriver"
    assert eps["pacemaker"] == "guardian.hostd._pacemaker:PacemakerDriver"
    assert eps["lab"] == "guardian.lab._hostd_driver:LabDriver"
    for name, value in eps.items():
        assert available_drivers()[name] == value


class PluginDriver:
    """A third-party driver with a key of its own."""

    KEYS = frozenset({"api_url"})
    REQUIRED = frozenset({"api_url"})

    def __init__(self, vm: VMSpec) -> None:
        self.vm = vm

    @classmethod
    def from_spec(cls, vm: VMSpec) -> PluginDriver:
        return cls(vm)

    def state(self) -> DomainState:
        return DomainState.UNKNOWN

    def destroy(self) -> None:
        pass

    def create(self) -> None:
        pass


def vms(table: str) -> dict[str, VMSpec]:
    import tomllib

    data = tomllib.loads(f'[hostd]\nlisten = "127.0.0.1"\n'
                         f'[vms.web1]\nuuid = "{UUID}"\nkey_file = "/k"\n{table}')
    return dict(parse(data, "/etc/guardian/hostd.toml", load_keys=False).vms)


def config_error(table: str) -> str:
    with pytest.raises(ConfigErrors) as info:
        vms(table)
    return str(info.value)


def test_config_driver_keys() -> None:
    vm = vms('driver = "xl"\nconfig = "/etc/xen/web1.cfg"\nxl = "/usr/sbin/xl"')["web1"]
    drv = build_driver(vm)
    assert isinstance(drv, XlDriver)
    assert (drv.xl, drv.config, drv.uuid) == ("/usr/sbin/xl", "/etc/xen/web1.cfg", UUID)
    vm = vms('driver = "pacemaker"\nresource = "vm-web1"\nban_node = "dom0b"\n'
             'crm_resource = "/usr/sbin/crm_resource"\ncommand_timeout = "90s"')["web1"]
    from guardian.hostd._pacemaker import PacemakerDriver

    pm = build_driver(vm)
    assert isinstance(pm, PacemakerDriver)
    assert (pm.resource, pm.ban_node, pm.crm_resource, pm.crm_mon, pm.timeout) == (
        "vm-web1", "dom0b", "/usr/sbin/crm_resource", "crm_mon", 90.0)
    pm = build_driver(vms('driver = "pacemaker"\ndomain = "dom-web1"')["web1"])
    assert isinstance(pm, PacemakerDriver) and pm.resource == "dom-web1"
    assert vms('driver = "lab"\ndomain = "vm01"')["web1"].domain == "vm01"
    assert vms('driver = "libvirt"\nuri = "test:///default"')["web1"].uri == "test:///default"


def test_config_plugin_driver_by_module_path() -> None:
    vm = vms(f'driver = "{__name__}:PluginDriver"\napi_url = "https://x"')["web1"]
    assert vm.options == {"api_url": "https://x"}
    assert isinstance(build_driver(vm), PluginDriver)
    assert "vms.web1.api_url: is required" in config_error(
        f'driver = "{__name__}:PluginDriver"')


@pytest.mark.parametrize(("table", "where", "what"), [
    ('driver = "vmware"', "vms.web1.driver", "unknown driver 'vmware'"),
    ('driver = "nomodule:X"', "vms.web1.driver", "cannot import 'nomodule'"),
    ('driver = "xl"', "vms.web1.config", "is required with driver = 'xl'"),
    ('driver = "xl"\nconfig = "/x"\nresource = "r"', "vms.web1.resource",
     "not used by driver = 'xl' (only by pacemaker)"),
    ('driver = "pacemaker"\nuri = "qemu:///system"', "vms.web1.uri", "only by libvirt"),
    ('driver = "lab"\nstate_command = ["x"]', "vms.web1.state_command", "only by command"),
    ('driver = "command"\ndestroy_command = ["d"]\ncreate_command = ["c"]',
     "vms.web1.state_command", "is required"),
    ('driver = "pacemaker"\nresource = ""', "vms.web1.resource", "not a non-empty string"),
    ('driver = "pacemaker"\ncommand_timeout = "0s"', "vms.web1.command_timeout",
     "more than 0"),
    ('driver = "pacemaker"\nresourse = "r"', "vms.web1.resourse", "unknown key"),
])
def test_config_errors_name_file_and_key(table: str, where: str, what: str) -> None:
    text = config_error(table)
    assert f"/etc/guardian/hostd.toml: {where}" in text and what in text, text


def test_build_driver_unknown_name() -> None:
    vm = VMSpec(name="web1", uuid=UUID, key_file=Path("/k"), driver="vmware", domain="w")
    with pytest.raises(DriverError, match="vms.web1.driver: unknown driver"):
        build_driver(vm)


def test_lab_driver_needs_a_live_lab() -> None:
    from guardian.lab import LabDriver

    vm = vms('driver = "lab"\ndomain = "vm-nowhere"')["web1"]
    assert load_driver_class("lab") is LabDriver
    with pytest.raises(DriverError, match="no VM 'vm-nowhere' in a lab alive"):
        build_driver(vm)
