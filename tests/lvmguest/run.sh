#!/bin/bash
# End-to-end tests of the LVM backend against real LVM. The host kernel may
# lack device-mapper, so this boots a small VM instead: Debian's kernel, a
# busybox + lvm2 + qemu-img initramfs, and the lvm backend's tests
# compiled with -tags lvmguest (volume/lvm/*_guest_test.go: the backend
# conformance suite of volume/volumetest, and the thick and thin LVs' own
# tests). The guest's init
# makes a volume group on a sparse virtio disk and a thin pool in it, runs the
# tests, prints
# "LVMGUEST-RESULT: PASS" or "LVMGUEST-RESULT: FAIL" on the serial console
# and powers off; this script prints the tests' output and exits 0 or 1.
#
# Usage: tests/lvmguest/run.sh     (from anywhere; `make e2e-lvm`)
# Env:   ACCEL=auto|kvm|tcg  (auto: KVM when real VT-x/AMD-V is usable, else TCG)
#        TIMEOUT=900         whole-VM wall-clock limit, seconds
#        RUN='^TestLVMGuest' which tests to run (-test.run)
#        KEEP=1              keep the work directory (kept anyway on failure)
#        BENCH=1             run the thin-snapshot benchmark instead
#                            (TestLVMGuestBenchThin, a 6 GiB disk)
#        LVMGUEST_CACHE      where downloaded .debs are kept
#                            (default ${XDG_CACHE_HOME:-$HOME/.cache}/provisioner-lvmguest)
# Host:  qemu-system-x86 (qemu-system-x86_64), lvm2, thin-provisioning-tools
#        (thin_check, which lvm runs before it activates a thin pool), qemu-utils (qemu-img),
#        Go, apt-get + dpkg-deb (to fetch linux-image-*-amd64 and
#        busybox-static, once). The guest runs the host's lvm and qemu-img
#        binaries with their shared libraries, so the host should be the
#        Debian release the kernel package comes from.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ACCEL=${ACCEL:-auto}
TIMEOUT=${TIMEOUT:-900}
BENCH=${BENCH:-}
if [ "$BENCH" = 1 ]; then RUN=${RUN:-^TestLVMGuestBenchThin$}; else RUN=${RUN:-^TestLVMGuest}; fi
KVM_START_TIMEOUT=${KVM_START_TIMEOUT:-30}
case $TIMEOUT in ''|*[!0-9]*) echo "TIMEOUT must be a number of seconds, not $TIMEOUT" >&2; exit 2 ;; esac
TEST_TIMEOUT=$(( TIMEOUT > 120 ? TIMEOUT - 60 : TIMEOUT / 2 ))   # go test's own, inside the VM
CACHE=${LVMGUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/provisioner-lvmguest}
VG=lvmguestvg          # only inside the VM, on its own disk
DISK_MB=1024           # the VM's PV (a sparse file)
POOL_MB=320            # the thin pool the tests share, in that VG
VM_MB=1536
if [ "$BENCH" = 1 ]; then DISK_MB=6144 POOL_MB=64 VM_MB=3072; fi   # the benchmark makes pools of its own

log() { printf '[lvmguest %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "$*"; exit 2; }
T0=$(date +%s%N)

# ------------------------------------------------------------ prerequisites
missing=()
for c in qemu-system-x86_64:qemu-system-x86 lvm:lvm2 thin_check:thin-provisioning-tools qemu-img:qemu-utils apt-get:apt dpkg-deb:dpkg \
         ldd:libc-bin gzip:gzip timeout:coreutils; do
  command -v "${c%%:*}" >/dev/null 2>&1 || missing+=("${c#*:}")
done
command -v go >/dev/null 2>&1 || die "go is not on the PATH (Go 1.26 is needed to build the tests)"
[ ${#missing[@]} = 0 ] || die "missing host packages; install them with: apt-get install ${missing[*]}"
LVM_BIN=$(command -v lvm); QEMU_IMG=$(command -v qemu-img)
# thin_check and the other thin tools are links to one binary (pdata_tools).
PDATA_BIN=$(readlink -f "$(command -v thin_check)")

W=$(mktemp -d "${TMPDIR:-/tmp}/lvmguest.XXXXXX")
cleanup() {
  local rc=$?
  if [ $rc = 0 ] && [ "${KEEP:-}" != 1 ]; then rm -rf "$W"; else log "work directory kept: $W"; fi
}
trap cleanup EXIT
mkdir -p "$CACHE/debs" "$W/out"

# ------------------------------------------------------------ kernel, busybox
# The kernel is whatever linux-image-amd64 depends on now (6.1.0-NN-amd64 on
# Debian 12); a cached .deb is used when apt cannot say (no lists, offline).
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}' || true)
fetch() {  # $1 = package; downloads it into the cache unless a .deb is there
  ls "$CACHE/debs/$1"_*.deb >/dev/null 2>&1 && return 0
  log "downloading $1 into $CACHE/debs"
  (cd "$CACHE/debs" && apt-get -q download "$1" 2>&1 | { grep -v '^W: Download is performed unsandboxed' >&2 || true; }) ||
    die "cannot download $1 with apt-get (run apt-get update, or put its .deb in $CACHE/debs)"
  ls "$CACHE/debs/$1"_*.deb >/dev/null 2>&1 || die "apt-get download $1 left no .deb in $CACHE/debs"
}
if [ -n "$KPKG" ]; then
  fetch "$KPKG"
else
  KPKG=$(ls "$CACHE"/debs/linux-image-*-amd64_*.deb 2>/dev/null | sed 's|.*/||; s|_.*||' | sort -V | tail -n1)
  [ -n "$KPKG" ] || die "apt-cache knows no linux-image-amd64 and $CACHE/debs holds no kernel: run apt-get update"
fi
fetch busybox-static
KV=${KPKG#linux-image-}
KX=$CACHE/x/$KV
# Only vmlinuz and the modules the guest needs (~9 MB of the ~400 MB).
if [ ! -f "$KX/boot/vmlinuz-$KV" ]; then
  log "extracting vmlinuz-$KV and modules"
  rm -rf "$KX"; mkdir -p "$KX"
  dpkg-deb --fsys-tarfile "$CACHE/debs/${KPKG}"_*.deb |
    tar -x -C "$KX" --wildcards './boot/vmlinuz-*' '*/drivers/md/dm-mod.ko*' \
        '*/drivers/virtio/virtio*.ko*' '*/drivers/block/virtio_blk.ko*'
fi
# Thin pools: dm-thin-pool and what it needs, and dm-snapshot, whose target lvm
# looks for before it makes any snapshot (added to a cache made without them).
if [ ! -f "$KX/lib/modules/$KV/kernel/drivers/md/dm-snapshot.ko" ]; then
  log "extracting the thin pool modules of $KV"
  dpkg-deb --fsys-tarfile "$CACHE/debs/${KPKG}"_*.deb |
    tar -x -C "$KX" --wildcards '*/drivers/md/dm-thin-pool.ko*' '*/drivers/md/dm-bufio.ko*' \
        '*/drivers/md/dm-bio-prison.ko*' '*/drivers/md/persistent-data/dm-persistent-data.ko*' \
        '*/drivers/md/dm-snapshot.ko*' '*/kernel/lib/libcrc32c.ko*' '*/kernel/crypto/crc32c_generic.ko*'
fi
BBX=$CACHE/x/busybox
[ -x "$BBX/bin/busybox" ] || { rm -rf "$BBX"; dpkg-deb -x "$CACHE"/debs/busybox-static_*.deb "$BBX"; }
BB=$BBX/bin/busybox
VMLINUZ=$KX/boot/vmlinuz-$KV
MODDIR=$KX/lib/modules/$KV/kernel

# ------------------------------------------------------------ test binary
log "building the lvm backend tests (-tags lvmguest, static)"
(cd "$ROOT" && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go test -c -tags lvmguest -trimpath \
   -ldflags='-s -w' -o "$W/lvm.test" ./volume/lvm)

# ------------------------------------------------------------ images
# A raw disk with data in some 64 KiB blocks and holes elsewhere, ending off
# any MiB boundary, and its compressed qcow2: the guest writes the qcow2 into
# LVs and compares them with the raw file.
IMG_SIZE=$(( (20 << 20) + (100 << 10) + 512 ))
mkdir -p "$W/images"
truncate -s $IMG_SIZE "$W/images/ref.raw"
for blk in 0 1 5 16 17 18 40 77 100 150 199 255 256 257 300 320; do
  dd if=/dev/urandom of="$W/images/ref.raw" bs=64K seek=$blk count=1 conv=notrunc status=none
done
dd if=/dev/urandom of="$W/images/ref.raw" bs=512 seek=$(( IMG_SIZE/512 - 1 )) count=1 conv=notrunc status=none
"$QEMU_IMG" convert -q -f raw -O qcow2 -c "$W/images/ref.raw" "$W/images/image.qcow2"

# ------------------------------------------------------------ initramfs
log "assembling the initramfs"
R=$W/rootfs
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,root,etc/lvm,lib/modules,images}
cp "$BB" "$R/bin/busybox"
for a in $("$BB" --list); do [ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"; done
cp "$LVM_BIN" "$R/usr/sbin/lvm"
cp "$QEMU_IMG" "$R/usr/bin/qemu-img"
cp "$PDATA_BIN" "$R/usr/sbin/pdata_tools"
for t in thin_check thin_dump thin_repair thin_restore thin_ls thin_metadata_size; do ln -s pdata_tools "$R/usr/sbin/$t"; done
# Shared libraries, and the ELF interpreter ("/lib64/ld-linux-x86-64.so.2 (0x…)");
# mawk has no \s.
for lib in $(ldd "$LVM_BIN" "$QEMU_IMG" "$PDATA_BIN" | awk '$2=="=>" && $3 ~ /^\//{print $3} $1 ~ /^\// && $2 ~ /^[(]/{print $1}' | sort -u); do
  mkdir -p "$R$(dirname "$lib")"; cp -L "$lib" "$R$lib"
done
# Modules in dependency order (Debian 6.1: virtio and dm-mod are modules;
# no depmod needed). Compressed modules (.ko.xz) are not handled.
MODS="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci_legacy_dev
      drivers/virtio/virtio_pci drivers/block/virtio_blk drivers/md/dm-mod
      crypto/crc32c_generic lib/libcrc32c drivers/md/dm-bufio drivers/md/persistent-data/dm-persistent-data
      drivers/md/dm-bio-prison drivers/md/dm-thin-pool drivers/md/dm-snapshot"
INSMOD=""
for m in $MODS; do
  [ -f "$MODDIR/$m.ko" ] || die "kernel $KV has no $m.ko (compressed modules are not supported)"
  cp "$MODDIR/$m.ko" "$R/lib/modules/"
  INSMOD="$INSMOD ${m##*/}"
done
cp "$W/lvm.test" "$R/usr/bin/lvm.test"
cp "$W/images/ref.raw" "$W/images/image.qcow2" "$R/images/"

cat > "$R/etc/lvm/lvm.conf" <<'EOF'
# No udev, lvmlockd or dmeventd in the test VM; only the test disk is a PV.
devices {
  use_devicesfile = 0
  obtain_device_list_from_udev = 0
  external_device_info_source = "none"
  filter = [ "a|^/dev/vda$|", "r|.*|" ]
  md_component_detection = 0
  multipath_component_detection = 0
  fw_raid_component_detection = 0
}
activation { udev_sync = 0  udev_rules = 0  monitoring = 0 }
global { use_lvmlockd = 0  event_activation = 0  use_lvmpolld = 0 }
# Every command under TCG counts: no metadata backups in the throw-away VM.
backup { backup = 0  archive = 0 }
EOF

cat > "$R/init" <<EOF
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc; mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev; mount -t tmpfs tmpfs /run; mount -t tmpfs -o size=8g tmpfs /tmp   # a limit, not memory: JetStream (TestMain) wants ~736 MiB of room
mkdir -p /run/lock/lvm
ip link set lo up   # the package's TestMain starts an in-process NATS server on 127.0.0.1
verdict() { echo "LVMGUEST-RESULT: \$*"; sync; poweroff -f; }
echo "LVMGUEST-START uptime=\$(cut -d' ' -f1 /proc/uptime)"
for m in$INSMOD; do
  insmod /lib/modules/\$m.ko || verdict "FAIL insmod \$m"
done
i=0; while ! [ -b /dev/vda ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i+1)); done
[ -b /dev/vda ] || verdict "FAIL no virtio disk"
lvm pvcreate -q -y /dev/vda >/dev/null || verdict "FAIL pvcreate"
lvm vgcreate -q $VG /dev/vda >/dev/null || verdict "FAIL vgcreate"
# Full pools fail writes at once instead of queueing them for 60 s.
lvm lvcreate -q --type thin-pool -L ${POOL_MB}m -n thinpool $VG >/dev/null || verdict "FAIL thin pool"
lvm lvchange -q --errorwhenfull y $VG/thinpool >/dev/null || verdict "FAIL thin pool errorwhenfull"
echo "LVMGUEST-TESTS-BEGIN uptime=\$(cut -d' ' -f1 /proc/uptime)"
LVMGUEST_VG=$VG LVMGUEST_THINPOOL=$VG/thinpool LVMGUEST_BENCH=$BENCH LVMGUEST_IMAGES=/images lvm.test -test.v -test.count=1 -test.timeout=${TEST_TIMEOUT}s -test.run '$RUN' 2>&1
rc=\$?
echo "LVMGUEST-TESTS-END rc=\$rc uptime=\$(cut -d' ' -f1 /proc/uptime)"
echo "LVMGUEST-LVS \$(lvm lvs --noheadings -o lv_name $VG | tr -s ' \n' ' ')"
[ \$rc = 0 ] && verdict PASS
verdict "FAIL tests exited \$rc"
EOF
chmod +x "$R/init"
(cd "$R" && find . | "$BB" cpio -o -H newc 2>/dev/null | gzip -1 > "$W/initramfs.gz")
truncate -s ${DISK_MB}M "$W/disk.img"

# ------------------------------------------------------------ boot
# auto: KVM only with real VT-x/AMD-V visible (a /dev/kvm without them, as in
# some sandboxes, starts QEMU but crawls); KVM that does not reach /init in
# KVM_START_TIMEOUT seconds falls back to TCG.
kvm_usable() {
  [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo &&
    echo quit | qemu-system-x86_64 -M none -accel kvm -display none -monitor stdio >/dev/null 2>&1
}
if [ "$ACCEL" = auto ]; then if kvm_usable; then ACCEL=kvm; else ACCEL=tcg; fi; fi
case $ACCEL in kvm|tcg) ;; *) die "ACCEL must be auto, kvm or tcg, not $ACCEL" ;; esac

boot() {  # $1 = kvm|tcg; sets BOOT_S; true when a verdict was printed
  local acc=$1 con=$W/out/console-$1.log qp t0 t1 started=0 rc=0
  case $acc in
    kvm) set -- -accel kvm -cpu "${KVM_CPU:-host}" ;;
    tcg) set -- -accel tcg -cpu max ;;
  esac
  log "booting the guest ($acc, timeout ${TIMEOUT}s)"
  t0=$(date +%s%N)
  timeout "$TIMEOUT" qemu-system-x86_64 "$@" -machine q35 -smp 2 -m $VM_MB \
    -nodefaults -no-reboot -display none -monitor none -serial stdio \
    -kernel "$VMLINUZ" -initrd "$W/initramfs.gz" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1" \
    -drive file="$W/disk.img",format=raw,if=virtio,cache=writeback \
    < /dev/null > "$con" 2>&1 &
  qp=$!
  if [ "$acc" = kvm ]; then
    for _ in $(seq $((KVM_START_TIMEOUT * 10))); do
      grep -q LVMGUEST-START "$con" && { started=1; break; }
      kill -0 $qp 2>/dev/null || break; sleep 0.1
    done
    [ $started = 1 ] || kill $qp 2>/dev/null || true
  fi
  wait $qp || rc=$?
  t1=$(date +%s%N); BOOT_S=$(awk "BEGIN{printf \"%.1f\", ($t1-$t0)/1e9}")
  [ $rc = 124 ] && log "the guest did not finish within TIMEOUT=${TIMEOUT}s"
  log "qemu ($acc) exited rc=$rc after ${BOOT_S}s"
  grep -q '^LVMGUEST-RESULT: ' <(tr -d '\r' < "$con")
}
if ! boot "$ACCEL" && [ "$ACCEL" = kvm ]; then
  ACCEL=tcg; boot tcg || true
fi
CON=$W/out/console-$ACCEL.log

# ------------------------------------------------------------ verdict
tr -d '\r' < "$CON" | sed -n '/^LVMGUEST-TESTS-BEGIN/,/^LVMGUEST-TESTS-END/p'
tr -d '\r' < "$CON" | grep -E '^LVMGUEST-(LVS|RESULT)' || true
TOTAL_S=$(awk "BEGIN{printf \"%.1f\", ($(date +%s%N)-$T0)/1e9}")
if tr -d '\r' < "$CON" | grep -qx 'LVMGUEST-RESULT: PASS'; then
  log "PASS (accel=$ACCEL, VM ${BOOT_S}s, total ${TOTAL_S}s)"
  exit 0
fi
grep -q '^LVMGUEST-TESTS-BEGIN' <(tr -d '\r' < "$CON") || { log "console log:"; tr -d '\r' < "$CON" | tail -n 50 >&2; }
log "FAIL (accel=$ACCEL, VM ${BOOT_S}s, total ${TOTAL_S}s); console log: $CON"
exit 1
