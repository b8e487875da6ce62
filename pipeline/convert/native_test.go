package convert

import (
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// nativeConvert runs Native.Convert on an inspected image and checks its
// progress: monotonic, always out of the virtual size, ending at it.
func nativeConvert(t *testing.T, n Native, src, format string, vol volume.Volume) image.Image {
	t.Helper()
	img, err := image.Inspect(src, format)
	require.NoError(t, err)
	var calls int
	var last int64
	err = n.Convert(t.Context(), img, src, vol, func(stage string, done, total int64) {
		require.Equal(t, stages.Populate, stage)
		require.Equal(t, img.VirtualSize, total)
		require.GreaterOrEqual(t, done, last, "progress went back")
		require.LessOrEqual(t, done, total)
		last = done
		calls++
	})
	require.NoError(t, err)
	require.Positive(t, calls)
	require.Equal(t, img.VirtualSize, last)
	return img
}

// TestNativeZlib: qemu-img's default (zlib) compressed qcow2 into a new
// file, a file of garbage larger than the disk, and a loop device full of
// garbage.
func TestNativeZlib(t *testing.T) {
	t.Parallel()
	const virt = 12 << 20
	dir := t.TempDir()
	qcow2, _ := testenv.QCOW2Image(t, dir, virt, 31)
	ref := testenv.QemuRawReference(t, qcow2)

	t.Run("new-file", func(t *testing.T) {
		t.Parallel()
		vol := testenv.ZeroedVolume(t, t.TempDir(), virt)
		nativeConvert(t, Native{}, qcow2, "qcow2", vol)
		testenv.RequireVolumeIs(t, vol.Path, vol.Size, ref)
	})
	t.Run("garbage-file", func(t *testing.T) {
		t.Parallel()
		vol := testenv.GarbageVolume(t, t.TempDir(), 20<<20+4096)
		nativeConvert(t, Native{Workers: 3}, qcow2, "qcow2", vol)
		testenv.RequireVolumeIs(t, vol.Path, vol.Size, ref)
	})
	t.Run("loop-device", func(t *testing.T) {
		t.Parallel()
		const size = 32 << 20
		backing := filepath.Join(t.TempDir(), "disk")
		garbageFile(t, backing, size)
		dev := testenv.LoopDevice(t, backing)
		nativeConvert(t, Native{}, qcow2, "qcow2", volume.Volume{Name: "loop", Path: dev, Size: size})
		requireImageThenZeros(t, dev, ref, size)
	})
}

// TestNativeFormats: zstd compression, no compression, a virtual size that
// is not a multiple of the cluster size, small clusters (smaller than the
// O_DIRECT alignment), a one-worker run.
func TestNativeFormats(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		size    int64
		opts    []string
		workers int
	}{
		{"zstd", 12 << 20, []string{"-c", "-o", "compression_type=zstd"}, 0},
		{"zstd-2M-clusters", 9 << 20, []string{"-c", "-o", "compression_type=zstd,cluster_size=2M"}, 0},
		{"uncompressed", 12 << 20, nil, 0},
		{"odd-size-zlib", 5<<20 + 3*512, []string{"-c"}, 0},
		{"odd-size-uncompressed", 5<<20 + 7*512, nil, 0},
		{"512-byte-clusters", 3<<20 + 512, []string{"-c", "-o", "cluster_size=512"}, 0},
		{"1k-clusters-uncompressed", 3<<20 + 1024, []string{"-o", "cluster_size=1024"}, 0},
		{"one-worker", 6 << 20, []string{"-c"}, 1},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			raw := filepath.Join(dir, "disk.raw")
			require.NoError(t, testenv.RawImage(raw, tc.size, uint64(40+i)))
			qcow2 := filepath.Join(dir, "disk.qcow2")
			testenv.RunQemuImg(t, append(append([]string{"convert", "-f", "raw", "-O", "qcow2"}, tc.opts...), raw, qcow2)...)
			ref := testenv.QemuRawReference(t, qcow2)

			// A volume file whose size is not a multiple of 4096 either,
			// full of garbage.
			vol := testenv.GarbageVolume(t, dir, tc.size+3<<20+1000)
			img := nativeConvert(t, Native{Workers: tc.workers}, qcow2, "qcow2", vol)
			require.Equal(t, tc.size, img.VirtualSize)
			testenv.RequireVolumeIs(t, vol.Path, vol.Size, ref)
			st, err := os.Stat(vol.Path)
			require.NoError(t, err)
			require.Equal(t, vol.Size, st.Size())
		})
	}
}

// TestNativeRaw: raw images take QemuImg's Go copy.
func TestNativeRaw(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	require.NoError(t, testenv.RawImage(raw, 5<<20+4096, 50))
	vol := testenv.GarbageVolume(t, dir, 9<<20)
	nativeConvert(t, Native{}, raw, "raw", vol)
	testenv.RequireVolumeIs(t, vol.Path, vol.Size, raw)
}

// TestNativeCancel: cancelling mid-way returns the context's error at once.
func TestNativeCancel(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	qcow2, _ := testenv.QCOW2Image(t, dir, 16<<20, 51)
	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	vol := testenv.GarbageVolume(t, dir, 16<<20)

	ctx, cancel := context.WithCancel(t.Context())
	started := make(chan struct{})
	var once bool
	errc := make(chan error, 1)
	go func() {
		// 1 MiB/s: the 16 MiB disk would take seconds.
		errc <- Native{RateLimit: 1 << 20}.Convert(ctx, img, qcow2, vol, func(_ string, done, _ int64) {
			if done > 0 && !once {
				once = true
				close(started)
			}
		})
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("no progress")
	}
	cancel()
	t0 := time.Now()
	select {
	case err := <-errc:
		require.ErrorIs(t, err, context.Canceled)
		require.Less(t, time.Since(t0), time.Second)
	case <-time.After(5 * time.Second):
		t.Fatal("Convert did not return after cancel")
	}
}

// TestNativeRefusesBackingFile: an image with a backing file never reaches
// go-qcow2reader, even when the caller skipped Inspect; the backing file is
// a FIFO, which anything opening it would block on.
func TestNativeRefusesBackingFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	require.NoError(t, testenv.RawImage(base, 4<<20, 52))
	overlay := filepath.Join(dir, "overlay.qcow2")
	testenv.RunQemuImg(t, "create", "-f", "qcow2", "-b", base, "-F", "raw", overlay)
	require.NoError(t, os.Remove(base))
	require.NoError(t, syscall.Mkfifo(base, 0o600))

	_, err := image.Inspect(overlay, "qcow2")
	require.ErrorContains(t, err, "backing file")
	vol := testenv.GarbageVolume(t, dir, 4<<20)
	before, err := os.ReadFile(vol.Path)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		done <- Native{}.Convert(t.Context(), image.Image{Format: "qcow2", VirtualSize: 4 << 20}, overlay, vol, nil)
	}()
	select {
	case err := <-done:
		require.ErrorContains(t, err, "backing file")
	case <-time.After(10 * time.Second):
		t.Fatal("Convert blocked: something opened the backing FIFO")
	}
	after, err := os.ReadFile(vol.Path)
	require.NoError(t, err)
	require.Equal(t, before, after, "the volume was touched")
}

// TestNativeRefusesBadHeaders: an external data file, a header changed since
// Inspect, an L1 table larger than qemu allows.
func TestNativeRefusesBadHeaders(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()

	dataImg := filepath.Join(dir, "data.qcow2")
	testenv.RunQemuImg(t, "create", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "data.raw"), dataImg, "4M")
	vol := testenv.GarbageVolume(t, dir, 4<<20)
	err := Native{}.Convert(t.Context(), image.Image{Format: "qcow2", VirtualSize: 4 << 20}, dataImg, vol, nil)
	require.ErrorContains(t, err, "external data file")

	qcow2, _ := testenv.QCOW2Image(t, dir, 4<<20, 53)
	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	err = Native{}.Convert(t.Context(), image.Image{Format: "qcow2", VirtualSize: 8 << 20}, qcow2, volume.Volume{Name: "v", Path: vol.Path, Size: vol.Size * 2}, nil)
	require.Error(t, err)

	f, err := os.OpenFile(qcow2, os.O_RDWR, 0)
	require.NoError(t, err)
	var l1 [4]byte
	binary.BigEndian.PutUint32(l1[:], 1<<30)
	_, err = f.WriteAt(l1[:], 36)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	err = Native{}.Convert(t.Context(), img, qcow2, vol, nil)
	require.ErrorContains(t, err, "L1 table has")
}

// TestNativeZeroClusters: clusters qemu marks as reading zeros (zero flag,
// discarded) over data must read as zeros on a volume full of garbage.
func TestNativeZeroClusters(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	require.NoError(t, testenv.RawImage(raw, 8<<20, 54))
	qcow2 := filepath.Join(dir, "disk.qcow2")
	testenv.RunQemuImg(t, "convert", "-f", "raw", "-O", "qcow2", raw, qcow2)
	out, err := exec.Command("qemu-io", "-f", "qcow2",
		"-c", "write -P 0x5a 0 8M", "-c", "write -z 1M 2M", "-c", "write -z -u 4M 64k", "-c", "discard 6M 1M", qcow2).CombinedOutput()
	if err != nil {
		testenv.Missing(t, "qemu-io", "apt-get install qemu-utils: "+string(out))
	}
	ref := testenv.QemuRawReference(t, qcow2)
	vol := testenv.GarbageVolume(t, dir, 10<<20)
	nativeConvert(t, Native{}, qcow2, "qcow2", vol)
	testenv.RequireVolumeIs(t, vol.Path, vol.Size, ref)
}

// TestNativeZlibDecompressors: every zlib decompressor built in converts
// byte-exact.
func TestNativeZlibDecompressors(t *testing.T) {
	// Not parallel: the decompressor is process-wide.
	dir := t.TempDir()
	qcow2, _ := testenv.QCOW2Image(t, dir, 6<<20, 32)
	ref := testenv.QemuRawReference(t, qcow2)
	inUse := ZlibDecompressor()
	t.Cleanup(func() { require.NoError(t, SetZlibDecompressor(inUse)) })
	names := ZlibDecompressors()
	require.Equal(t, inUse, names[0])
	require.Contains(t, names, "compress/flate")
	for _, name := range names {
		require.NoError(t, SetZlibDecompressor(name))
		vol := testenv.ZeroedVolume(t, t.TempDir(), 6<<20)
		nativeConvert(t, Native{}, qcow2, "qcow2", vol)
		testenv.RequireVolumeIs(t, vol.Path, vol.Size, ref)
	}
	require.ErrorContains(t, SetZlibDecompressor("gzip"), `zlib decompressor "gzip" is not built in`)
}
