"""A third-party check: tests/unit/plugin_pkg is built into a wheel and pip-installed
(offline, into a temporary target directory); it is then found through the
``guardian.checks`` entry-point group and as ``module:Class``, and used from a
configuration, by a running Supervisor and by ``guardian validate``."""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from checks import CheckResult, ConfigError, Status, available_checks, build_check
from checks import load_check_class as load
from guardian import Supervisor, config

RunSync = Callable[[Any, float], CheckResult]
PLUGIN_SRC = Path(__file__).parent / "plugin_pkg"
MODULE = "guardian_test_plugin"


def pip(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--quiet", "--no-deps", "--no-index",
         "--disable-pip-version-check"],
        capture_output=True, text=True, timeout=180, check=False)
    if proc.returncode != 0:
        pytest.fail(f"pip {args[0]} of the test plug-in failed:\n{proc.stdout}\n{proc.stderr}")


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build the plug-in's wheel, pip-install it into a temporary --target dir and
    put that on sys.path."""
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    base = tmp_path_factory.mktemp("plugin")
    src = base / "src"
    shutil.copytree(PLUGIN_SRC, src)  # builds write into the source tree: not ours
    dist = base / "dist"
    pip("wheel", "--no-build-isolation", "--wheel-dir", str(dist), str(src))
    (wheel,) = dist.glob("guardian_test_plugin-0.1.0-*.whl")
    target = base / "site"
    pip("install", "--target", str(target), str(wheel))
    assert list(target.glob("guardian_test_plugin-0.1.0.dist-info"))
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        sys.modules.pop(MODULE, None)
        importlib.invalidate_caches()


def test_not_found_before_install() -> None:
    assert "test-constant" not in available_checks()
    with pytest.raises(ConfigError) as info:
        build_check("test-constant", {}, path="services.x.checks[0]", source="guardian.toml")
    assert "guardian.toml: services.x.checks[0].type: unknown check type 'test-constant'" \
        in str(info.value)


def test_entry_point(installed_plugin: Path, run_sync: RunSync) -> None:
    assert available_checks()["test-constant"] == f"{MODULE}:ConstantCheck"
    cls = load("test-constant")
    assert cls.__module__ == MODULE
    assert Path(sys.modules[MODULE].__file__ or "").parent == installed_plugin
    check = build_check("test-constant", {"status": "WARNING", "message": "from a plug-in"})
    result = run_sync(check, 1.0)
    assert result.status is Status.WARNING
    assert result.detail == "constant WARNING: from a plug-in"
    assert result.perfdata == ("answer=42;;;0",)


def test_module_class_path(installed_plugin: Path, run_sync: RunSync) -> None:
    check = build_check(f"{MODULE}:ConstantCheck", {"status": "CRITICAL"})
    assert type(check) is load("test-constant")
    assert run_sync(check, 1.0).status is Status.CRITICAL


def test_plugin_options_checked(installed_plugin: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_check("test-constant", {"status": "FINE"}, path="p", source="g.toml")
    assert "g.toml: p.status: 'FINE' is not one of OK, WARNING, CRITICAL, UNKNOWN" \
        in str(info.value)
    with pytest.raises(ConfigError) as info:
        build_check("test-constant", {"mesage": "x"}, path="p", source="g.toml")
    assert "g.toml: p.mesage: unknown key" in str(info.value)


PLUGIN_CONFIG = """
[guardian]
control_socket = "/nonexistent/guardian-test.sock"

[services.app]
backend = "command"
start_command = ["true"]
rise = 2
start_grace = "2s"

[[services.app.checks]]
type = "test-constant"
name = "answer"
status = "WARNING"
message = "from a plug-in"
interval = "50ms"
timeout = "1s"
"""


def test_used_from_config_by_a_supervisor(installed_plugin: Path) -> None:
    spec = config.loads(PLUGIN_CONFIG, "guardian.toml")
    (check_spec,) = spec.services["app"].checks
    assert type(check_spec.check) is load("test-constant")

    async def scenario() -> dict[str, Any]:
        sup = Supervisor(spec, control=False)
        task = asyncio.create_task(sup.run())
        try:
            async with asyncio.timeout(5.0):
                await sup.ready.wait()
                while True:
                    (app,) = sup.status()["services"]
                    if app["state"] == "up":
                        return dict(app)
                    await asyncio.sleep(0.01)
        finally:
            sup.stop()
            async with asyncio.timeout(5.0):
                await task

    app = asyncio.run(scenario())
    (answer,) = app["checks"]
    assert (answer["name"], answer["type"], answer["target"]) == \
        ("answer", "test-constant", "constant WARNING")
    assert answer["status"] == "WARNING"
    assert answer["detail"] == "constant WARNING: from a plug-in"
    assert app["verdict"] == "WARNING"   # a warning counts as up, and is shown


def test_validate_cli_sees_the_plugin(installed_plugin: Path, tmp_path: Path) -> None:
    conf = tmp_path / "guardian.toml"
    conf.write_text(PLUGIN_CONFIG)

    def validate(pythonpath: str | None) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        return subprocess.run([sys.executable, "-m", "guardian", "validate", str(conf)],
                              capture_output=True, text=True, timeout=60, env=env, check=False)

    res = validate(str(installed_plugin))
    assert res.returncode == 0, res.stderr
    assert "1 service(s) enabled (app)" in res.stdout
    res = validate(None)     # not installed: a config error naming file and key
    assert res.returncode == 2
    assert "guardian.toml: services.app.checks[0].type: unknown check type 'test-constant'" \
        in res.stderr
