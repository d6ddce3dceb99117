#!/usr/bin/env bash
# Set up vtnetmap on a fresh Debian 12 machine, as root: Debian packages (bcc,
# kernel headers for bcc, iproute2, ethtool, ...) and a venv in .venv made from
# Debian's /usr/bin/python3 with --system-site-packages, since bcc comes from
# Debian and is not on PyPI. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: must run as root (apt-get, BPF, AF_XDP)" >&2
    exit 1
fi

# What the project needs from Debian. linux-headers-amd64 (6.1) serves bcc when
# the running kernel ships no headers: XDP and TC programs use only stable UAPI.
APT_PACKAGES=(
    python3 python3-venv python3-pip python3-dev python3-bpfcc bpfcc-tools libbpfcc
    linux-headers-amd64 iproute2 ethtool tcpdump iputils-ping netcat-openbsd
    procps libcap2-bin util-linux gcc libc6-dev libbpf-dev libxdp-dev xdp-tools
    clang llvm iperf3
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# Editable so the tests exercise this tree; tests/unit/test_packaging.py checks a
# non-editable `pip install .` into a fresh venv as users get it.
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# The VM suite (tests/vm): QEMU, the Debian kernel image matching linux-headers-amd64,
# virtme-ng in tests/vm/.vng-venv, and vagrant for `vagrant validate`.
tests/vm/setup_vm.sh
.venv/bin/python -c 'import bcc, numpy, pyroute2, click' \
    || { echo "setup.sh: the venv cannot import bcc/numpy/pyroute2/click" >&2; exit 1; }
echo "setup.sh: ready (.venv)"
