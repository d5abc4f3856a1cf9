#!/bin/bash
# The whole test suite: unit tier (no root needed), then the lab tier (root,
# network namespaces, real Apache/BIND/Exim/supervisord).  Sets up first.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
PYTEST=(.venv/bin/python -m pytest -p no:cacheprovider)

status=0
ran=0
run_tier() {
    local name=$1; shift
    echo "=== $name ==="
    "${PYTEST[@]}" "$@"
    local rc=$?
    if [ $rc -eq 5 ]; then
        echo "=== $name: no test selected ==="
    elif [ $rc -ne 0 ]; then
        echo "=== $name: FAILED (exit $rc) ==="
        status=1
    else
        ran=1
    fi
}

run_tier "unit tier" tests -m "not lab and not bench" -q
if [ "$(id -u)" -eq 0 ]; then
    run_tier "lab tier" tests -m "lab and not bench" -q
    # guardiand, its checks and the VIP layer on Debian bookworm's python3 and
    # python3-* libraries (pyroute2 0.7.2, scapy 2.5.0, dnspython 2.3, requests 2.28)
    echo "=== lab tier on bookworm's libraries ==="
    PYTHONPATH="$PWD" /usr/bin/python3 -m pytest -p no:cacheprovider -q -m lab \
        tests/lab/test_guardiand.py tests/lab/test_vip.py tests/lab/test_crosscheck.py
    rc=$?
    if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then
        echo "=== lab tier on bookworm's libraries: FAILED (exit $rc) ==="
        status=1
    fi
    # guardian-hostd's libvirt driver against libvirt's test driver: python3-libvirt is
    # Debian's package, which the virtualenv does not see (there the test skips)
    echo "=== hostd libvirt driver on bookworm's python3-libvirt ==="
    PYTHONPATH="$PWD" /usr/bin/python3 -m pytest -p no:cacheprovider -q \
        tests/unit/test_hostd_libvirt.py
    rc=$?
    if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then
        echo "=== hostd libvirt driver on bookworm's python3-libvirt: FAILED (exit $rc) ==="
        status=1
    fi
    run_tier "deb tier" tests/packaging -m deb -q
else
    echo "=== lab tier skipped: needs root ==="
fi
.venv/bin/python -m guardian.lab cleanup >/dev/null 2>&1 || true
if [ $ran -eq 0 ] && [ $status -eq 0 ]; then
    echo "test.sh: no test ran at all" >&2
    exit 1
fi
exit $status
