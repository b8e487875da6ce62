#!/usr/bin/env bash
# Installs what the tests and the demo need on Debian: qemu-utils (qemu-img),
# e2fsprogs (mkfs.ext4 for the demo image), and the pinned MinIO server built
# from the Go module proxy. Without root it says exactly what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v curl >/dev/null || need+=(curl)
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
