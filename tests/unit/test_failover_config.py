"""[failover] in guardian's configuration: defaults, every key, and errors that name the
file and the key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from checks import ConfigErrors
from guardian import GuardianSpec, config
from ipfailover._settings import GroupSettings, PathSettings

SERVICE = """
[services.apache2]
backend = "command"
start_command = ["/bin/true"]
ladder = ["failover", "alert"]
"""

GROUP = """
[failover]
node = "vm01"

[failover.groups.web]
peer = "vm02"
vips = ["192.0.2.100/24"]
paths = [{ local = "192.0.2.11", peer = "192.0.2.12" }]
"""


def load(text: str) -> GuardianSpec:
    return config.loads(text, "guardian.toml")


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(text)
    return [str(e) for e in info.value.errors]


def test_defaults() -> None:
    spec = load(SERVICE + GROUP + 'services = ["apache2"]\n')
    fo = spec.failover
    assert fo is not None
    assert (fo.node, fo.key_file, fo.port) == ("vm01", "/etc/guardian/failover.key", 694)
    g = fo.groups["web"]
    assert g == GroupSettings(
        group="web", node="vm01", peer="vm02",
        vips=(ipaddress.ip_interface("192.0.2.100/24"),),
        paths=(PathSettings(ipaddress.ip_address("192.0.2.11"),
                            ipaddress.ip_address("192.0.2.12")),),
        services=("apache2",), state_dir="/var/lib/guardian")
    assert (g.interval, g.lease, g.init_dead, g.preempt, g.fence) == (0.1, 3, 2.0, False, "none")
    assert g.renew_interval == 1.0
    cfg = g.pair_config()
    assert cfg.node == "vm01" and cfg.peer == "vm02" and cfg.priority == 100
    # the ladder's failover rung is tracked: no "logged only" warning
    assert not [w for w in spec.warnings if "failover" in w], spec.warnings
    assert fo.tracking("apache2") == [g]


def test_every_key() -> None:
    spec = load(SERVICE + """
[services.mysql]
backend = "command"
start_command = ["/bin/true"]

[guardian]
state_dir = "/srv/state"

[failover]
node = "alpha"
key_file = "/etc/keys/fo.key"
port = 7000

[failover.groups.web]
peer = "beta"
priority = 200
interface = "ens3"
vips = ["192.0.2.100/24", "2001:db8::100/64"]
paths = [{ local = "192.0.2.11", peer = "192.0.2.12" },
         { local = "198.51.100.1", peer = "198.51.100.2", interface = "ens4" }]
port = 7001
interval = "200ms"
lease = "5s"
preempt = true
preempt_delay = "1m"
min_healthy = "20s"
init_dead = "3s"
fence = "none"
services = ["apache2"]
cold = ["mysql"]
cold_timeout = "15s"
ping = ["192.0.2.1", "2001:db8::1"]
ping_interval = "2s"
ping_timeout = "300ms"
notify = "/usr/local/bin/hook --flag"
notify_timeout = "5s"
announce_count = 5
announce_interval = "50ms"
announce_refresh = "0"
track_interface = false
unicast_clients = false
""")
    assert spec.failover is not None
    g = spec.failover.groups["web"]
    assert g.node == "alpha" and g.peer == "beta" and g.priority == 200
    assert g.key_file == "/etc/keys/fo.key" and g.port == 7001 and spec.failover.port == 7000
    assert g.interface == "ens3" and len(g.vips) == 2 and g.vips[1].ip.version == 6
    assert g.paths[1] == PathSettings(ipaddress.ip_address("198.51.100.1"),
                                      ipaddress.ip_address("198.51.100.2"), "ens4")
    assert (g.interval, g.lease, g.preempt, g.preempt_delay, g.min_healthy, g.init_dead) == (
        0.2, 5, True, 60.0, 20.0, 3.0)
    assert g.cold == ("mysql",) and g.cold_timeout == 15.0
    assert [str(p) for p in g.ping] == ["192.0.2.1", "2001:db8::1"]
    assert (g.ping_interval, g.ping_timeout) == (2.0, 0.3)
    assert g.notify == ("/usr/local/bin/hook", "--flag") and g.notify_timeout == 5.0
    assert (g.announce_count, g.announce_interval, g.announce_refresh) == (5, 0.05, 0.0)
    assert g.track_interface is False
    assert g.unicast_clients is False
    assert g.state_dir == "/srv/state"
    assert spec.failover.cold_group("mysql") is g


@pytest.mark.parametrize(("extra", "where", "message"), [
    ("colour = 1\n", "failover.groups.web.colour", "unknown key"),
    ("priority = 300\n", "failover.groups.web.priority", "above the maximum 255"),
    ("lease = \"2500ms\"\n", "failover.groups.web.lease", "whole seconds"),
    ("lease = \"1s\"\n", "failover.groups.web.lease", "whole seconds, 2s..1h"),
    ("interval = \"5ms\"\n", "failover.groups.web.interval", "0.02..60 s"),
    ("fence = \"stonith\"\n", "failover.groups.web.fence", "not one of none, dom0"),
    ("services = [\"nginx\"]\n", "failover.groups.web.services[0]",
     "not a configured service"),
    ("cold = [\"apache2\", \"apache2\"]\n", "failover.groups.web.cold", "twice"),
    ("ping = [\"gateway\"]\n", "failover.groups.web.ping", "not an IP address"),
    ("interface = \"a-very-long-interface\"\n", "failover.groups.web.interface",
     "1-15 characters"),
    ("announce_count = 0\n", "failover.groups.web.announce_count", "below the minimum 1"),
    ("notify = 3\n", "failover.groups.web.notify", "not a command"),
    ("verify = [\"gateway\"]\n", "failover.groups.web.verify", "not an IP address"),
    ("verify = [\"192.0.2.100\"]\n", "failover.groups.web.verify[0]", "one of the VIPs"),
    ("verify_timeout = \"0\"\n", "failover.groups.web.verify_timeout", "longer than 0"),
    ("verify_timeout = \"2m\"\n", "failover.groups.web.verify_timeout", "at most 1m"),
])
def test_group_errors_name_the_key(extra: str, where: str, message: str) -> None:
    errs = errors(SERVICE + GROUP + extra)
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"guardian.toml: {where}: "), errs
    assert message in errs[0], errs


@pytest.mark.parametrize(("vips", "message"), [
    ('["192.0.2.100/24", "192.0.2.100/25"]', "listed twice"),
    ('["224.0.0.5/24"]', "not a unicast address"),
    ('["fe80::5/64"]', "link-local"),
    ('["192.0.2.300/24"]', "with a prefix length"),
    ("[]", "not a list of addresses"),
    (str([f"192.0.2.{i}/24" for i in range(1, 10)]).replace("'", '"'), "at most 8"),
])
def test_vip_errors(vips: str, message: str) -> None:
    text = SERVICE + GROUP.replace('vips = ["192.0.2.100/24"]', f"vips = {vips}")
    errs = errors(text)
    assert errs[0].startswith("guardian.toml: failover.groups.web.vips: "), errs
    assert message in errs[0], errs


@pytest.mark.parametrize(("paths", "where", "message"), [
    ("[]", "failover.groups.web.paths", "list of tables"),
    ('[{ local = "192.0.2.11" }]', "failover.groups.web.paths[0].peer", "is required"),
    ('[{ local = "192.0.2.11", peer = "2001:db8::12" }]', "failover.groups.web.paths[0].peer",
     "same family"),
    ('[{ local = "192.0.2.11", peer = "192.0.2.11" }]', "failover.groups.web.paths[0].peer",
     "local address"),
    ('[{ local = "192.0.2.11", peer = "192.0.2.12", mtu = 9000 }]',
     "failover.groups.web.paths[0].mtu", "unknown key"),
])
def test_path_errors(paths: str, where: str, message: str) -> None:
    text = SERVICE + GROUP.replace(
        'paths = [{ local = "192.0.2.11", peer = "192.0.2.12" }]', f"paths = {paths}")
    errs = errors(text)
    assert errs[0].startswith(f"guardian.toml: {where}: "), errs
    assert message in errs[0], errs


def test_top_level_errors() -> None:
    errs = errors(SERVICE + GROUP.replace('node = "vm01"', 'node = "vm01"\nport = 0'))
    assert errs == ["guardian.toml: failover.port: 0 is below the minimum 1"]
    errs = errors(SERVICE + GROUP.replace('node = "vm01"', 'node = "vm01"\nkey = "x"'))
    assert errs == ["guardian.toml: failover.key: unknown key"]
    errs = errors(SERVICE + GROUP.replace('node = "vm01"', 'key_file = "keys/fo"'))
    assert errs == ["guardian.toml: failover.key_file: must be an absolute path"]
    errs = errors(SERVICE + GROUP.replace('peer = "vm02"', 'peer = "vm01"'))
    assert errs == ["guardian.toml: failover.groups.web.peer: is this node's own name "
                    "('vm01', failover.node)"]
    errs = errors(SERVICE + "[failover]\ngroups = 3\n")
    assert errs == ["guardian.toml: failover.groups: must be a table"]


def test_group_name_and_shared_port() -> None:
    errs = errors(SERVICE + GROUP.replace("groups.web", "groups.'we b'"))
    assert errs[0].startswith("guardian.toml: failover.groups.we b: a group name"), errs
    second = GROUP.split("\n", 4)[4].replace("groups.web", "groups.mail").replace(
        "192.0.2.100", "192.0.2.101")
    errs = errors(SERVICE + GROUP + second)
    assert errs == ["guardian.toml: failover.groups.mail.paths[0].local: 192.0.2.11 port 694 "
                    "is used by group 'web' too: give one of them its own port (port = ...)"]
    spec = load(SERVICE + GROUP + second + "port = 695\n")
    assert spec.failover is not None and sorted(spec.failover.groups) == ["mail", "web"]


ESCALATION = """
[escalation]
channel = "exec"
vm = "vm01"
vm_uuid = "6c1b3f0e-0000-4000-8000-000000000001"
command = ["/bin/true"]
"""


def test_fence_dom0_needs_the_escalation_channel() -> None:
    errs = errors(SERVICE + GROUP + 'fence = "dom0"\n')
    assert len(errs) == 1
    assert errs[0].startswith('guardian.toml: failover.groups.web.fence: "dom0" asks dom0')
    assert "configure [escalation]" in errs[0]
    spec = load(ESCALATION + SERVICE + GROUP + 'fence = "dom0"\n')
    assert spec.failover is not None
    g = spec.failover.groups["web"]
    assert (g.fence, g.fence_vm, g.fence_timeout) == ("dom0", "", 15.0)
    assert g.pair_config().fence_timeout == 15.0
    spec = load(ESCALATION + SERVICE + GROUP
                + 'fence = "dom0"\nfence_vm = "web2"\nfence_timeout = "40s"\n')
    assert spec.failover is not None
    g = spec.failover.groups["web"]
    assert (g.fence_vm, g.fence_timeout) == ("web2", 40.0)
    assert errors(ESCALATION + SERVICE + GROUP + 'fence_vm = "web2"\n') == [
        'guardian.toml: failover.groups.web.fence_vm: only used with fence = "dom0"']
    assert errors(ESCALATION + SERVICE + GROUP + 'fence = "dom0"\nfence_timeout = "10m"\n') \
        == ["guardian.toml: failover.groups.web.fence_timeout: must be more than 0 and at "
            "most 5m"]


def test_warnings() -> None:
    spec = load(SERVICE + GROUP + 'init_dead = "100ms"\n')
    text = "\n".join(spec.warnings)
    assert "init_dead: 100ms is shorter than 3 intervals" in text
    # apache2's ladder has a failover rung, but no group tracks it
    assert "services.apache2.ladder[0]: failover, but no failover group tracks apache2" in text
    spec = load(SERVICE.replace('"failover", ', "") + GROUP + 'services = ["apache2"]\n')
    assert any("'apache2' has no \"failover\" rung" in w for w in spec.warnings), spec.warnings
    spec = load(SERVICE + "[failover]\nnode = \"vm01\"\n")
    assert any("no groups" in w for w in spec.warnings)


def test_conf_d_groups_and_errors_name_their_file(tmp_path: Path) -> None:
    main = tmp_path / "guardian.toml"
    main.write_text(SERVICE + '[failover]\nnode = "vm01"\n')
    confd = tmp_path / "conf.d"
    confd.mkdir()
    (confd / "web.toml").write_text(GROUP.split("\n", 3)[3] + 'services = ["apache2"]\n')
    spec = config.load(main)
    assert spec.failover is not None and list(spec.failover.groups) == ["web"]
    (confd / "web.toml").write_text(GROUP.split("\n", 3)[3] + "lease = 1\n")
    with pytest.raises(ConfigErrors) as info:
        config.load(main)
    assert str(info.value).startswith("conf.d/web.toml: failover.groups.web.lease:")
    (confd / "zz.toml").write_text('[failover]\nnode = "other"\n')
    with pytest.raises(ConfigErrors) as info:
        config.load(main)
    assert "conf.d/zz.toml: failover.node: already set in guardian.toml" in str(info.value)


def test_unchanged_groups_compare_equal() -> None:
    a = load(SERVICE + GROUP)
    b = load(SERVICE + GROUP)
    c = load(SERVICE + GROUP + "priority = 120\n")
    assert a.failover is not None and b.failover is not None and c.failover is not None
    assert a.failover.groups["web"] == b.failover.groups["web"]
    assert a.failover.groups["web"] != c.failover.groups["web"]


def test_verify_defaults_to_the_ping_nodes() -> None:
    spec = load(SERVICE + GROUP)
    assert spec.failover is not None
    g = spec.failover.groups["web"]
    assert g.verify == () and g.verify_timeout == 1.0       # no ping nodes: no check
    assert g.unicast_clients is True                        # on by default
    spec = load(SERVICE + GROUP + 'ping = ["192.0.2.1"]\n')
    assert spec.failover is not None
    assert [str(o) for o in spec.failover.groups["web"].verify] == ["192.0.2.1"]
    spec = load(SERVICE + GROUP + 'ping = ["192.0.2.1"]\nverify = []\n')
    assert spec.failover is not None and spec.failover.groups["web"].verify == ()
    spec = load(SERVICE + GROUP + 'verify = ["192.0.2.10", "2001:db8::10"]\n'
                'verify_timeout = "500ms"\n')
    assert spec.failover is not None
    g = spec.failover.groups["web"]
    assert [str(o) for o in g.verify] == ["192.0.2.10", "2001:db8::10"]
    assert g.verify_timeout == 0.5
    assert any("verify: 2001:db8::10 has no VIP of its family" in w for w in spec.warnings)
