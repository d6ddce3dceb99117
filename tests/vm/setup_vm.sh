#!/usr/bin/env bash
# Install what the VM suite (tests/vm) needs on a Debian 12 machine, as root:
#   - QEMU (TCG is enough), busybox-static (virtme-ng's guest init uses it), clang
#     (the guest scenarios build a tiny XDP object), Debian's `vagrant` (to
#     `vagrant validate` vagrant/Vagrantfile);
#   - the Debian kernel image whose ABI matches the installed linux-headers-amd64
#     (the headers bcc compiles against inside the guest, found through
#     /lib/modules/<abi>/build on the host root filesystem the guest shares);
#   - virtme-ng from PyPI into its own venv, tests/vm/.vng-venv (gitignored), so it
#     never mixes with the project's .venv.
# Idempotent: a second run only checks. Run after scripts/setup.sh (which installs
# linux-headers-amd64); if those headers are missing this script installs them.
#
# Safety on this machine: it boots a custom kernel with no bootloader, so the image
# package is installed with --no-install-recommends (no firmware, no grub) and with
# INITRD=No, which the kernel postinst hook of initramfs-tools honours: no initramfs
# is built (virtme-ng boots the bare vmlinuz with its own init). The image and its
# dependencies (udev, kmod, initramfs-tools, a same-version systemd/libudev) only add
# files; nothing here touches the running kernel, the boot path or eth0.
set -euo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)
VNG_VERSION=1.42

if [ "$(id -u)" != 0 ]; then
    echo "setup_vm.sh: must run as root (apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
updated=0
apt_update_once() { [ "$updated" = 1 ] || { apt-get update -q; updated=1; }; }

if ! installed linux-headers-amd64; then
    apt_update_once
    apt-get install -y -q --no-install-recommends linux-headers-amd64
fi

# The kernel ABI (e.g. 6.1.0-56-amd64) and version (e.g. 6.1.192-2) come from the
# installed headers metapackage: it depends on exactly one linux-headers-<abi> (= <ver>).
HDR_VERSION=$(dpkg-query -W -f='${Version}' linux-headers-amd64)
ABI=$(dpkg-query -W -f='${Depends}' linux-headers-amd64 \
      | grep -oE 'linux-headers-[0-9][^ ,()]*-amd64' | head -n1 | sed 's/^linux-headers-//')
if [ -z "$ABI" ] || [ ! -d "/lib/modules/$ABI/build" ]; then
    echo "setup_vm.sh: cannot find the headers ABI (got '$ABI'); /lib/modules/*/build:" >&2
    ls -d /lib/modules/*/build >&2 || true
    exit 1
fi
IMAGE=linux-image-$ABI

APT_PACKAGES=(qemu-system-x86 qemu-utils busybox-static clang llvm ethtool iproute2 vagrant vagrant-libvirt
              python3-venv)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done
want_image=
if ! installed "$IMAGE" || [ "$(dpkg-query -W -f='${Version}' "$IMAGE")" != "$HDR_VERSION" ]; then
    want_image="$IMAGE=$HDR_VERSION"
fi
if [ ${#missing[@]} -gt 0 ] || [ -n "$want_image" ]; then
    echo "setup_vm.sh: installing ${missing[*]} $want_image"
    apt_update_once
    if [ -n "$want_image" ] && ! apt-cache madison "$IMAGE" | grep -q " $HDR_VERSION "; then
        echo "setup_vm.sh: $IMAGE $HDR_VERSION (the version of linux-headers-amd64) is not" \
             "in the apt lists; upgrade linux-headers-amd64 so both match" >&2
        exit 1
    fi
    INITRD=No apt-get install -y -q --no-install-recommends "${missing[@]}" $want_image
fi
if [ ! -r "/boot/vmlinuz-$ABI" ]; then
    echo "setup_vm.sh: /boot/vmlinuz-$ABI is missing after installing $IMAGE" >&2
    exit 1
fi

# A second guest kernel: the newest Debian 12 6.12 image in the apt lists
# (linux-image-6.12.N+deb12-amd64-unsigned), downloaded and unpacked into
# tests/vm/kernels/<abi>/ with `dpkg -x`: never installed, so the machine's boot path,
# /boot and /lib/modules stay as they are. virtme-ng finds lib/modules/<abi> beside the
# unpacked boot/vmlinuz-<abi>; bcc in that guest compiles against the 6.1 headers above.
newest_612() {
    apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' \
        | awk '{print $1}' | sort -V | tail -n1
}
PKG612=$(newest_612)
if [ -z "$PKG612" ]; then
    apt_update_once
    PKG612=$(newest_612)
fi
if [ -z "$PKG612" ]; then
    echo "setup_vm.sh: no linux-image-6.12.*+deb12-amd64-unsigned in the apt lists" >&2
    exit 1
fi
ABI612=${PKG612#linux-image-}
ABI612=${ABI612%-unsigned}
K612=kernels/$ABI612
if [ ! -r "$K612/boot/vmlinuz-$ABI612" ] || [ ! -d "$K612/lib/modules/$ABI612" ]; then
    echo "setup_vm.sh: unpacking $PKG612 into tests/vm/$K612"
    mkdir -p kernels
    rm -rf kernels/.unpack
    mkdir kernels/.unpack
    # apt-get download runs as the _apt user where it can; the directory must let it write.
    chmod 0777 kernels/.unpack
    (cd kernels/.unpack && apt-get download -q "$PKG612")
    dpkg -x kernels/.unpack/"$PKG612"_*.deb kernels/.unpack/root
    rm -rf "$K612"
    mv kernels/.unpack/root "$K612"
    rm -rf kernels/.unpack
fi
# Older unpacked 6.12 images are replaced by the newest.
for d in kernels/6.12.*; do
    [ "$d" = "$K612" ] || [ ! -d "$d" ] || rm -rf "$d"
done

# virtme-ng in its own venv, from Debian's python (not whatever python3 is first on PATH).
if [ ! -x .vng-venv/bin/vng ] \
   || [ "$(.vng-venv/bin/python -c 'import importlib.metadata as m; print(m.version("virtme-ng"))' 2>/dev/null)" != "$VNG_VERSION" ]; then
    rm -rf .vng-venv
    /usr/bin/python3 -m venv .vng-venv
    .vng-venv/bin/python -m pip install -q --disable-pip-version-check "virtme-ng==$VNG_VERSION"
fi
.vng-venv/bin/vng --version >/dev/null \
    || { echo "setup_vm.sh: $HERE/.vng-venv/bin/vng does not run" >&2; exit 1; }
echo "setup_vm.sh: ready (kernels /boot/vmlinuz-$ABI and tests/vm/$K612/boot/vmlinuz-$ABI612, vng $VNG_VERSION in tests/vm/.vng-venv)"
