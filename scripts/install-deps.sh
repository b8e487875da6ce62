#!/usr/bin/env bash
# Installs what the tests and the demo need on Debian, then builds the pinned
# MinIO server from the Go module proxy. Without root it prints exactly what
# is missing.
#   qemu-utils            qemu-img (the converter)
#   e2fsprogs             mkfs.ext4 (the demo's realistic image)
#   qemu-system-x86       QEMU for the LVM guest VM and for libvirt domains
#   lvm2                  LVM tools, copied into the LVM guest
#   thin-provisioning-tools  thin_check and friends, which lvm runs on thin pools (copied into the LVM guest)
#   libvirt-daemon-system libvirtd for the libvirt backend's tests
#   libvirt-dev pkg-config gcc   cgo build of libvirt.org/go/libvirt
#   libdeflate-dev               the native converter's zlib decompressor (build tag libdeflate)
#   prometheus            the real Prometheus and promtool of the metrics tests
#   util-linux curl       losetup (loop devices), curl
#   xfsprogs btrfs-progs  mkfs.xfs and mkfs.btrfs: the reflink clone tests' file systems on loop devices
#   xorriso               the ISO reader the tests read cloud-init seed images back with
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(qemu-utils libdeflate-dev e2fsprogs qemu-system-x86 lvm2 thin-provisioning-tools libvirt-daemon-system libvirt-dev pkg-config gcc prometheus util-linux curl xfsprogs btrfs-progs xorriso)
need=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages: ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing Debian packages: ${need[*]}; run: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
scripts/install-minio.sh
