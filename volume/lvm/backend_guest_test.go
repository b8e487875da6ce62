//go:build lvmguest

// These tests need real LVM (device-mapper), so they run inside the small
// guest VM that tests/lvmguest/run.sh boots: its init script makes a volume
// group on a virtio disk and runs this package's test binary, built with
// -tags lvmguest, with -test.run '^TestLVMGuest'. Each test uses LV names
// of its own, so they share the volume group and run in parallel.
//
// Environment: LVMGUEST_VG names the volume group (the tests skip without
// it); LVMGUEST_IMAGES is a directory with image.qcow2 and ref.raw (the
// qcow2's disk, byte for byte), made on the host; without it the images
// are made here with qemu-img.

package lvm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
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

// segments is where LV name lies on its PVs (seg_pe_ranges).
func segments(t *testing.T, b *Backend, name string) string {
	t.Helper()
	out, err := b.run(t.Context(), "lvs", "--reportformat", "json", "-o", "seg_pe_ranges", b.VG+"/"+name)
	require.NoError(t, err)
	var rep struct {
		Report []struct {
			LV []struct {
				Ranges string `json:"seg_pe_ranges"`
			} `json:"lv"`
		} `json:"report"`
	}
	require.NoError(t, json.Unmarshal(out, &rep), "%s", out)
	var r []string
	for _, x := range rep.Report {
		for _, lv := range x.LV {
			r = append(r, lv.Ranges)
		}
	}
	require.NotEmpty(t, r)
	return strings.Join(r, ",")
}

// deviceSize is a block device's size, from seeking to its end.
func deviceSize(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	require.NoError(t, err)
	return n
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

func TestLVMGuestCreate(t *testing.T) {
	t.Parallel()
	b := guestBackend(t)
	ctx := t.Context()
	vol := createLV(t, b, "lvg-create", guestLVSize)
	require.Equal(t, volume.Volume{Name: "lvg-create", Path: "/dev/" + b.VG + "/lvg-create", Size: guestLVSize}, vol)

	lv, ok := vgLVs(t, b)["lvg-create"]
	require.True(t, ok, "lvs lists the new LV")
	require.Equal(t, int64(guestLVSize), lv.Size)
	require.True(t, lv.Active)
	require.False(t, lv.Open)

	// /dev/<vg>/<lv> is a symlink to the device-mapper node.
	st, err := os.Lstat(vol.Path)
	require.NoError(t, err)
	require.NotZero(t, st.Mode()&os.ModeSymlink, "%s is a symlink", vol.Path)
	real, err := filepath.EvalSymlinks(vol.Path)
	require.NoError(t, err)
	st, err = os.Stat(real)
	require.NoError(t, err)
	require.True(t, fsutil.IsBlockDevice(st), "%s is a block device", real)
	require.Equal(t, int64(guestLVSize), deviceSize(t, vol.Path))

	got, ok, err := b.Lookup(ctx, "lvg-create")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, vol, got)
	require.NoError(t, b.CheckNotInUse(ctx, vol))

	_, err = b.Create(ctx, "lvg-create", guestLVSize)
	require.ErrorContains(t, err, "create logical volume "+b.VG+"/lvg-create: it already exists")

	// The reports the host-side unit tests parse, for reference.
	out, err := b.run(ctx, lvsArgs(b.VG, "lvg-create")...)
	require.NoError(t, err)
	t.Logf("lvs report:\n%s", out)
	out, err = b.run(ctx, vgsArgs(b.VG)...)
	require.NoError(t, err)
	t.Logf("vgs report:\n%s", out)
}

func TestLVMGuestLookupAbsent(t *testing.T) {
	t.Parallel()
	b := guestBackend(t)
	_, ok, err := b.Lookup(t.Context(), "lvg-absent")
	require.NoError(t, err)
	require.False(t, ok)
	require.NoError(t, b.Delete(t.Context(), "lvg-absent"), "a missing LV is not an error to delete")
	require.ErrorContains(t, b.CheckNotInUse(t.Context(), volume.Volume{Name: "lvg-absent"}), "no longer exists")
}

func TestLVMGuestMissingVG(t *testing.T) {
	t.Parallel()
	guestBackend(t)
	b, err := New("lvg-no-such-vg")
	require.NoError(t, err)
	err = b.CheckVolumeGroup(t.Context())
	require.ErrorContains(t, err, `Volume group "lvg-no-such-vg" not found`, "lvm's stderr is in the error")
	_, _, err = b.Lookup(t.Context(), "x")
	require.ErrorContains(t, err, "look up logical volume lvg-no-such-vg/x")
}

func TestLVMGuestReuseSize(t *testing.T) {
	t.Parallel()
	b := guestBackend(t)
	createLV(t, b, "lvg-reuse", guestLVSize)
	vol, ok, err := b.Lookup(t.Context(), "lvg-reuse")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, int64(guestLVSize), vol.Size)
	require.NoError(t, volume.CheckReuse(vol, guestLVSize))
	require.NoError(t, volume.CheckReuse(vol, guestLVSize+guestLVSize/25), "within 5%")
	require.ErrorContains(t, volume.CheckReuse(vol, 2*guestLVSize), "outside the ±5% a reused volume may differ")
	require.ErrorContains(t, volume.CheckReuse(vol, guestLVSize/2), "outside the ±5% a reused volume may differ")
}

func TestLVMGuestOpenLVRefused(t *testing.T) {
	t.Parallel()
	b := guestBackend(t)
	ctx := t.Context()
	vol, err := b.Create(ctx, "lvg-open", guestLVSize)
	require.NoError(t, err)

	f, err := os.Open(vol.Path) // as a running VM holds its disk
	require.NoError(t, err)
	err = b.CheckNotInUse(ctx, vol)
	require.EqualError(t, err, "logical volume "+b.VG+"/lvg-open is open (a running VM may be using it); refusing to overwrite it")
	var inUse *InUseError
	require.ErrorAs(t, err, &inUse)
	require.True(t, vgLVs(t, b)["lvg-open"].Open)

	err = b.Delete(ctx, "lvg-open")
	require.EqualError(t, err, "logical volume "+b.VG+"/lvg-open is open (a running VM may be using it); refusing to remove it")
	_, ok, err := b.Lookup(ctx, "lvg-open")
	require.NoError(t, err)
	require.True(t, ok, "the open LV is still there")

	require.NoError(t, f.Close())
	require.NoError(t, b.CheckNotInUse(ctx, vol))
	require.NoError(t, b.Delete(ctx, "lvg-open"))
	_, ok, err = b.Lookup(ctx, "lvg-open")
	require.NoError(t, err)
	require.False(t, ok)
}

func TestLVMGuestNoSpace(t *testing.T) {
	t.Parallel()
	b := guestBackend(t)
	ctx := t.Context()
	vg, err := b.vg(ctx)
	require.NoError(t, err)
	big := (vg.Size/vg.ExtentSize + 1) * vg.ExtentSize
	_, err = b.Create(ctx, "lvg-big", big)
	require.Error(t, err)
	require.Regexp(t, fmt.Sprintf(`^volume group %q has \d+ bytes free; volume "lvg-big" needs %d$`, b.VG, big), err.Error())
	_, ok, err := b.Lookup(ctx, "lvg-big")
	require.NoError(t, err)
	require.False(t, ok, "nothing was created")

	_, err = b.Create(ctx, "lvg-odd", guestLVSize+512)
	require.ErrorContains(t, err, fmt.Sprintf("is not a multiple of volume group %q's extent size (%d bytes)", b.VG, vg.ExtentSize))
	_, ok, err = b.Lookup(ctx, "lvg-odd")
	require.NoError(t, err)
	require.False(t, ok, "nothing was created")
}

func TestLVMGuestInvalidNames(t *testing.T) {
	t.Parallel()
	b := guestBackend(t)
	ctx := t.Context()
	for _, name := range []string{"", "-lvg", "..", "lvg/x", "lvg x", "snapshot-lvg", "pvmove0", "lvg_tmeta", "lvg+1", strings.Repeat("a", 128)} {
		_, err := b.Create(ctx, name, guestLVSize)
		require.ErrorContains(t, err, "logical volume name", "Create(%q)", name)
		_, _, err = b.Lookup(ctx, name)
		require.Error(t, err, "Lookup(%q)", name)
		require.Error(t, b.Delete(ctx, name), "Delete(%q)", name)
		require.Error(t, b.CheckNotInUse(ctx, volume.Volume{Name: name}), "CheckNotInUse(%q)", name)
	}
	lvs := vgLVs(t, b)
	for _, name := range []string{"-lvg", "snapshot-lvg", "pvmove0", "lvg_tmeta", "lvg+1"} {
		require.NotContains(t, lvs, name, "nothing was created")
	}
}

func TestLVMGuestDeleteRemovesOnlyThatLV(t *testing.T) {
	t.Parallel()
	b := guestBackend(t)
	ctx := t.Context()
	createLV(t, b, "lvg-keep.1", guestLVSize)
	createLV(t, b, "lvg-keep_2", guestLVSize)
	_, err := b.Create(ctx, "lvg-rollback", guestLVSize)
	require.NoError(t, err)
	require.NoError(t, b.Delete(ctx, "lvg-rollback"))
	lvs := vgLVs(t, b)
	require.NotContains(t, lvs, "lvg-rollback")
	require.Contains(t, lvs, "lvg-keep.1")
	require.Contains(t, lvs, "lvg-keep_2")
	require.NoError(t, b.Delete(ctx, "lvg-rollback"), "deleting it again is not an error")
}

func TestLVMGuestInactiveLV(t *testing.T) {
	t.Parallel()
	b := guestBackend(t)
	ctx := t.Context()
	createLV(t, b, "lvg-inactive", guestLVSize)
	_, err := b.run(ctx, "lvchange", "--activate", "n", b.VG+"/lvg-inactive")
	require.NoError(t, err)
	_, _, err = b.Lookup(ctx, "lvg-inactive")
	require.ErrorContains(t, err, "exists but is not active")
	require.NoError(t, b.CheckNotInUse(ctx, volume.Volume{Name: "lvg-inactive"}))
	// Cleanup removes it while inactive.
}

// TestLVMGuestConvert writes images into LVs full of garbage through both
// converters the worker has (native, the default, and qemu-img), with the
// Volume as Create returns it (the /dev/<vg>/<lv> symlink).
func TestLVMGuestConvert(t *testing.T) {
	t.Parallel()
	b := guestBackend(t)
	qcow2, raw := guestImages(t)
	converters := map[string]convert.Converter{"native": convert.Native{}, "qemu-img": convert.QemuImg{}}
	for _, name := range []string{"native-qcow2", "native-raw", "qemu-img-qcow2", "qemu-img-raw"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			vol := createLV(t, b, "lvg-convert-"+name, guestLVSize)
			fillDevice(t, vol.Path, vol.Size, 0xAB)
			format := name[strings.LastIndex(name, "-")+1:]
			conv := converters[name[:strings.LastIndex(name, "-")]]
			src := map[string]string{"qcow2": qcow2, "raw": raw}[format]
			img, err := image.Inspect(src, format)
			require.NoError(t, err)
			var last int64
			err = conv.Convert(t.Context(), img, src, vol, func(stage string, done, total int64) {
				require.Equal(t, stages.Populate, stage)
				require.GreaterOrEqual(t, done, last, "progress never goes backwards")
				last = done
			})
			require.NoError(t, err)
			require.Equal(t, img.VirtualSize, last)
			requireLVHolds(t, vol.Path, raw, vol.Size)
			require.NoError(t, b.CheckNotInUse(t.Context(), vol), "the converter closed the LV")
		})
	}
}

// TestLVMGuestNewLVOverGarbage shows that a new thick LV holds what an
// earlier LV on the same extents left, and that the converter still leaves
// zeros after the image. It does not run in parallel, so no other test takes
// the extents the first LV frees.
func TestLVMGuestNewLVOverGarbage(t *testing.T) {
	b := guestBackend(t)
	ctx := t.Context()
	qcow2, raw := guestImages(t)

	old, err := b.Create(ctx, "lvg-old", guestLVSize)
	require.NoError(t, err)
	where := segments(t, b, "lvg-old")
	fillDevice(t, old.Path, old.Size, 0xAB)
	require.NoError(t, b.Delete(ctx, "lvg-old"))

	vol := createLV(t, b, "lvg-new", guestLVSize)
	require.Equal(t, where, segments(t, b, "lvg-new"), "the new LV has the old one's extents")
	before := readDevice(t, vol.Path, vol.Size)
	require.Equal(t, bytes.Repeat([]byte{0xAB}, len(before)), before, "a new LV reads as what the old one left")

	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	require.NoError(t, convert.QemuImg{}.Convert(ctx, img, qcow2, vol, nil))
	requireLVHolds(t, vol.Path, raw, vol.Size)
}

// TestLVMGuestConvertRefusesTooSmall: an image larger than the LV is
// refused before the LV is touched.
func TestLVMGuestConvertRefusesTooSmall(t *testing.T) {
	t.Parallel()
	b := guestBackend(t)
	qcow2, _ := guestImages(t)
	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	vg, err := b.vg(t.Context())
	require.NoError(t, err)
	vol := createLV(t, b, "lvg-small", vg.ExtentSize)
	require.Less(t, vol.Size, img.VirtualSize, "the test image must be larger than one extent")
	fillDevice(t, vol.Path, vol.Size, 0xAB)
	err = convert.QemuImg{}.Convert(t.Context(), img, qcow2, vol, nil)
	require.ErrorContains(t, err, "larger than the volume's")
	got := readDevice(t, vol.Path, vol.Size)
	require.Equal(t, bytes.Repeat([]byte{0xAB}, len(got)), got, "the LV was not touched")
}
