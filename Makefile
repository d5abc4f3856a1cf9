# Two commands do everything on a fresh Debian bookworm machine (as root):
#   make demo   - build the lab and watch guardiand supervise Apache, BIND and Exim
#   make test   - the whole test suite (unit tier, then the lab tier)
.PHONY: setup demo test unit lab bench lint types clean

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/python -m guardian.lab.demo

test:
	bash scripts/test.sh

unit: setup
	.venv/bin/python -m pytest tests -m "not lab and not bench" -q

lab: setup
	.venv/bin/python -m pytest tests -m "lab and not bench" -q

bench: setup
	.venv/bin/python -m guardian.lab.bench --runs 5 --json bench-results.json

lint: setup
	.venv/bin/ruff check guardian checks ipfailover tests

types: setup
	.venv/bin/mypy

clean:
	.venv/bin/python -m guardian.lab.cleanup || true
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
