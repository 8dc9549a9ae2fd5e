#!/usr/bin/env bash
# Installs what the QEMU guest tests need (run by ci/install.sh, safe to re-run, quick when done):
# QEMU for x86 (TCG), the guest's userland tools, and Debian's cloud kernel unpacked into the
# repository's ignored .cache/guest/kernel/ (downloaded, never installed on this machine).
# ci/guest_initramfs.sh builds the guest's initramfs from them.
set -euo pipefail
cd "$(dirname "$0")/.."

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

guest_kernel=.cache/guest/kernel
need_apt=()
need_qemu=false
command -v qemu-system-x86_64 >/dev/null || need_qemu=true
# busybox-static is the whole guest userland; the others are copied into the guest with their
# libraries (nvme-cli, mke2fs, fstrim, blkdiscard) or build it (cpio, depmod, modprobe);
# socat carries each guest connection to the host's 127.0.0.1 (QEMU's guestfwd).
for package in busybox-static cpio kmod socat nvme-cli e2fsprogs util-linux; do
    installed "$package" || need_apt+=("$package")
done
need_kernel=false
compgen -G "$guest_kernel/boot/vmlinuz-*" >/dev/null || need_kernel=true

if $need_qemu || ((${#need_apt[@]})) || $need_kernel; then
    apt-get update -qq
fi
if ((${#need_apt[@]})); then
    echo "ci/install_guest.sh: installing ${need_apt[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
if $need_qemu; then
    # The image may carry a newer qemu-utils from outside the configured suites, which conflicts
    # with the suite's qemu-system-x86; naming both fails as "held broken packages". Pin the
    # suite's version for the trio and allow the downgrade (qemu-img and qemu-io still speak NBD).
    version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
    echo "ci/install_guest.sh: installing qemu-system-x86 $version"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        --allow-downgrades qemu-system-x86 "qemu-utils=$version" "qemu-block-extra=$version"
fi
command -v qemu-system-x86_64 >/dev/null

if $need_kernel; then
    # The ABI number in the package name changes with Debian's kernel updates (old ones leave the
    # mirror), so ask the metapackage which one is current.
    image=$(apt-cache depends linux-image-cloud-amd64 |
        awk '/Depends: linux-image-/ { print $2; exit }')
    [ -n "$image" ] || { echo "ci/install_guest.sh: no linux-image-cloud-amd64" >&2; exit 1; }
    echo "ci/install_guest.sh: unpacking $image into $guest_kernel"
    download=$(mktemp -d)
    trap 'rm -rf "$download"' EXIT
    (cd "$download" && apt-get download -qq "$image" 2>/dev/null)
    rm -rf "$guest_kernel.tmp"
    mkdir -p "$guest_kernel.tmp"
    dpkg-deb -x "$download"/linux-image-*.deb "$guest_kernel.tmp"
    # The package's postinst would run depmod; modprobe --show-depends needs its modules.dep.
    depmod -b "$guest_kernel.tmp" "$(ls "$guest_kernel.tmp/lib/modules")"
    rm -rf "$guest_kernel"
    mv "$guest_kernel.tmp" "$guest_kernel"
fi
compgen -G "$guest_kernel/boot/vmlinuz-*" >/dev/null
