#!/usr/bin/env bash
# Builds the QEMU guest's initramfs (gzip'd cpio) for the Linux NVMe/TCP tests:
#   ci/guest_initramfs.sh OUTPUT.cpio.gz
# Busybox as the whole userland; the kernel modules for virtio-net, the NVMe/TCP host and the
# nvmet-tcp target, null_blk and brd, with their dependencies, depmod'ed so busybox modprobe
# works; nvme-cli, mke2fs, e2fsck, fstrim, blkdiscard and filefrag with the libraries ldd names; /init and
# its helpers from ci/guest/. The kernel comes from .cache/guest/kernel (ci/install_guest.sh).
# A test adds its own script as a second cpio appended to this one (tests/guest/mod.rs).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUTPUT.cpio.gz" >&2; exit 2; }
output=$(realpath -m "$1")
repo=$(cd "$(dirname "$0")/.." && pwd)
kernel=$repo/.cache/guest/kernel
version=$(ls "$kernel/lib/modules")
[ "$(echo "$version" | wc -w)" -eq 1 ] || { echo "$0: no single kernel in $kernel" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,etc/nvme,proc,sys,dev,tmp,mnt,lib,run} "$root/lib/modules/$version"
cp /bin/busybox "$root/bin/"
install -m 0755 "$repo/ci/guest/init" "$root/init"
install -m 0644 "$repo/ci/guest/lib.sh" "$root/lib/guest.sh"

# The module closure: modprobe resolves each module's dependencies inside the unpacked tree
# (built-in ones print "builtin", which is skipped).
for module in configfs virtio_pci virtio_net nvme-fabrics nvme-tcp nvmet nvmet-tcp null_blk brd; do
    modprobe -d "$kernel" -S "$version" --show-depends "$module"
done | awk '$1 == "insmod" { print $2 }' | sort -u | while read -r file; do
    relative=${file#"$kernel"/}
    mkdir -p "$root/$(dirname "$relative")"
    cp "$file" "$root/$relative"
done
modules=lib/modules/$version
cp "$kernel/$modules"/modules.{order,builtin,builtin.modinfo} "$root/$modules/"
depmod -b "$root" "$version"

# Dynamically linked tools busybox lacks (or has only in part), each with its libraries.
tools=(/usr/sbin/nvme /usr/sbin/mke2fs /usr/sbin/e2fsck /usr/sbin/fstrim /usr/sbin/blkdiscard
    /usr/bin/fallocate /usr/sbin/filefrag)
for tool in "${tools[@]}"; do
    cp "$tool" "$root/sbin/"
    ldd "$tool" | awk '/=> \// { print $3 } /^[ \t]*\/lib/ { print $1 }'
done | sort -u | while read -r library; do
    mkdir -p "$root/$(dirname "$library")"
    cp -L "$library" "$root/$library"
done
ln -s mke2fs "$root/sbin/mkfs.ext4"
cp /etc/mke2fs.conf "$root/etc/"

mkdir -p "$(dirname "$output")"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -1) > "$output.tmp.$$"
mv "$output.tmp.$$" "$output"
