"""guardian.hostd's libvirt driver, for real against libvirt's built-in test driver
(``test:///default``, and ``test:///FILE.xml`` for a crashed domain).

python3-libvirt is Debian's package (the dev venv does not see it): run under Debian's
python, as scripts/test.sh does::

    PYTHONPATH=$PWD /usr/bin/python3 -m pytest -q -p no:cacheprovider \\
        tests/unit/test_hostd_libvirt.py
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guardian.hostd import DomainState, DriverError, LibvirtDriver

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libvirt") is None,
    reason="python3-libvirt is not importable by this python (Debian's package: run "
           "PYTHONPATH=$PWD /usr/bin/python3 -m pytest tests/unit/test_hostd_libvirt.py)")

#: the running domain of test:///default (its uuid is fixed by libvirt)
TEST_UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"
CRASHED_UUID = "11111111-2222-3333-4444-555555555555"
WEB1_UUID = "11111111-2222-3333-4444-666666666666"
VIR_DOMAIN_CRASHED = 6

NODE_XML = f"""<node>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>crashy</name>
    <uuid>{CRASHED_UUID}</uuid>
    <memory>65536</memory>
    <os><type>hvm</type></os>
    <test:runstate>{VIR_DOMAIN_CRASHED}</test:runstate>
  </domain>
  <domain type='test'>
    <name>web1</name>
    <uuid>{WEB1_UUID}</uuid>
    <memory>65536</memory>
    <os><type>hvm</type></os>
  </domain>
</node>
"""


@pytest.fixture
def node_uri(tmp_path: Path) -> str:
    """A private test hypervisor from an XML file (each open of it starts afresh)."""
    path = tmp_path / "node.xml"
    path.write_text(NODE_XML)
    return f"test://{path}"


@pytest.fixture
def default_test() -> Iterator[LibvirtDriver]:
    """The running domain "test" of test:///default (shared by every connection in
    this process): left running afterwards."""
    drv = LibvirtDriver("test", "test:///default", uuid=TEST_UUID)
    yield drv
    if drv.state() is not DomainState.RUNNING:
        drv.create()
    drv.close()


def test_default_test_domain(default_test: LibvirtDriver) -> None:
    drv = default_test
    assert drv.state() is DomainState.RUNNING
    drv.destroy()
    assert drv.state() is DomainState.SHUT  # destroyed: confirmed shut off
    assert drv.state().dead
    drv.destroy()  # already shut off: not an error
    drv.create()
    assert drv.state() is DomainState.RUNNING


def test_one_connection_reopened_after_failure(default_test: LibvirtDriver) -> None:
    drv = default_test
    drv.state()
    conn = drv._conn
    assert conn is not None
    drv.state()
    drv.destroy()
    drv.create()
    assert drv._conn is conn  # no new connection per call
    conn.close()  # the connection dies under the driver
    assert drv.state() is DomainState.RUNNING
    assert drv._conn is not None and drv._conn is not conn


def test_lookup_by_uuid_before_name(node_uri: str) -> None:
    # configured name differs from libvirt's: the uuid finds it
    drv = LibvirtDriver("web1-renamed", node_uri, uuid=WEB1_UUID)
    assert drv.state() is DomainState.RUNNING
    drv.destroy()
    assert drv.state() is DomainState.SHUT


def test_uuid_mismatch_never_destroyed(node_uri: str) -> None:
    drv = LibvirtDriver("web1", node_uri, uuid="0badc0de-0000-4000-8000-000000000099")
    with pytest.raises(DriverError, match="has uuid 11111111-2222-3333-4444-666666666666"):
        drv.state()
    with pytest.raises(DriverError, match="not touched"):
        drv.destroy()
    with pytest.raises(DriverError, match="not touched"):
        drv.create()
    # still running (the same private hypervisor, one connection)
    conn: Any = drv._conn
    assert conn is not None and conn.lookupByName("web1").isActive()


def test_undefined_domain_is_absent(node_uri: str) -> None:
    drv = LibvirtDriver("nosuch", node_uri, uuid="0badc0de-0000-4000-8000-000000000098")
    assert drv.state() is DomainState.ABSENT
    drv.destroy()  # absent: not an error
    with pytest.raises(DriverError, match="not defined, cannot create"):
        drv.create()
    assert LibvirtDriver("nosuch", node_uri).state() is DomainState.ABSENT  # by name


def test_crashed_domain(node_uri: str) -> None:
    drv = LibvirtDriver("crashy", node_uri, uuid=CRASHED_UUID)
    assert drv.state() is DomainState.CRASHED
    assert not drv.state().dead
    drv.destroy()
    assert drv.state() is DomainState.SHUT
    drv.create()
    assert drv.state() is DomainState.RUNNING


@pytest.mark.parametrize("uri", ["test:///nonexistent/node.xml", "bogus+nope:///x"])
def test_connection_failure_is_never_dead(uri: str) -> None:
    drv = LibvirtDriver("test", uri, uuid=TEST_UUID)
    with pytest.raises(DriverError, match="cannot connect"):
        drv.state()
    with pytest.raises(DriverError, match="cannot connect"):
        drv.destroy()
    with pytest.raises(DriverError, match="cannot connect"):
        drv.create()
    assert drv._conn is None


def test_engine_confirms_death_through_libvirt(node_uri: str, tmp_path: Path) -> None:
    import json
    import uuid

    from guardian.hostd import Engine, Journal, PolicySpec, StateStore, VMSpec

    vm = VMSpec(name="web1", uuid=WEB1_UUID, key_file=Path("/x"), driver="libvirt",
                domain="web1", uri=node_uri)
    drv = LibvirtDriver.from_spec(vm)
    engine = Engine({"web1": vm}, PolicySpec(confirm_timeout=5), {"web1": drv},
                    StateStore(tmp_path / "st"), Journal(tmp_path / "st"),
                    poll_interval=0.01)
    rid = str(uuid.uuid4())
    body = json.dumps({"request_id": rid, "vm": "web1", "vm_uuid": WEB1_UUID,
                       "incarnation": 0, "action": "recreate", "peer": None,
                       "reason": {"service": "apache2"}, "sent_at": 0.0}).encode()
    _, job = engine.submit("web1", body)
    assert job == rid
    engine.execute(rid)
    st = engine.status("web1", rid).body
    assert st["state"] == "done" and st["incarnation"] == 1, st
    assert drv.state() is DomainState.RUNNING
