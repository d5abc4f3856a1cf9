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
