"""Fixtures of the lab tier (root, network namespaces): see guardian.lab.

One lab per session (client + vm01 + vm02, supervisord autorestart=true), shared by
the tests; the per-test ``vm01``/``vm02`` fixtures put a VM back into its healthy
state before the test (boot it if destroyed, fix its config, start stopped programs),
and print its process states and log tails after a failure. Tests that need their own
lab (other settings, or that tear it down) use ``make_lab``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from guardian.lab import (
    CLIENT_IP,
    VM,
    VM01_IP,
    VM02_IP,
    Host,
    Lab,
    LabError,
    cleanup_stale,
    unavailable_reason,
)

_FAILED = pytest.StashKey[bool]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    lab_items = [item for item in items if item.get_closest_marker("lab") is not None]
    if not lab_items:
        return
    reason = unavailable_reason()
    if reason is not None:
        for item in lab_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The shared lab: client, vm01 and vm02 (all stock services, autorestart=true)."""
    report = cleanup_stale()
    if report.removed:
        print(f"removed stale labs {report.removed}")
    with Lab() as the_lab:
        the_lab.host("client", CLIENT_IP)
        the_lab.vm("vm01", VM01_IP, boot=False)
        the_lab.vm("vm02", VM02_IP, boot=False)
        the_lab.boot(timeout=30)  # both at once, and wait until they serve
        yield the_lab


@pytest.fixture
def client(lab: Lab) -> Host:
    return lab["client"]


def _healthy(vm: VM) -> VM:
    if not vm.running:
        vm.destroy()  # idempotent; clears a crashed VM's leftovers
        vm.boot()
    vm.fix_apache_config()
    if vm.zone_address != vm.spec.www_address:
        vm.serve_right_zone()
    for info in vm.supervisor.all_process_info():
        if info.statename in ("STOPPED", "EXITED", "FATAL"):
            vm.supervisor.start(info.name, False)
    vm.wait_ready(timeout=20)
    vm.wait_running(timeout=20)
    return vm


def _vm_fixture(lab: Lab, name: str, request: pytest.FixtureRequest) -> Iterator[VM]:
    vm = lab[name]
    assert isinstance(vm, VM)
    yield _healthy(vm)
    if request.node.stash.get(_FAILED, False):
        print(vm.debug_report())


@pytest.fixture
def vm01(lab: Lab, request: pytest.FixtureRequest) -> Iterator[VM]:
    """The shared lab's vm01, healthy and serving."""
    yield from _vm_fixture(lab, "vm01", request)


@pytest.fixture
def vm02(lab: Lab, request: pytest.FixtureRequest) -> Iterator[VM]:
    yield from _vm_fixture(lab, "vm02", request)


@pytest.fixture
def make_lab() -> Iterator[Callable[[], Lab]]:
    """Factory of private labs, closed at the end of the test (pass or fail)."""
    labs: list[Lab] = []

    def make() -> Lab:
        new = Lab()
        labs.append(new)
        return new

    yield make
    errors = []
    for one in labs:
        try:
            one.close()
        except LabError as exc:
            errors.append(str(exc))
    assert not errors, errors
