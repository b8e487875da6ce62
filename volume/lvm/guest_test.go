//go:build lvmguest

// The tests that need real LVM (device-mapper) run inside the small guest
// VM that tests/lvmguest/run.sh boots: its init script makes a volume group
// on a virtio disk and runs this package's test binary, built with -tags
// lvmguest, with -test.run '^TestLVMGuest'. They are the conformance suite
// (conformance_guest_test.go), the thick LVs' own tests
// (thick_guest_test.go) and the thin pool's (thin_guest_test.go); this file
// has what they share. Each test uses LV names of its own, so they share
// the volume group and run in parallel.
//
// Environment: LVMGUEST_VG names the volume group (the tests skip without
// it); LVMGUEST_IMAGES is a directory with image.qcow2 and ref.raw (the
// qcow2's disk, byte for byte), made on the host; without it the images
// are made here with qemu-img.

package lvm

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

const guestLVSize = 32 << 20

// guestBackend is the backend on the guest's volume group, or skips.
func guestBackend(t *testing.T) *Backend {
	t.Helper()
	vg := os.Getenv("LVMGUEST_VG")
	if vg == "" {
		t.Skip("LVMGUEST_VG is not set: these tests run inside the VM of tests/lvmguest/run.sh")
	}
	b, err := New(vg)
	require.NoError(t, err)
	require.NoError(t, b.CheckVolumeGroup(t.Context()))
	return b
}

// guestImages returns a qcow2 image and its disk as a raw file.
func guestImages(t *testing.T) (qcow2, raw string) {
	t.Helper()
	if dir := os.Getenv("LVMGUEST_IMAGES"); dir != "" {
		return filepath.Join(dir, "image.qcow2"), filepath.Join(dir, "ref.raw")
	}
	return testenv.QCOW2Image(t, t.TempDir(), 12<<20+512, 31)
}

// createLV makes LV name and removes it when the test ends.
func createLV(t *testing.T, b *Backend, name string, size int64) volume.Volume {
	t.Helper()
	vol, err := b.Create(t.Context(), name, size)
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := b.Delete(context.Background(), name); err != nil {
			t.Errorf("clean up %s: %v", name, err)
		}
	})
	return vol
}

// vgLVs lists the names of every LV in the volume group, as lvs reports them.
func vgLVs(t *testing.T, b *Backend) map[string]lvInfo {
	t.Helper()
	out, err := b.run(t.Context(), "lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "--binary", "-o", lvFields, b.VG)
	require.NoError(t, err)
	lvs, err := parseLVs(out)
	require.NoError(t, err)
	m := make(map[string]lvInfo, len(lvs))
	for _, lv := range lvs {
		m[lv.Name] = lv
	}
	return m
}

// fillDevice writes b over the first size bytes of the device and flushes.
func fillDevice(t *testing.T, path string, size int64, b byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	defer f.Close()
	chunk := bytes.Repeat([]byte{b}, 1<<20)
	for off := int64(0); off < size; off += int64(len(chunk)) {
		_, err := f.WriteAt(chunk[:min(int64(len(chunk)), size-off)], off)
		require.NoError(t, err)
	}
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
}

// readDevice reads the device's first size bytes from the disk, not from
// the page cache.
func readDevice(t *testing.T, path string, size int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, f.Sync())
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKFLSBUF, 0)
	require.Zero(t, errno, "BLKFLSBUF %s", path)
	got := make([]byte, size)
	_, err = io.ReadFull(f, got)
	require.NoError(t, err)
	return got
}

// requireLVHolds checks that the device reads as ref's bytes followed by
// zeros to size.
func requireLVHolds(t *testing.T, path, ref string, size int64) {
	t.Helper()
	want, err := os.ReadFile(ref)
	require.NoError(t, err)
	got := readDevice(t, path, size)
	for off := 0; off < len(want); off += 64 << 10 {
		end := min(off+64<<10, len(want))
		if !bytes.Equal(want[off:end], got[off:end]) {
			t.Fatalf("%s differs from the image in [%d,%d)", path, off, end)
		}
	}
	for i, c := range got[len(want):] {
		if c != 0 {
			t.Fatalf("%s: byte %d, past the image's %d bytes, is %#x, not 0", path, len(want)+i, len(want), c)
		}
	}
}

// inactiveLV makes LV name of one extent and deactivates it; it is
// removed (inactive) when the test ends.
func inactiveLV(t *testing.T, b *Backend, name string) {
	t.Helper()
	vg, err := b.vg(t.Context())
	require.NoError(t, err)
	createLV(t, b, name, vg.ExtentSize)
	_, err = b.run(t.Context(), "lvchange", "--activate", "n", b.VG+"/"+name)
	require.NoError(t, err)
}
