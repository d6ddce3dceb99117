#!/bin/sh
# Provisioning steps of vagrant/Vagrantfile, run as root inside the guest:
#   provision.sh kernel     install the Debian kernel whose headers bcc will use
#                           (linux-image-amd64 + linux-headers-amd64); Vagrant reboots after
#   provision.sh setup      the README's set-up command, ./scripts/setup.sh
#   provision.sh scenarios [pytest args...]
#                           the guest scenarios (tests/vm/guest) on the test NIC
# The local QEMU harness (tests/vm/harness.py) runs `provision.sh scenarios` too, so the
# Vagrant path and CI execute the same scenario code.
set -eu
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

case "${1:-}" in
kernel)
    apt-get update -q
    apt-get install -y -q --no-install-recommends linux-image-amd64 linux-headers-amd64
    ;;
setup)
    if [ ! -d "/lib/modules/$(uname -r)/build" ]; then
        # bcc compiles against the running kernel's headers.
        apt-get update -q
        apt-get install -y -q --no-install-recommends "linux-headers-$(uname -r)" || {
            echo "provision.sh: no headers for the running kernel $(uname -r);" \
                 "run 'vagrant reload --provision' to boot the newly installed one" >&2
            exit 1
        }
    fi
    ./scripts/setup.sh
    ;;
scenarios)
    shift
    # The test NIC is the multiqueue virtio NIC with this MAC (the Vagrantfile's private
    # network; eth0 under the QEMU harness). Everything the scenarios change is on it.
    mac=${VTVM_GUEST_MAC:-52:54:00:76:74:02}
    iface=
    for d in /sys/class/net/*; do
        if [ "$(cat "$d/address")" = "$mac" ]; then iface=${d##*/}; fi
    done
    if [ -z "$iface" ]; then
        echo "provision.sh: no NIC with MAC $mac" >&2
        ip -br link >&2
        exit 1
    fi
    export VTVM_IFACE="$iface"
    export VTVM_QUEUES="${VTVM_QUEUES:-4}"
    export VTVM_RESULTS="${VTVM_RESULTS:-/var/tmp/vtvm-results}"
    mkdir -p "$VTVM_RESULTS"
    rm -f "$VTVM_RESULTS/results.jsonl"
    echo "provision.sh: scenarios on $iface, results in $VTVM_RESULTS"
    exec sh tests/vm/guest/run.sh --junitxml="$VTVM_RESULTS/junit.xml" "$@"
    ;;
*)
    echo "usage: provision.sh kernel|setup|scenarios [pytest args]" >&2
    exit 2
    ;;
esac
