#!/bin/bash
# Install everything guardian's demo and test suite need on a fresh Debian
# bookworm machine (run as root): Debian's packages, then a virtualenv in .venv
# with guardian installed in editable mode.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    # the services the lab runs, and the tools it builds namespaces with
    apache2 bind9 bind9-dnsutils exim4-daemon-light supervisor iproute2 nftables procps
    psmisc util-linux
    # the anchors we measure against and the probe references
    monit keepalived monitoring-plugins-basic monitoring-plugins-standard
    # python for the virtualenv
    python3 python3-venv python3-dev
    # building the Debian package (make deb) and its test (debootstrap)
    debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools python3-wheel
    python3-dnspython python3-requests lintian debootstrap
    # the lab tier once more on bookworm's own libraries (what the .deb runs with)
    python3-pytest python3-pyroute2 python3-scapy python3-prometheus-client
    # guardian-hostd's drivers tested for real: libvirt's test:///default driver, and
    # Pacemaker's crm_resource/crm_mon on a file CIB (CIB_file=)
    python3-libvirt pacemaker-cli-utils
    # the real xenstore-* tools, checked against the XenStore stand-in
    xenstore-utils
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The services must not start on the host: the lab starts them in namespaces.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian starts these on install where it can; the lab wants the host's copies idle.
for svc in apache2 named bind9 exim4 supervisor monit keepalived; do
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
done

PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
.venv/bin/python -m pip install -q -e '.[test,failover]'
echo "setup: ready ($(.venv/bin/python --version), guardian $(.venv/bin/guardian --version))"
