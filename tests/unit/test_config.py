"""Configuration: merged files, errors that name file and key, semantic warnings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from checks import ConfigErrors
from guardian import LadderAction, config
from guardian._sample import SAMPLE_CONFIG

MINIMAL = """
[services.web]
backend = "command"
start_command = "/bin/true"
stop_command = "/bin/true"
[[services.web.checks]]
type = "tcp"
host = "127.0.0.1"
port = 80
"""


def errors_of(text: str, source: str = "guardian.toml") -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        config.loads(text, source)
    return [str(e) for e in info.value.errors]


def test_sample_config_is_valid_and_supervises_three_services() -> None:
    spec = config.loads(SAMPLE_CONFIG, "sample")
    assert sorted(spec.services) == ["apache2", "exim4", "named"]
    web = spec.services["apache2"]
    assert web.checks[0].check.kind == "http"
    assert web.restart.budget == 3 and web.restart.window == 300
    assert web.ladder[0].action is LadderAction.ALERT


def test_bad_duration_names_file_and_key_path() -> None:
    text = MINIMAL.replace('port = 80', 'port = 80\ntimeout = "2 parsecs"')
    errs = errors_of(text)
    assert len(errs) == 1
    assert errs[0].startswith('guardian.toml: services.web.checks[0].timeout: "2 parsecs"'
                              " is not a duration") or errs[0].startswith(
        "guardian.toml: services.web.checks[0].timeout: '2 parsecs' is not a duration")


@pytest.mark.parametrize("snippet,path", [
    ("fal = 3", "services.web.fal: unknown key"),
    ("[services.web.restart]\nbudgett = 3", "services.web.restart.budgett: unknown key"),
    ("rise = 0", "services.web.rise: 0 is below the minimum 1"),
    ("ladder = [\"reboot\"]", "services.web.ladder[0].action"),
    ("ladder = [{action = \"exec\"}]", "services.web.ladder[0].command: is required"),
    ("requires = [\"db\"]", "services.web.requires[0]: no service named 'db'"),
])
def test_errors_name_the_key(snippet: str, path: str) -> None:
    text = MINIMAL.replace('[[services.web.checks]]', snippet + "\n[[services.web.checks]]") \
        if not snippet.startswith("[") else MINIMAL + snippet
    errs = errors_of(text)
    assert any(path in e for e in errs), errs
    assert all(e.startswith("guardian.toml: ") for e in errs)


def test_unknown_key_in_check_and_unknown_check_type() -> None:
    errs = errors_of(MINIMAL + "sendd = 'x'\n")
    assert errs == ["guardian.toml: services.web.checks[0].sendd: unknown key"]
    errs = errors_of(MINIMAL.replace('type = "tcp"', 'type = "htp"'))
    assert "services.web.checks[0].type: unknown check type 'htp'" in errs[0]


def test_unknown_top_level_and_backend() -> None:
    errs = errors_of(MINIMAL + "\n[servics.x]\n")
    assert "guardian.toml: servics: unknown key" in errs
    errs = errors_of(MINIMAL.replace('backend = "command"', 'backend = "upstart"'))
    assert any("services.web.backend" in e and "upstart" in e for e in errs)


def test_toml_syntax_error_names_file() -> None:
    errs = errors_of("[services.web\n")
    assert errs[0].startswith("guardian.toml: TOML syntax error")


def test_dependency_cycle_is_an_error() -> None:
    text = MINIMAL.replace("backend", 'requires = ["db"]\nbackend', 1) + """
[services.db]
backend = "command"
start_command = "/bin/true"
requires = ["web"]
"""
    errs = errors_of(text)
    assert any("dependency cycle" in e for e in errs)


def test_start_order_follows_requires() -> None:
    text = MINIMAL.replace("backend", 'requires = ["db"]\nbackend', 1) + """
[services.db]
backend = "command"
start_command = "/bin/true"
"""
    spec = config.loads(text)
    assert spec.start_order() == ["db", "web"]


def test_semantic_warnings() -> None:
    text = MINIMAL.replace('port = 80', 'port = 80\ninterval = "1s"\ntimeout = "3s"')
    text = text.replace("[[services.web.checks]]", """start_grace = "1s"
[services.web.restart]
budget = 10
window = "1m"
backoff = "5s"
[[services.web.checks]]""")
    spec = config.loads(text, "g.toml")
    joined = "\n".join(spec.warnings)
    assert "timeout 3s is longer than interval 1s" in joined
    assert "start_grace 1s is shorter than rise x interval" in joined
    assert "can never be spent" in joined


def test_no_service_warns() -> None:
    spec = config.loads("[guardian]\nlog_level = 'info'\n")
    assert not spec.services
    assert any("supervises nothing" in w for w in spec.warnings)


def test_conf_d_merge_and_duplicate_service(tmp_path: Path) -> None:
    main = tmp_path / "guardian.toml"
    main.write_text("[guardian]\nlog_level = 'debug'\n")
    confd = tmp_path / "conf.d"
    confd.mkdir()
    (confd / "10-web.toml").write_text(MINIMAL)
    (confd / "20-other.toml").write_text(MINIMAL.replace("services.web", "services.other"))
    spec = config.load(main)
    assert sorted(spec.services) == ["other", "web"]
    assert spec.log_level == "debug"
    assert spec.services["web"].source == "conf.d/10-web.toml"
    (confd / "30-dup.toml").write_text(MINIMAL)
    with pytest.raises(ConfigErrors) as info:
        config.load(main)
    msg = str(info.value)
    assert "conf.d/30-dup.toml: services.web: already defined in conf.d/10-web.toml" in msg


def test_all_errors_reported_at_once() -> None:
    text = MINIMAL + "\n[services.b]\nbackend='command'\nstart_command='x'\nfoo=1\n" \
                     "[services.c]\nbackend='command'\nstart_command='x'\nrise='many'\n"
    errs = errors_of(text)
    assert len(errs) == 2


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "guardian", *args], capture_output=True,
                          text=True, timeout=60)


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "guardian.toml"
    good.write_text(MINIMAL)
    res = run_cli("validate", str(good))
    assert res.returncode == 0, res.stderr
    assert "1 service(s) enabled" in res.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL.replace("port = 80", 'port = "eighty"'))
    res = run_cli("validate", str(bad))
    assert res.returncode == 2
    assert "bad.toml: services.web.checks[0].port" in res.stderr


def test_cli_sample_config_validates(tmp_path: Path) -> None:
    res = run_cli("sample-config")
    assert res.returncode == 0
    f = tmp_path / "guardian.toml"
    f.write_text(res.stdout)
    res = run_cli("validate", str(f))
    assert res.returncode == 0, res.stderr


def test_cli_version() -> None:
    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.startswith("guardian ")


def test_dangling_confd_link_is_an_error_naming_it(tmp_path: Path) -> None:
    from guardian.config import load

    main = tmp_path / "guardian.toml"
    main.write_text("")
    (tmp_path / "conf.d").mkdir()
    # made from the wrong directory: points at conf.d/conf-available/..., which is not there
    (tmp_path / "conf.d" / "apache2.toml").symlink_to("conf-available/apache2.toml")
    with pytest.raises(ConfigErrors) as err:
        load(main)
    assert "apache2.toml: file not found" in str(err.value)


def test_failover_without_pyroute2_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyroute2" else real(name, *a))
    text = """
[failover]
node = "vm01"
[failover.groups.web]
peer = "vm02"
vips = ["192.0.2.100/24"]
paths = [{ local = "192.0.2.11", peer = "192.0.2.12" }]
"""
    with pytest.raises(ConfigErrors) as err:
        config.loads(text, "guardian.toml")
    assert "guardian.toml: failover: IP failover needs python3-pyroute2" in str(err.value)
