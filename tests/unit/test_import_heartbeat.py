"""``guardian import-heartbeat``: Heartbeat R1 (ha.cf, haresources, authkeys) to guardian's
TOML.  The configurations under ``heartbeat_data/`` are laid out like a node's /etc:
``CASE/ha.d/{ha.cf,haresources,authkeys}`` and ``CASE/hosts``."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from checks import ConfigErrors
from guardian import config
from ipfailover import KeyRing
from ipfailover import _heartbeat as hb
from ipfailover._heartbeat import ConversionError, convert, main, write_key

DATA = Path(__file__).parent / "heartbeat_data"
CLASSIC = DATA / "classic" / "ha.d"
UCAST = DATA / "ucast" / "ha.d"
IPADDR2 = DATA / "ipaddr2" / "ha.d"
ROOT = Path(__file__).resolve().parents[2]

HA_CF = """\
keepalive 2
deadtime 30
initdead 120
udpport 694
bcast eth0
auto_failback on
node vm01 vm02
"""
HOSTS = "192.0.2.11 vm01\n192.0.2.12 vm02\n"

MakeDir = Callable[..., Path]


@pytest.fixture
def make_dir(tmp_path: Path) -> MakeDir:
    """``make_dir(ha_cf=..., haresources=..., authkeys=..., hosts=...)``: an etc/ha.d
    directory (and etc/hosts, unless hosts is None) in a fresh temporary directory."""
    count = 0

    def make(ha_cf: str | None = HA_CF, haresources: str | None = "vm01 192.0.2.100 apache2\n",
             authkeys: str | None = "auth 1\n1 sha1 secret\n", hosts: str | None = HOSTS,
             resource_d: tuple[str, ...] = ()) -> Path:
        nonlocal count
        count += 1
        etc = tmp_path / f"etc{count}"
        ha_d = etc / "ha.d"
        ha_d.mkdir(parents=True)
        for name, text in (("ha.cf", ha_cf), ("haresources", haresources),
                           ("authkeys", authkeys)):
            if text is not None:
                (ha_d / name).write_text(text)
        if hosts is not None:
            (etc / "hosts").write_text(hosts)
        for script in resource_d:
            (ha_d / "resource.d").mkdir(exist_ok=True)
            (ha_d / "resource.d" / script).write_text("#!/bin/sh\nexit 0\n")
        return ha_d

    return make


def parsed(conv: hb.Conversion) -> dict[str, Any]:
    return tomllib.loads(conv.toml_text)


def directives(conv: hb.Conversion) -> list[str]:
    return [d for d, _ in conv.unmapped]


def reason_for(conv: hb.Conversion, start: str) -> str:
    found = [r for d, r in conv.unmapped if d.startswith(start)]
    assert found, f"{start!r} not in {directives(conv)}"
    return found[0]


def conversion_error(ha_d: Path, node: str | None = "vm01") -> str:
    with pytest.raises(ConversionError) as info:
        convert(ha_d, node)
    return str(info.value)


def _config_has_failover() -> bool:
    """Does guardian's config loader know [failover] yet?"""
    try:
        config.loads("[failover]\nnode = \"vm01\"\n")
    except ConfigErrors as exc:
        return not any(e.path == "failover" and "unknown key" in e.message for e in exc.errors)
    return True


# ----------------------------------------------------------------------------- classic


def test_classic_study_pair_maps_every_setting_it_can() -> None:
    conv = convert(CLASSIC, "vm01")
    doc = parsed(conv)
    assert doc["failover"] == {
        "node": "vm01",
        "key_file": "/etc/guardian/failover.key",
        "port": 694,
        "groups": {"web": {
            "peer": "vm02",
            "priority": 150,
            "interface": "eth0",
            "vips": ["192.0.2.100/32"],
            # bcast eth0 -> a unicast path between the nodes' addresses in ../hosts;
            # Debian's "127.0.1.1 vm01" line is not taken for vm01's address
            "paths": [{"local": "192.0.2.11", "peer": "192.0.2.12"}],
            # keepalive 2: guardian's switchover handshake needs two intervals in 2 s
            "interval": "1s",
            "init_dead": "120s",
            "preempt": True,
            "services": ["apache2", "bind9", "exim4"],
            "cold": ["apache2", "bind9", "exim4"],
        }},
    }
    assert (conv.node, conv.peer, conv.groups, conv.todo) == ("vm01", "vm02", ("web",), False)
    assert sorted(doc["services"]) == ["apache2", "bind9", "exim4"]
    web = doc["services"]["apache2"]
    assert web["backend"] == "lsb" and "script" not in web
    assert web["ladder"] == ["failover", "alert"]
    (check,) = web["checks"]
    assert check["type"] == "exec" and check["command"][:2] == ["sh", "-c"]
    assert "/etc/init.d/apache2 status" in check["command"][2]


def test_classic_study_lists_what_it_did_not_map_and_why() -> None:
    conv = convert(CLASSIC, "vm01")
    assert directives(conv) == [
        "ha.cf:2: logfacility local0",
        "ha.cf:4: deadtime 30",
        "ha.cf:5: warntime 10",
        "ha.cf:12: crm no",
        "authkeys:1: auth 1",
        "authkeys:2: 1 sha1 ********",
    ]
    assert "probes" in reason_for(conv, "ha.cf:4: deadtime")
    assert "30s has no equivalent" in reason_for(conv, "ha.cf:4: deadtime")
    assert "late-heartbeat warning" in reason_for(conv, "ha.cf:5: warntime")
    assert "log_target" in reason_for(conv, "ha.cf:2: logfacility")
    assert "sha1 replaced by HMAC-SHA256 (new key)" in reason_for(conv, "authkeys:1")
    warnings = "\n".join(conv.warnings)
    assert "192.0.2.100 has no netmask" in warnings
    assert "bcast eth0: guardian sends unicast heartbeats" in warnings
    assert "keepalive 2s is outside" in warnings
    assert "stop and disable Heartbeat" in warnings


def test_the_header_comment_lists_every_unmapped_directive_and_warning() -> None:
    conv = convert(CLASSIC, "vm01")
    header = conv.toml_text.split("[failover]", 1)[0]
    assert all(line.startswith("#") or not line for line in header.splitlines())
    flat = " ".join(line.lstrip("#").strip() for line in header.splitlines())
    for directive, reason in conv.unmapped:
        assert directive in flat
        assert reason in flat
    for warning in conv.warnings:
        assert warning in flat


def test_heartbeat_secret_never_reaches_the_output() -> None:
    secret = (CLASSIC / "authkeys").read_text().split()[-1]
    conv = convert(CLASSIC, "vm01")
    assert secret not in conv.toml_text
    assert all(secret not in d and secret not in r for d, r in conv.unmapped)


def test_the_other_node_gets_the_lower_priority_and_mirrored_paths() -> None:
    group = parsed(convert(CLASSIC, "vm02"))["failover"]["groups"]["web"]
    assert group["peer"] == "vm01"
    assert group["priority"] == 100
    assert group["paths"] == [{"local": "192.0.2.12", "peer": "192.0.2.11"}]


def test_node_defaults_to_this_host_when_ha_cf_lists_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hb, "_hostname", lambda: "vm02.example.org")
    conv = convert(CLASSIC)
    assert conv.node == "vm02"
    assert not any("not a node of ha.cf" in w for w in conv.warnings)


def test_node_falls_back_to_the_first_node_with_a_warning(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hb, "_hostname", lambda: "buildhost")
    conv = convert(CLASSIC)
    assert conv.node == "vm01"
    assert any("this host (buildhost) is not a node of ha.cf" in w and "--node vm02" in w
               for w in conv.warnings)


# ----------------------------------------------------------------------------- ucast


def test_ucast_lines_become_paths_bound_to_their_interface() -> None:
    conv = convert(UCAST, "vm01")
    groups = parsed(conv)["failover"]["groups"]
    for group in groups.values():
        assert group["paths"] == [{"local": "192.0.2.11", "peer": "192.0.2.12",
                                   "interface": "eth0"}]
        assert group["interval"] == "500ms"
        assert group["init_dead"] == "30s"
        assert group["preempt"] is False  # auto_failback off
        assert group["ping"] == ["192.0.2.1"]


def test_each_haresources_line_is_a_group_with_its_preferred_node() -> None:
    conv = convert(UCAST, "vm01")
    groups = parsed(conv)["failover"]["groups"]
    assert list(groups) == ["web", "mail"]
    web, mail = groups["web"], groups["mail"]
    # the line continued with a backslash still counts from its first line
    assert web["services"] == ["apache2", "bind9"] and web["vips"] == ["192.0.2.100/24"]
    assert web["priority"] == 150 and "port" not in web
    assert mail["services"] == ["exim4"] and mail["vips"] == ["192.0.2.101/24"]
    assert mail["priority"] == 100  # vm02 prefers this one
    assert mail["port"] == 695  # a group of its own: its own socket
    assert any("mail: 695" in w for w in conv.warnings)
    assert parsed(convert(UCAST, "vm02"))["failover"]["groups"]["mail"]["priority"] == 150


def test_ucast_ipfail_apiauth_and_old_keys_are_listed() -> None:
    conv = convert(UCAST, "vm01")
    assert "does ipfail's job" in reason_for(conv, "ha.cf:14: respawn hacluster")
    assert "client API" in reason_for(conv, "ha.cf:15: apiauth")
    assert "md5 replaced by HMAC-SHA256" in reason_for(conv, "authkeys:2: auth 2")
    assert "not the key in use (auth 2)" in reason_for(conv, "authkeys:3: 1 sha1 ********")
    assert not any("ping nodes without ipfail" in w for w in conv.warnings)


def test_ucast_without_known_addresses_is_left_as_a_todo(make_dir: MakeDir) -> None:
    ha_d = make_dir(ha_cf=HA_CF.replace("bcast eth0", "ucast eth1 10.0.0.1\nucast eth1 10.0.0.2"),
                    hosts=None)
    conv = convert(ha_d, "vm01")
    assert conv.todo
    assert "paths" not in parsed(conv)["failover"]["groups"]["web"]
    assert "# TODO paths" in conv.toml_text
    assert "cannot tell which of 10.0.0.1 and 10.0.0.2" in reason_for(conv, "ha.cf:5: ucast")
    # told which address is ours, the pair resolves
    conv = convert(ha_d, "vm01", addresses={"vm01": ["10.0.0.1"]})
    assert not conv.todo
    assert parsed(conv)["failover"]["groups"]["web"]["paths"] == [
        {"local": "10.0.0.1", "peer": "10.0.0.2", "interface": "eth1"}]


def test_a_per_node_ucast_line_names_the_peer(make_dir: MakeDir) -> None:
    ha_d = make_dir(ha_cf=HA_CF.replace("bcast eth0", "ucast eth1 10.0.0.2"),
                    hosts="10.0.0.1 vm01\n")
    group = parsed(convert(ha_d, "vm01"))["failover"]["groups"]["web"]
    assert group["paths"] == [{"local": "10.0.0.1", "peer": "10.0.0.2", "interface": "eth1"}]
    # the same file read as vm02's: it points at vm02's own address... not vm02's file
    conv = convert(ha_d, "vm02", addresses={"vm02": ["10.0.0.2"]})
    assert conv.todo
    assert "looks like vm01's" in reason_for(conv, "ha.cf:5: ucast")


# ----------------------------------------------------------------------------- IPaddr2 etc.


def test_ipaddr2_filesystem_mailto_and_crc() -> None:
    conv = convert(IPADDR2, "vm01")
    group = parsed(conv)["failover"]["groups"]["web"]
    assert group["vips"] == ["192.0.2.100/24"] and group["interface"] == "eth0"
    assert group["services"] == ["apache2"] and group["cold"] == ["apache2"]
    # mcast eth1 -> unicast between the nodes' addresses
    assert group["paths"] == [{"local": "192.0.2.11", "peer": "192.0.2.12"}]
    assert group["preempt"] is True  # legacy
    assert "mount" in reason_for(conv, "haresources:1: Filesystem::/dev/drbd0::/srv/www::ext3")
    assert "notify" in reason_for(conv, "haresources:1: MailTo::root@example.org")
    assert "kernel address lease" in reason_for(conv, "ha.cf:9: watchdog /dev/watchdog")
    assert "command backend" in reason_for(conv, "ha.cf:10: respawn root")
    assert "crc is a checksum" in reason_for(conv, "authkeys:2: 3 crc")
    warnings = "\n".join(conv.warnings)
    assert "crc method authenticated nothing" in warnings
    assert "legacy meant 'fail back'" in warnings
    assert "group address, ttl and loop are dropped" in warnings


@pytest.mark.parametrize(("resource", "vip", "interface", "warning"), [
    ("IPaddr::192.0.2.100/24/eth1", "192.0.2.100/24", "eth1", None),
    ("192.0.2.100/255.255.255.0/eth1", "192.0.2.100/24", "eth1", None),
    ("IPaddr::192.0.2.100/24/192.0.2.255", "192.0.2.100/24", "eth0", "broadcast 192.0.2.255"),
    ("IPaddr2::192.0.2.100/24/eth1:0/192.0.2.255", "192.0.2.100/24", "eth1", "alias label"),
    ("IPaddr2::192.0.2.100", "192.0.2.100/32", "eth0", "has no netmask"),
    ("IPv6addr::2001:db8::100/64/eth1", "2001:db8::100/64", "eth1", None),
])
def test_ip_resource_forms(make_dir: MakeDir, resource: str, vip: str, interface: str,
                           warning: str | None) -> None:
    conv = convert(make_dir(haresources=f"vm01 {resource} apache2\n"), "vm01")
    group = parsed(conv)["failover"]["groups"]["web"]
    assert (group["vips"], group["interface"]) == ([vip], interface)
    if warning:
        assert any(warning in w for w in conv.warnings)


def test_resource_scripts_from_resource_d_and_with_arguments(make_dir: MakeDir) -> None:
    ha_d = make_dir(haresources="vm01 192.0.2.100/24/eth0 myapp drbddisk::r0 "
                                "custom::a::b Delay::5::0\n",
                    resource_d=("myapp",))
    conv = convert(ha_d, "vm01")
    doc = parsed(conv)
    assert doc["services"]["myapp"]["script"] == "/etc/ha.d/resource.d/myapp"
    assert "/etc/ha.d/resource.d/myapp status" in doc["services"]["myapp"]["checks"][0][
        "command"][2]
    assert doc["failover"]["groups"]["myapp"]["services"] == ["myapp"]
    assert "DRBD" in reason_for(conv, "haresources:1: drbddisk::r0")
    assert "without any" in reason_for(conv, "haresources:1: custom::a::b")
    assert "cold_timeout" in reason_for(conv, "haresources:1: Delay::5::0")


def test_a_line_without_an_address_is_a_todo(make_dir: MakeDir) -> None:
    conv = convert(make_dir(haresources="vm01 apache2\n"), "vm01")
    assert conv.todo and "# TODO vips" in conv.toml_text
    assert "at least one VIP" in reason_for(conv, "haresources:1: vm01 apache2")


@pytest.mark.parametrize(("line", "preempt"), [
    ("auto_failback off", False), ("auto_failback yes", True), ("auto_failback legacy", True),
    ("nice_failback on", False), ("nice_failback off", True), ("", True),
])
def test_failback_policy(make_dir: MakeDir, line: str, preempt: bool) -> None:
    ha_d = make_dir(ha_cf=HA_CF.replace("auto_failback on", line))
    assert parsed(convert(ha_d, "vm01"))["failover"]["groups"]["web"]["preempt"] is preempt


@pytest.mark.parametrize(("keepalive", "interval"), [
    ("500ms", "500ms"), ("1", "1s"), ("0.2", "200ms"), ("250000us", "250ms"), ("30", "1s"),
    ("10ms", "20ms"),
])
def test_keepalive_time_syntax(make_dir: MakeDir, keepalive: str, interval: str) -> None:
    ha_d = make_dir(ha_cf=HA_CF.replace("keepalive 2", f"keepalive {keepalive}"))
    assert parsed(convert(ha_d, "vm01"))["failover"]["groups"]["web"]["interval"] == interval


def test_bcast_without_addresses_is_a_todo_naming_the_way_out(make_dir: MakeDir) -> None:
    conv = convert(make_dir(hosts=None), "vm01")
    assert conv.todo
    reason = reason_for(conv, "ha.cf:5: bcast eth0")
    assert "vm01 and vm02 have no address" in reason and "--address" in reason
    conv = convert(make_dir(hosts=None), "vm01",
                   addresses={"vm01": ["192.0.2.11"], "vm02": ["192.0.2.12"]})
    assert parsed(conv)["failover"]["groups"]["web"]["paths"] == [
        {"local": "192.0.2.11", "peer": "192.0.2.12"}]


def test_a_ping_node_without_ipfail_is_pointed_out(make_dir: MakeDir) -> None:
    conv = convert(make_dir(ha_cf=HA_CF + "ping 192.0.2.1 192.0.2.254\nping_group g 192.0.2.9\n"),
                   "vm01")
    assert parsed(conv)["failover"]["groups"]["web"]["ping"] == ["192.0.2.1", "192.0.2.254"]
    assert any("ping nodes without ipfail" in w for w in conv.warnings)
    assert "no groups" in reason_for(conv, "ha.cf:9: ping_group")


# ----------------------------------------------------------------------------- errors


def test_missing_directory_and_files_are_named(tmp_path: Path, make_dir: MakeDir) -> None:
    assert "not a directory" in conversion_error(tmp_path / "nope")
    ha_d = make_dir(ha_cf=None)
    assert conversion_error(ha_d) == f"{ha_d / 'ha.cf'}: file not found"
    ha_d = make_dir(haresources=None)
    assert conversion_error(ha_d) == f"{ha_d / 'haresources'}: file not found"
    # authkeys is optional: nothing of it is carried over anyway
    assert "file not found" in reason_for(convert(make_dir(authkeys=None), "vm01"), "authkeys")


@pytest.mark.parametrize(("ha_cf", "haresources", "authkeys", "where", "message"), [
    (HA_CF.replace("keepalive 2", "keepalive two"), None, None, "ha.cf:1",
     "'two' is not a time"),
    (HA_CF.replace("udpport 694", "udpport 70000"), None, None, "ha.cf:4", "not a UDP port"),
    (HA_CF.replace("bcast eth0", "ucast eth0"), None, None, "ha.cf:5",
     "ucast needs an interface and the peer's address"),
    (HA_CF.replace("bcast eth0", "ucast eth0 vm02"), None, None, "ha.cf:5",
     "'vm02' is not an IP address"),
    (HA_CF.replace("bcast eth0", "mcast eth0 192.0.2.1 694 1 0"), None, None, "ha.cf:5",
     "not a multicast group"),
    (HA_CF.replace("bcast eth0", "mcast eth0 225.0.0.1 694"), None, None, "ha.cf:5",
     "mcast needs"),
    (HA_CF.replace("auto_failback on", "auto_failback maybe"), None, None, "ha.cf:6",
     "'maybe' is not on or off"),
    (HA_CF + "node vm03\n", None, None, "ha.cf:8", "a third node"),
    (HA_CF + "crm on\n", None, None, "ha.cf:8", "run by the CRM"),
    (None, "vm03 192.0.2.100 apache2\n", None, "haresources:1", "'vm03' is not a node"),
    (None, "vm01 IPaddr::192.0.2.300/24 apache2\n", None, "haresources:1",
     "'192.0.2.300' is not an IPv4 address"),
    (None, "vm01 IPaddr::192.0.2.100/33 apache2\n", None, "haresources:1", "not a netmask"),
    (None, "# web\n\nvm01 192.0.2.100 apache2\nvm02 192.0.2.101 apache2\n", None,
     "haresources:4", "resource apache2 is already in the group at haresources:3"),
    (None, "vm01\n", None, "haresources:1", "no resources"),
    (None, None, "auth 2\n1 sha1 secret\n", "authkeys:1", "there is no key 2"),
    (None, None, "auth 1\n1 sha1\n", "authkeys:2", "sha1 needs a secret"),
    (None, None, "auth one\n", "authkeys:1", "expected 'auth N'"),
])
def test_malformed_lines_name_file_and_line(make_dir: MakeDir, ha_cf: str | None,
                                            haresources: str | None, authkeys: str | None,
                                            where: str, message: str) -> None:
    kwargs: dict[str, str] = {}
    if ha_cf is not None:
        kwargs["ha_cf"] = ha_cf
    if haresources is not None:
        kwargs["haresources"] = haresources
    if authkeys is not None:
        kwargs["authkeys"] = authkeys
    ha_d = make_dir(**kwargs)
    name, line = where.split(":")
    error = conversion_error(ha_d)
    assert error.startswith(f"{ha_d / name}:{line}: "), error
    assert message in error


def test_a_pair_needs_two_nodes_and_a_known_node(make_dir: MakeDir) -> None:
    ha_d = make_dir(ha_cf=HA_CF.replace("node vm01 vm02", "node vm01"))
    assert "a pair needs two node names, found vm01" in conversion_error(ha_d)
    assert "--node vm03: not a node of ha.cf (vm01, vm02)" in conversion_error(make_dir(),
                                                                              "vm03")


# ----------------------------------------------------------------------------- the key


def test_write_key_makes_a_private_key_guardian_can_load(tmp_path: Path) -> None:
    path = tmp_path / "failover.key"
    write_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring = KeyRing.load(path)
    assert len(ring.send_key) == 32
    with pytest.raises(ConversionError, match="already exists"):
        write_key(path)
    other = tmp_path / "other.key"
    write_key(other)
    assert KeyRing.load(other).send_key != ring.send_key


# ----------------------------------------------------------------------------- checks


@pytest.mark.parametrize(("status", "exit_code"), [(0, 0), (3, 2), (1, 2), (4, 2)])
def test_the_lsb_status_check_maps_lsb_codes_to_nagios(tmp_path: Path, status: int,
                                                       exit_code: int) -> None:
    """LSB status 3 (stopped) would be UNKNOWN to an exec check: the wrapper says 2."""
    script = tmp_path / "apache2"
    script.write_text(f"#!/bin/sh\nexit {status}\n")
    script.chmod(0o755)
    command = parsed(convert(CLASSIC, "vm01"))["services"]["apache2"]["checks"][0]["command"]
    command = [c.replace("/etc/init.d/apache2", str(script)) for c in command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    assert done.returncode == exit_code
    assert done.stdout.startswith("apache2 is " + ("running" if status == 0 else "not running"))


# ----------------------------------------------------------------------------- CLI


def test_main_writes_the_toml_and_a_key_and_reports_on_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, key = tmp_path / "guardian.toml", tmp_path / "failover.key"
    code = main([str(CLASSIC), "--node", "vm02", "-o", str(out), "--write-key", str(key),
                 "--key-file", str(key)])
    assert code == 0
    doc = tomllib.loads(out.read_text())
    assert doc["failover"]["node"] == "vm02" and doc["failover"]["key_file"] == str(key)
    assert KeyRing.load(key).ids == (1,)
    err = capsys.readouterr().err
    assert "converted for node vm02 (peer vm01): 1 group(s): web" in err
    assert "ha.cf:4: deadtime 30" in err
    assert f"wrote a new key to {key} (mode 0600)" in err


def test_main_reports_errors_with_file_and_line(make_dir: MakeDir,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    ha_d = make_dir(ha_cf=HA_CF.replace("udpport 694", "udpport x"))
    assert main([str(ha_d), "--node", "vm01"]) == 2
    assert capsys.readouterr().err == (f"error: {ha_d / 'ha.cf'}:4: udpport: 'x' is not a UDP "
                                       "port (1..65535)\n")


def test_module_runs_from_the_command_line(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "ipfailover._heartbeat", str(IPADDR2), "--node", "vm01"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    assert tomllib.loads(done.stdout)["failover"]["groups"]["web"]["vips"] == ["192.0.2.100/24"]
    assert "Filesystem::/dev/drbd0" in done.stderr


# ----------------------------------------------------------------------------- validate


@pytest.mark.parametrize("case", [CLASSIC, UCAST, IPADDR2], ids=lambda p: p.parent.name)
@pytest.mark.parametrize("node", ["vm01", "vm02"])
def test_guardian_validate_accepts_the_output(tmp_path: Path, case: Path, node: str) -> None:
    conv = convert(case, node, key_file=str(tmp_path / "failover.key"))
    tomllib.loads(conv.toml_text)  # TOML in any case
    if not _config_has_failover():
        pytest.skip("config has no [failover] yet")
    spec = config.loads(conv.toml_text, "guardian.toml")
    assert spec.warnings == ()
    assert spec.failover is not None and spec.failover.node == node
    assert sorted(spec.failover.groups) == sorted(conv.groups)
    assert set(spec.services) == {s for g in spec.failover.groups.values() for s in g.cold}


def test_a_copy_of_the_study_converts_like_the_original(tmp_path: Path) -> None:
    shutil.copytree(CLASSIC.parent, tmp_path / "etc")
    copy = convert(tmp_path / "etc" / "ha.d", "vm01")
    original = convert(CLASSIC, "vm01")
    assert parsed(copy) == parsed(original)
    assert copy.unmapped == original.unmapped


def test_guardian_cli_runs_the_converter() -> None:
    import subprocess
    import sys

    here = Path(__file__).parent / "heartbeat_data" / "classic" / "ha.d"
    out = subprocess.run([sys.executable, "-m", "guardian", "import-heartbeat", str(here),
                          "--node", "vm01"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "[failover.groups." in out.stdout
    assert 'peer = "vm02"' in out.stdout
