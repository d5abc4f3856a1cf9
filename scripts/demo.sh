#!/bin/bash
# The demo: set up (Debian packages, .venv), then build the lab and watch guardiand
# supervise Apache, BIND and Exim on the shipped default config.  Root.
#   scripts/demo.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m guardian.lab.demo "$@"
