package convert

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// garbageFile makes a file of size bytes full of a non-zero pattern.
func garbageFile(t *testing.T, path string, size int64) {
	t.Helper()
	chunk := bytes.Repeat([]byte{0xAB, 0xCD, 0xEF, 0x01}, 1<<18)
	f, err := os.Create(path)
	require.NoError(t, err)
	for off := int64(0); off < size; off += int64(len(chunk)) {
		_, err := f.Write(chunk[:min(int64(len(chunk)), size-off)])
		require.NoError(t, err)
	}
	require.NoError(t, f.Close())
}

// requireImageThenZeros checks dev holds ref's bytes followed by zeros to size.
func requireImageThenZeros(t *testing.T, dev, ref string, size int64) {
	t.Helper()
	want, err := os.ReadFile(ref)
	require.NoError(t, err)
	f, err := os.Open(dev)
	require.NoError(t, err)
	defer f.Close()
	got := make([]byte, size)
	_, err = io.ReadFull(f, got)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got[:len(want)]), "device differs from the image")
	for i, b := range got[len(want):] {
		if b != 0 {
			t.Fatalf("byte %d past the image's end is %#x, want 0", len(want)+i, b)
		}
	}
}

// TestConvertIntoLoopDevice writes images onto a real block device (a loop
// device over a file full of garbage), as onto an LV.
func TestConvertIntoLoopDevice(t *testing.T) {
	t.Parallel()
	const size = 32 << 20
	for _, format := range []string{"qcow2", "raw"} {
		t.Run(format, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			qcow2, _ := testenv.QCOW2Image(t, dir, 12<<20+512, 21)
			ref := filepath.Join(dir, "ref.raw")
			out, err := exec.Command(testenv.QemuImg(t), "convert", "-f", "qcow2", "-O", "raw", qcow2, ref).CombinedOutput()
			require.NoError(t, err, "%s", out)
			backing := filepath.Join(dir, "disk")
			garbageFile(t, backing, size)
			dev := testenv.LoopDevice(t, backing)

			src := qcow2
			if format == "raw" {
				src = ref
			}
			img, err := image.Inspect(src, format)
			require.NoError(t, err)
			var last int64
			err = QemuImg{}.Convert(t.Context(), img, src, volume.Volume{Name: "loop", Path: dev, Size: size}, func(stage string, done, total int64) {
				require.Equal(t, stages.Populate, stage)
				require.GreaterOrEqual(t, done, last)
				last = done
			})
			require.NoError(t, err)
			require.Equal(t, img.VirtualSize, last)
			requireImageThenZeros(t, dev, ref, size)
		})
	}
}

// TestConvertRefusesSymlinkToFile: only a symlink to a block device (as
// /dev/<vg>/<lv>) is followed.
func TestConvertRefusesSymlinkToFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	qcow2, _ := testenv.QCOW2Image(t, dir, 1<<20, 22)
	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	outside := filepath.Join(dir, "outside")
	garbageFile(t, outside, 4<<20)
	link := filepath.Join(dir, "vol")
	require.NoError(t, os.Symlink(outside, link))
	err = QemuImg{}.Convert(t.Context(), img, qcow2, volume.Volume{Name: "vol", Path: link, Size: 4 << 20}, nil)
	require.ErrorContains(t, err, "is a symlink to "+outside+", not to a block device; refusing to follow it")
	data, err := os.ReadFile(outside)
	require.NoError(t, err)
	require.Equal(t, byte(0xAB), data[0], "nothing written through the symlink")
}

// TestConvertRawIntoOddSizedFile: with O_DIRECT on a file, a last chunk that
// padding would carry past the end of the volume is written without it, and
// the file keeps its size.
func TestConvertRawIntoOddSizedFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ref := filepath.Join(dir, "ref.raw")
	require.NoError(t, testenv.RawImage(ref, 3<<20+512, 23))
	data, err := os.ReadFile(ref)
	require.NoError(t, err)
	for i := len(data) - 512; i < len(data); i++ { // the last sector holds data
		data[i] = byte(i)
	}
	require.NoError(t, os.WriteFile(ref, data, 0o644))
	vol := filepath.Join(dir, "vol")
	const size = 3<<20 + 1000
	garbageFile(t, vol, size)
	img, err := image.Inspect(ref, "raw")
	require.NoError(t, err)
	require.NoError(t, QemuImg{}.Convert(t.Context(), img, ref, volume.Volume{Name: "odd", Path: vol, Size: size}, nil))
	requireImageThenZeros(t, vol, ref, size)
	st, err := os.Stat(vol)
	require.NoError(t, err)
	require.EqualValues(t, size, st.Size())
}
