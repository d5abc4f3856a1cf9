"""The files the Debian package ships, checked against the source tree (no root,
no package build): the configuration validates as shipped and with every snippet,
the unit has the settings the package promises, the key postinst writes is one the
failover key ring accepts."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from guardian import config as config_mod
from ipfailover._wire import KeyRing

TOP = Path(__file__).resolve().parents[2]
PKG = TOP / "packaging"
ETC = PKG / "etc"
DEBIAN = PKG / "debian"
SNIPPETS = sorted((ETC / "conf-available").glob("*.toml"))


def _tree(tmp_path: Path, snippets: list[Path]) -> Path:
    """/etc/guardian as the operator has it: the main file, conf.d/ with links."""
    main = tmp_path / "guardian.toml"
    shutil.copy(ETC / "guardian.toml", main)
    (tmp_path / "conf.d").mkdir()
    for s in snippets:
        (tmp_path / "conf.d" / s.name).symlink_to(s)
    return main


def test_snippets_are_the_three_services() -> None:
    assert [s.stem for s in SNIPPETS] == ["apache2", "exim4", "named"]


def test_shipped_config_supervises_nothing_and_says_so(tmp_path: Path) -> None:
    spec = config_mod.load(_tree(tmp_path, []))
    assert spec.services == {}
    assert any("supervises nothing" in w for w in spec.warnings)
    text = (ETC / "guardian.toml").read_text()
    assert "supervises NOTHING" in text
    # the control socket and the state live where the unit makes them writable
    assert str(spec.control_socket).startswith("/run/guardian/")
    assert spec.state_dir == Path("/var/lib/guardian")


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda p: p.stem)
def test_each_snippet_validates_alone(tmp_path: Path, snippet: Path) -> None:
    spec = config_mod.load(_tree(tmp_path, [snippet]))
    assert list(spec.services) == [snippet.stem]
    assert spec.sources == ("guardian.toml", f"conf.d/{snippet.name}")
    # the enable command the snippet documents is the one that works
    assert f"ln -s ../conf-available/{snippet.name} /etc/guardian/conf.d/" in snippet.read_text()


def test_all_snippets_together_and_the_documented_requires(tmp_path: Path) -> None:
    spec = config_mod.load(_tree(tmp_path, SNIPPETS))
    assert set(spec.services) == {"apache2", "exim4", "named"}
    # exim4.toml: "uncomment requires when named.toml is enabled too"
    exim = (ETC / "conf-available" / "exim4.toml").read_text()
    assert '# requires = ["named"]' in exim
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "exim4.toml").write_text(exim.replace('# requires = ["named"]',
                                                    'requires = ["named"]'))
    tree = tmp_path / "with-requires"
    tree.mkdir()
    main = _tree(tree, [SNIPPETS[2], edited / "exim4.toml"])
    spec = config_mod.load(main)
    assert spec.services["exim4"].requires == ("named",)
    assert spec.start_order().index("named") < spec.start_order().index("exim4")


def test_cli_validate_on_shipped_config(tmp_path: Path) -> None:
    main = _tree(tmp_path, [])
    res = subprocess.run([sys.executable, "-m", "guardian", "validate", str(main)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "0 service(s) enabled" in res.stdout


def _unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    # ExecReload= appears twice: keep the last, which is enough for these checks
    cp.read_string((DEBIAN / "guardian.service").read_text())
    return cp


def test_unit_promises() -> None:
    svc = _unit()["Service"]
    assert svc["Type"] == "notify"
    assert svc["ExecStart"] == "/usr/bin/guardian run"
    assert svc["Restart"] == "on-failure"
    assert svc["RestartPreventExitStatus"] == "2"   # daemon.run: broken configuration
    assert "WatchdogSec" in svc
    assert svc["ProtectSystem"] == "strict"
    assert svc["ProtectHome"] == "yes"
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["PrivateTmp"] == "yes"   # run_command's temporary files need a writable /tmp
    assert set(svc["CapabilityBoundingSet"].split()) == {
        "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_KILL"}
    assert svc["StateDirectory"] == "guardian" and svc["RuntimeDirectory"] == "guardian"
    text = (DEBIAN / "guardian.service").read_text()
    assert "ExecReload=/usr/bin/guardian validate --quiet\n" in text


def test_failover_key_from_postinst(tmp_path: Path) -> None:
    """Run postinst's key maker against a scratch path: mode 0600, accepted by
    KeyRing.load, one 32-byte key marked send, and never overwritten."""
    script = (DEBIAN / "guardian.postinst").read_text()
    body = re.search(r"^make_failover_key\(\) \{\n.*?^\}\n", script, re.S | re.M)
    assert body is not None
    key = tmp_path / "failover.key"
    sh = f"set -e\nKEYFILE={key}\n{body.group(0)}make_failover_key\n"
    subprocess.run(["sh", "-c", sh], check=True, timeout=30)
    st = key.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    ring = KeyRing.load(key)
    assert ring.ids == (1,) and ring.send_id == 1 and len(ring.send_key) == 32
    before = key.read_bytes()
    os.chmod(key, 0o600)
    subprocess.run(["sh", "-c", sh], check=True, timeout=30)
    assert key.read_bytes() == before
    # and a second machine gets a different key
    other = tmp_path / "other.key"
    subprocess.run(["sh", "-c", sh.replace(str(key), str(other))], check=True, timeout=30)
    assert KeyRing.load(other).send_key != ring.send_key


def test_man_page_renders_without_warnings() -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    res = subprocess.run(["groff", "-ww", "-man", "-z", str(PKG / "man" / "guardian.8")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr == "", res.stderr


# ---------------------------------------------------------------- guardian-hostd

HOSTD_TOML = ETC / "hostd.toml"


def _hostd_validate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "guardian.hostd", "validate",
                           "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=TOP)


def _example_vm(key_file: Path) -> str:
    """The commented [vms.web1] example of hostd.toml, uncommented."""
    lines = HOSTD_TOML.read_text().splitlines()
    start = lines.index("# [vms.web1]")
    block = []
    for line in lines[start:]:
        if line == "#":
            break
        block.append(line[2:])
    text = "\n".join(block) + "\n"
    return text.replace('"/etc/guardian/hostd-keys/web1.keys"', f'"{key_file}"')


def _documented_key(path: Path) -> None:
    """Make a key ring with the commands hostd.toml documents."""
    text = HOSTD_TOML.read_text()
    m = re.search(r"^#\s+(umask 077\n(?:#.*\n)*?#\s+> /etc/guardian/hostd-keys/web1\.keys)$",
                  text, re.M)
    assert m is not None, "key generation commands not found in hostd.toml"
    cmds = "\n".join(line.lstrip("#").strip() for line in m.group(1).splitlines())
    cmds = cmds.replace("/etc/guardian/hostd-keys/web1.keys", str(path))
    subprocess.run(["sh", "-ec", cmds], check=True, timeout=30)


def test_hostd_shipped_config_has_no_vm_and_says_so() -> None:
    """As shipped: valid, with no VM configured, and ``validate`` says so (the
    unit is installed disabled until the operator configures one)."""
    from guardian.hostd import _config as hostd_config
    assert hostd_config.load(HOSTD_TOML).vms == {}
    res = _hostd_validate(HOSTD_TOML)
    assert res.returncode == 0 and "no VM configured" in res.stdout, res
    assert "NO VM is configured" in HOSTD_TOML.read_text()


def test_hostd_config_with_the_documented_vm_and_key_validates(tmp_path: Path) -> None:
    key = tmp_path / "web1.keys"
    _documented_key(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ring = KeyRing.load(key)
    assert ring.ids == (1,) and ring.send_id == 1 and len(ring.send_key) == 32
    conf = tmp_path / "hostd.toml"
    conf.write_text(HOSTD_TOML.read_text() + "\n" + _example_vm(key))
    res = _hostd_validate(conf)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{conf}: OK (1 VM(s), listen 127.0.0.1:7080)"
    from guardian.hostd import _config as hostd_config
    spec = hostd_config.load(conf)
    assert spec.state_dir == Path("/var/lib/guardian-hostd")   # the unit's StateDirectory
    assert spec.vms["web1"].driver == "xl" and spec.vms["web1"].config == "/etc/xen/web1.cfg"


def _hostd_unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string((DEBIAN / "guardian-hostd.service").read_text())
    return cp


def test_hostd_unit_promises() -> None:
    unit = _hostd_unit()
    svc = unit["Service"]
    # guardian-hostd sends READY=1 once bound and pets the watchdog (unit-tested in
    # tests/unit/test_hostd_notify.py)
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main"
    assert svc["WatchdogSec"] == "30s"
    hostd_src = "\n".join(p.read_text() for p in (TOP / "guardian" / "hostd").glob("*.py"))
    assert "READY=1" in hostd_src and "WATCHDOG=1" in hostd_src
    assert svc["ExecStart"] == "/usr/bin/guardian-hostd run"
    assert svc["Restart"] == "on-failure"
    assert svc["RestartPreventExitStatus"] == "2"   # __main__.main: ConfigErrors -> 2
    assert svc["KillMode"] == "process"             # xl's device models survive
    assert svc["ProtectSystem"] == "strict"
    assert svc["ProtectHome"] == "yes"
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["StateDirectory"] == "guardian-hostd" and svc["StateDirectoryMode"] == "0700"
    # the Xen devices must stay reachable: nothing that hides /dev
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "CapabilityBoundingSet",
                "ProtectKernelTunables"):
        assert key not in svc, key
    rw = svc["ReadWritePaths"].split()
    assert "-/var/lib/xen" in rw and "-/run/xenstored" in rw
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    # installed disabled (no VM is configured as shipped)
    rules = (DEBIAN / "rules").read_text()
    assert "dh_installsystemd -pguardian-hostd --no-enable" in rules


def test_hostd_package_files() -> None:
    assert (DEBIAN / "guardian-hostd.install").read_text().split() == [
        "packaging/etc/hostd.toml", "etc/guardian/"]
    assert (DEBIAN / "guardian-hostd.manpages").read_text().split() == [
        "packaging/man/guardian-hostd.8"]
    control = (DEBIAN / "control").read_text()
    stanza = control.split("Package: guardian-hostd\n", 1)[1]
    assert "guardian (= ${binary:Version})" in stanza
    assert "Architecture: all" in stanza
    postinst = (DEBIAN / "guardian-hostd.postinst").read_text()
    assert 'mkdir -m 0700 "$KEYDIR"' in postinst
    assert "KEYDIR=/etc/guardian/hostd-keys" in postinst


def test_hostd_man_page_renders_without_warnings() -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    res = subprocess.run(["groff", "-ww", "-man", "-z", str(PKG / "man" / "guardian-hostd.8")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr == "", res.stderr
