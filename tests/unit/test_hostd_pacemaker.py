"""guardian.hostd's pacemaker driver, for real against Pacemaker's command-line tools
on a file CIB (``CIB_file=``: a small cib.xml with a VirtualDomain and a Xen primitive
and a status section): state through ``crm_mon``, ``--ban`` writing its location
constraint, ``--clear`` removing it. ``crm_resource --restart`` needs a live cluster:
that call goes through a recording stand-in (which hands everything else to the real
crm_resource), and the engine's managed-restart path is checked with it."""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from guardian.hostd import DomainState, DriverError, Engine, Journal, PolicySpec, StateStore
from guardian.hostd import VMSpec as HostdVMSpec
from guardian.hostd._pacemaker import PacemakerDriver, parse_crm_mon, view_state

CRM_RESOURCE = shutil.which("crm_resource") or shutil.which("/usr/sbin/crm_resource")
CRM_MON = shutil.which("crm_mon") or shutil.which("/usr/sbin/crm_mon")
pytestmark = pytest.mark.skipif(
    CRM_RESOURCE is None or CRM_MON is None,
    reason="pacemaker-cli-utils is not installed (crm_resource, crm_mon)")

UUID = "6f1c1d1e-0000-4000-8000-000000000001"
TX = "1:1:0:6695eb01-f6a4-8304-79aa-97f2502e193f"


def op(rsc: str, operation: str, rc: int = 0, interval: int = 0) -> str:
    return (f'<lrm_rsc_op id="{rsc}_last_0" operation_key="{rsc}_{operation}_{interval}" '
            f'operation="{operation}" crm-debug-origin="test" crm_feature_set="3.16.1" '
            f'transition-key="{TX}" transition-magic="0:{rc};{TX}" call-id="5" '
            f'rc-code="{rc}" op-status="0" interval="{interval}" last-rc-change="1700000000" '
            'exec-time="100" queue-time="0" op-digest="x"/>')


def cib(*, web1_ops: str = op("vm-web1", "start"), web1_on: str = "dom0a",
        dom0a: str = "online", stonith: bool = True) -> str:
    """vm-web1 (VirtualDomain) started on ``web1_on``, vm-db1 (Xen) stopped; nodes dom0a
    (``online`` | ``lost``) and dom0b."""
    def node_state(nid: str, name: str, up: bool, ops: str) -> str:
        lrm = (f'<lrm id="{nid}"><lrm_resources><lrm_resource id="vm-web1" class="ocf" '
               f'provider="heartbeat" type="VirtualDomain">{ops}</lrm_resource>'
               '</lrm_resources></lrm>') if ops else ""
        attrs = ('in_ccm="true" crmd="online" join="member"' if up
                 else 'in_ccm="false" crmd="offline" join="down"')
        return (f'<node_state id="{nid}" uname="{name}" {attrs} crm-debug-origin="test" '
                f'expected="member">{lrm}</node_state>')

    return f"""<cib crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="5"
     num_updates="0" admin_epoch="0" have-quorum="1" dc-uuid="2">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="opt-stonith" name="stonith-enabled" value="{str(stonith).lower()}"/>
      </cluster_property_set>
    </crm_config>
    <nodes>
      <node id="1" uname="dom0a"/>
      <node id="2" uname="dom0b"/>
    </nodes>
    <resources>
      <primitive id="vm-web1" class="ocf" provider="heartbeat" type="VirtualDomain">
        <instance_attributes id="vm-web1-ia">
          <nvpair id="vm-web1-cfg" name="config" value="/etc/libvirt/qemu/web1.xml"/>
        </instance_attributes>
      </primitive>
      <primitive id="vm-db1" class="ocf" provider="heartbeat" type="Xen">
        <instance_attributes id="vm-db1-ia">
          <nvpair id="vm-db1-cfg" name="xmfile" value="/etc/xen/db1.cfg"/>
        </instance_attributes>
      </primitive>
    </resources>
    <constraints/>
  </configuration>
  <status>
    {node_state("1", "dom0a", dom0a == "online", web1_ops if web1_on == "dom0a" else "")}
    {node_state("2", "dom0b", True, web1_ops if web1_on == "dom0b" else "")}
  </status>
</cib>
"""


def write_cib(tmp_path: Path, **kw: object) -> str:
    path = tmp_path / "cib.xml"
    path.write_text(cib(**kw))  # type: ignore[arg-type]
    return str(path)


def driver(cib_file: str, resource: str = "vm-web1", **kw: object) -> PacemakerDriver:
    assert CRM_RESOURCE is not None and CRM_MON is not None
    return PacemakerDriver(resource, crm_resource=kw.pop("crm_resource", CRM_RESOURCE),  # type: ignore[arg-type]
                           crm_mon=CRM_MON, cib_file=cib_file, timeout=20, **kw)  # type: ignore[arg-type]


def constraints(cib_file: str) -> list[dict[str, str]]:
    root = ET.parse(cib_file).getroot()
    return [dict(c.attrib) for c in root.iterfind(".//constraints/rsc_location")]


def test_state_from_file_cib(tmp_path: Path) -> None:
    f = write_cib(tmp_path)
    assert driver(f).state() is DomainState.RUNNING
    assert driver(f, "vm-db1").state() is DomainState.SHUT
    with pytest.raises(DriverError, match="'nope' is not in the CIB"):
        driver(f, "nope").state()


def test_failed_resource_is_crashed(tmp_path: Path) -> None:
    f = write_cib(tmp_path, web1_ops=op("vm-web1", "monitor", rc=7, interval=10000))
    st = driver(f).state()
    assert st is DomainState.CRASHED and not st.dead


def test_lost_node_is_unknown_never_dead(tmp_path: Path) -> None:
    # dom0a lost with fencing on: unclean; what ran there is not known to be stopped
    f = write_cib(tmp_path, dom0a="lost")
    assert driver(f).state() is DomainState.UNKNOWN
    assert driver(f, "vm-db1").state() is DomainState.UNKNOWN
    # fencing off: Pacemaker "stops" resources of a lost node on blind faith: not dead
    f = write_cib(tmp_path, dom0a="lost", stonith=False)
    assert driver(f).state() is DomainState.UNKNOWN
    f = write_cib(tmp_path, dom0a="lost")
    with pytest.raises(DriverError, match="cannot vouch"):
        driver(f).destroy()
    assert constraints(f) == []


def test_ban_writes_location_constraint(tmp_path: Path) -> None:
    f = write_cib(tmp_path)
    drv = driver(f)
    drv.destroy()
    assert drv.banned == ("dom0a",)
    assert constraints(f) == [{"id": "cli-ban-vm-web1-on-dom0a", "rsc": "vm-web1",
                               "role": "Started", "node": "dom0a", "score": "-INFINITY"}]
    # no cluster acts on a file CIB: the instance on dom0a still shows as running there
    assert drv.state() is DomainState.RUNNING
    drv.create()  # --clear: the ban constraint goes
    assert constraints(f) == []
    assert not drv.banned


def test_ban_node_configured_and_instance_state(tmp_path: Path) -> None:
    # the resource already runs on dom0b: banning it from dom0a leaves no instance there
    f = write_cib(tmp_path, web1_on="dom0b")
    drv = driver(f, ban_node="dom0a")
    drv.destroy()
    assert [c["node"] for c in constraints(f)] == ["dom0a"]
    assert drv.state() is DomainState.SHUT  # the instance on dom0a: stopped
    drv.banned = ()
    assert drv.state() is DomainState.RUNNING  # the resource as a whole


def test_destroy_of_stopped_resource_is_a_no_op(tmp_path: Path) -> None:
    f = write_cib(tmp_path)
    drv = driver(f, "vm-db1")
    drv.destroy()
    assert constraints(f) == [] and drv.state() is DomainState.SHUT


def test_restart_needs_a_live_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = write_cib(tmp_path)
    with pytest.raises(DriverError, match="needs a live cluster"):
        driver(f).recreate()
    # the real --restart on a file CIB (through the environment) "waits for 0
    # resources to stop" and exits 0: not taken as a confirmed stop
    monkeypatch.setenv("CIB_file", f)
    drv = driver(f)
    drv.cib_file = None
    drv.timeout = 5
    with pytest.raises(DriverError, match="waited for no stop"):
        drv.recreate()


def test_parse_crm_mon_roles() -> None:
    def xml(role: str, active: str = "true", blocked: str = "false") -> str:
        return (f'<pacemaker-result><nodes><node name="a" online="true" unclean="false" '
                f'pending="false"/></nodes><resources><resource id="r" role="{role}" '
                f'active="{active}" blocked="{blocked}" failed="false" managed="true">'
                f'<node name="a"/></resource></resources></pacemaker-result>')

    def state(text: str) -> DomainState:
        view = parse_crm_mon(text, "r")
        assert view is not None
        return view_state(view)

    assert state(xml("Started")) is DomainState.RUNNING
    assert state(xml("Promoted")) is DomainState.RUNNING
    assert state(xml("Stopping")) is DomainState.DYING
    assert state(xml("Started", blocked="true")) is DomainState.UNKNOWN
    assert parse_crm_mon(xml("Started"), "other") is None
    with pytest.raises(DriverError, match="not XML"):
        parse_crm_mon("Connection to cluster failed", "r")


# -- the engine with a managed restart ------------------------------------------------

FAKE_CRM_RESOURCE = r"""#!PYTHON
import os, sys
d = os.environ["FAKE_PCMK_DIR"]
with open(os.path.join(d, "calls"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
if "--restart" in sys.argv:
    sys.exit(int(open(os.path.join(d, "restart_rc")).read()))
os.execv(REAL, [REAL] + sys.argv[1:])
"""


@pytest.fixture
def recording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "crm_resource"
    path.write_text(FAKE_CRM_RESOURCE.replace("#!PYTHON", f"#!{sys.executable}")
                    .replace("REAL", repr(CRM_RESOURCE)))
    path.chmod(0o755)
    (tmp_path / "restart_rc").write_text("0")
    monkeypatch.setenv("FAKE_PCMK_DIR", str(tmp_path))
    return path


def _engine(tmp_path: Path, drv: PacemakerDriver) -> Engine:
    vm = HostdVMSpec(name="web1", uuid=UUID, key_file=Path("/x"), driver="pacemaker",
                     domain="web1", resource="vm-web1")
    return Engine({"web1": vm}, PolicySpec(confirm_timeout=2), {"web1": drv},
                  StateStore(tmp_path / "st"), Journal(tmp_path / "st"), poll_interval=0.01)


def _submit(engine: Engine, action: str = "recreate") -> str:
    rid = str(uuid.uuid4())
    body = json.dumps({"request_id": rid, "vm": "web1", "vm_uuid": UUID, "incarnation": 0,
                       "action": action, "peer": None, "reason": {"service": "apache2"},
                       "sent_at": 0.0}).encode()
    _, job = engine.submit("web1", body)
    assert job == rid
    return rid


def live(tmp_path: Path, recording: Path, monkeypatch: pytest.MonkeyPatch,
         **kw: object) -> PacemakerDriver:
    """The driver as on a live cluster (no cib_file), the tools reading the file CIB
    through the environment, --restart recorded."""
    f = write_cib(tmp_path, **kw)
    monkeypatch.setenv("CIB_file", f)
    drv = driver(f, crm_resource=str(recording))
    drv.cib_file = None
    return drv


def test_engine_recreate_is_one_managed_restart(tmp_path: Path, recording: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    drv = live(tmp_path, recording, monkeypatch)
    engine = _engine(tmp_path, drv)
    rid = _submit(engine)
    engine.execute(rid)
    st = engine.status("web1", rid).body
    assert st["state"] == "done" and st["incarnation"] == 1, st
    assert "restarted by its manager" in st["detail"]
    # nothing destroyed or created separately: one restart call
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["--resource vm-web1 --restart --timeout=20s"]
    assert engine.store.incarnation("web1") == 1


def test_engine_failed_restart_keeps_incarnation(tmp_path: Path, recording: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "restart_rc").write_text("124")
    drv = live(tmp_path, recording, monkeypatch)
    engine = _engine(tmp_path, drv)
    rid = _submit(engine)
    engine.execute(rid)
    st = engine.status("web1", rid).body
    assert st["state"] == "failed" and "exit 124" in st["detail"], st
    assert engine.store.incarnation("web1") == 0


def test_restart_checked_afterwards(tmp_path: Path, recording: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """crm_resource said 0 but the cluster shows it failed: not done."""
    drv = live(tmp_path, recording, monkeypatch,
               web1_ops=op("vm-web1", "monitor", rc=7, interval=10000))
    with pytest.raises(DriverError, match="is crashed after the restart"):
        drv.recreate()


def test_engine_fence_without_cluster_not_confirmed(tmp_path: Path) -> None:
    """fence-peer bans; with no cluster to stop it, death is never confirmed."""
    f = write_cib(tmp_path)
    engine = _engine(tmp_path, driver(f))
    rid = str(uuid.uuid4())
    engine.store.requests[rid] = {"sender": "web1", "target": "web1", "action": "fence-peer",
                                  "state": "accepted", "reason": {}, "incarnation": 0}
    engine.execute(rid)
    st = engine.store.requests[rid]
    assert st["state"] == "failed" and "not confirmed" in st["detail"], st
    assert [c["node"] for c in constraints(f)] == ["dom0a"]
    assert engine.store.incarnation("web1") == 0


def test_cib_file_only_for_the_driver(tmp_path: Path) -> None:
    assert "CIB_file" not in os.environ
    drv = driver(write_cib(tmp_path))
    env = drv._env()
    assert env is not None and env["CIB_file"] == drv.cib_file
