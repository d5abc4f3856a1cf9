# Shortcuts for the scripts the README names (scripts/demo.sh, scripts/test.sh);
# those two work on a fresh Debian bookworm machine without make installed.
.PHONY: setup demo test unit lab bench lint types clean deb deb-test

setup:
	bash scripts/setup.sh

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

unit: setup
	.venv/bin/python -m pytest tests -m "not lab and not bench" -q

lab: setup
	.venv/bin/python -m pytest tests -m "lab and not bench" -q

bench: setup
	.venv/bin/python -m guardian.lab.bench --runs 5 --json bench-results.json

# The Debian package (packaging/README.md): built from a clean copy of the tree
# into dist/; needs the build dependencies that scripts/setup.sh installs.
deb:
	bash packaging/build-deb.sh

# Build it, install it into a bookworm chroot, check it, purge it (root, network).
deb-test: setup
	.venv/bin/python -m pytest tests/packaging -m deb -q

lint: setup
	.venv/bin/ruff check guardian checks ipfailover tests

types: setup
	.venv/bin/mypy

clean:
	.venv/bin/python -m guardian.lab cleanup || true
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
