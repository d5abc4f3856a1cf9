"""The packaging tier: build the Debian package, install it into a throwaway
bookworm chroot, check it, purge it (``tests/packaging/test_deb.py``).

Those tests carry the ``deb`` marker, registered here.  They need root, the build
dependencies of ``packaging/debian/control``, debootstrap and a Debian mirror, and
take about a minute, so they run only when asked for by marker
(``pytest tests/packaging -m deb``, ``make deb-test``, ``tox -e deb``): a ``-m``
expression that does not mention ``deb`` deselects them, so the unit tier
(``-m "not lab and not bench"``) never starts a package build.
"""

from __future__ import annotations

import pytest

_REPORT = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def deb_report(request: pytest.FixtureRequest) -> list[str]:
    """Lines to print in the terminal summary (the deb tier's timings)."""
    return request.config.stash.setdefault(_REPORT, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    lines = config.stash.get(_REPORT, [])
    if lines:
        terminalreporter.section("deb tier")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "deb: builds the .deb and installs it into a bookworm chroot (root, network)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "deb" in (config.getoption("markexpr", "") or ""):
        return
    deselected = [item for item in items if item.get_closest_marker("deb") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item.get_closest_marker("deb") is None]
