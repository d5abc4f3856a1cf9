"""A third-party check, installed with pip from tests/unit/plugin_pkg, is found through
the ``guardian.checks`` entry-point group and as ``module:Class``."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from checks import CheckResult, ConfigError, Status, available_checks, build_check
from checks import load_check_class as load

RunSync = Callable[[Any, float], CheckResult]
PLUGIN_SRC = Path(__file__).parent / "plugin_pkg"
MODULE = "guardian_test_plugin"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """pip-install the plug-in into a temporary --target dir and put it on sys.path."""
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    base = tmp_path_factory.mktemp("plugin")
    src = base / "src"
    shutil.copytree(PLUGIN_SRC, src)  # builds write into the source tree: not ours
    target = base / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--disable-pip-version-check", "--target", str(target),
         str(src)],
        capture_output=True, text=True, timeout=180, check=False)
    if proc.returncode != 0:
        pytest.fail(f"pip install of the test plug-in failed:\n{proc.stdout}\n{proc.stderr}")
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
