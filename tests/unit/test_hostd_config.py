"""guardian.hostd configuration: hostd.toml parsing and errors that name file and key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from checks import ConfigErrors
from guardian.hostd import load
from guardian.hostd.__main__ import main

KEY = "1 " + "ab" * 32 + " send\n"


def write(tmp_path: Path, text: str, key_mode: int = 0o600) -> Path:
    key = tmp_path / "web1.keys"
    key.write_text(KEY)
    os.chmod(key, key_mode)
    cfg = tmp_path / "hostd.toml"
    cfg.write_text(text.replace("KEYFILE", str(key)).replace("STATE", str(tmp_path / "st")))
    return cfg


GOOD = """
[hostd]
listen = "192.0.2.1:7080"
state_dir = "STATE"

[policy]
min_interval = "10m"
max_actions = 3
window = "24h"
healthy_reset = "1h"
confirm_timeout = "30s"

[vms.web1]
uuid = "6f1c1d1e-0000-4000-8000-000000000001"
key_file = "KEYFILE"
driver = "xl"
config = "/etc/xen/web1.cfg"
"""


def test_good(tmp_path: Path) -> None:
    spec = load(write(tmp_path, GOOD))
    assert (spec.host, spec.port) == ("192.0.2.1", 7080)
    assert spec.policy.min_interval == 600 and spec.policy.confirm_timeout == 30
    vm = spec.vms["web1"]
    assert vm.domain == "web1" and vm.config == "/etc/xen/web1.cfg"
    assert vm.keys is not None and vm.keys.ids == (1,)
    assert spec.journal_dir == spec.state_dir
    p = spec.policy
    assert (p.max_actions, p.window, p.healthy_reset) == (3, 86400, 3600)
    assert spec.alert_command == ()


def test_alert_command(tmp_path: Path) -> None:
    text = GOOD.replace('state_dir = "STATE"', 'state_dir = "STATE"\n'
                        'alert_command = ["/usr/local/bin/notify", "-t", "hostd"]\n'
                        'alert_timeout = "5s"')
    spec = load(write(tmp_path, text))
    assert spec.alert_command == ("/usr/local/bin/notify", "-t", "hostd")
    assert spec.alert_timeout == 5


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (('max_actions = 3', 'max_actions = 3\nmax_actoins = 4'), "policy.max_actoins"),
        (('max_actions = 3', 'max_per_day = 3'), "policy.max_per_day"),
        (('window = "24h"', 'window = "0"'), "policy.window"),
        (('healthy_reset = "1h"', 'healthy_reset = "soon"'), "policy.healthy_reset"),
        (('state_dir = "STATE"', 'state_dir = "STATE"\nalert_command = []'),
         "hostd.alert_command"),
        (('state_dir = "STATE"', 'state_dir = "STATE"\nalert_command = "x"'),
         "hostd.alert_command"),
        (('"10m"', '"ten"'), "policy.min_interval"),
        (('driver = "xl"', 'driver = "vmware"'), "vms.web1.driver"),
        (('config = "/etc/xen/web1.cfg"', ''), "vms.web1.config"),
        (('listen = "192.0.2.1:7080"', 'listen = "host:x"'), "hostd.listen"),
        (('uuid = "6f1c1d1e-0000-4000-8000-000000000001"\n', ''), "vms.web1.uuid"),
        (('[policy]', '[polcy]'), "polcy"),
        (('config = "/etc/xen/web1.cfg"', 'config = "/x"\ndestroy_command = ["a"]'),
         "vms.web1.destroy_command"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, edit: tuple[str, str], where: str) -> None:
    cfg = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ConfigErrors) as info:
        load(cfg)
    assert f"{cfg}: {where}" in str(info.value)


def test_key_file_permissions(tmp_path: Path) -> None:
    cfg = write(tmp_path, GOOD, key_mode=0o644)
    with pytest.raises(ConfigErrors, match="vms.web1.key_file.*chmod 600"):
        load(cfg)


def test_command_driver_needs_commands(tmp_path: Path) -> None:
    text = GOOD.replace('driver = "xl"\nconfig = "/etc/xen/web1.cfg"',
                        'driver = "command"\ndestroy_command = ["d", "{domain}"]\n'
                        'create_command = ["c"]')
    with pytest.raises(ConfigErrors, match="vms.web1.state_command: is required"):
        load(write(tmp_path, text))


def test_cli_validate_and_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, GOOD)
    assert main(["--config", str(cfg), "validate"]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["--config", str(cfg), "status"]) == 0
    assert "web1: incarnation 0" in capsys.readouterr().out
    bad = write(tmp_path, GOOD.replace("[policy]", "[polcy]"))
    assert main(["validate", "--config", str(bad)]) == 2
    assert "polcy" in capsys.readouterr().err


def test_peer_names_a_configured_vm(tmp_path: Path) -> None:
    pair = GOOD + 'peer = "web2"\n' + GOOD[GOOD.index("[vms.web1]"):].replace(
        "web1", "web2").replace("0001", "0002") + 'peer = "web1"\n'
    spec = load(write(tmp_path, pair.replace("KEYFILE", str(tmp_path / "web1.keys"))))
    assert spec.vms["web1"].peer == "web2" and spec.vms["web2"].peer == "web1"
    with pytest.raises(ConfigErrors) as info:
        load(write(tmp_path, GOOD + 'peer = "db9"\n'))
    assert [str(e) for e in info.value.errors] == [
        f"{tmp_path / 'hostd.toml'}: vms.web1.peer: 'db9' is not a configured VM ([vms.NAME])"]
    with pytest.raises(ConfigErrors) as info:
        load(write(tmp_path, GOOD + 'peer = "web1"\n'))
    assert "vms.web1.peer: a VM cannot be its own peer" in str(info.value)
