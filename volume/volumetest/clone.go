package volumetest

import (
	"bytes"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// Golden writes a new qcow2 image of size bytes of disk (its data made from
// seed) into key's golden of c with the native converter, as the worker
// does the first time it meets the image, and seals it with SealGolden,
// which reads the golden back for its digest. It returns the golden and the
// image's disk as a raw file.
func Golden(t *testing.T, c volume.Cloner, key string, size int64, seed uint64) (volume.Golden, string) {
	t.Helper()
	src := prepareGolden(t, c, key, size, seed)
	require.NoError(t, convert.Native{}.Convert(t.Context(), src.img, src.qcow2, src.prepared, nil))
	g, err := c.SealGolden(t.Context(), key, src.prepared)
	require.NoError(t, err)
	return g, src.raw
}

// HashedGolden is Golden with the image hashed while it is written and the
// golden sealed with that digest (SealGoldenDigest).
func HashedGolden(t *testing.T, c interface {
	volume.Cloner
	volume.DigestSealer
}, key string, size int64, seed uint64) (volume.Golden, string) {
	t.Helper()
	src := prepareGolden(t, c, key, size, seed)
	h := volume.NewGoldenHasher(src.prepared.Size)
	require.NoError(t, convert.Native{}.WithDigest(h).Convert(t.Context(), src.img, src.qcow2, src.prepared, nil))
	digest, err := h.Sum()
	require.NoError(t, err)
	g, err := c.SealGoldenDigest(t.Context(), key, src.prepared, digest)
	require.NoError(t, err)
	return g, src.raw
}

// goldenSource is an image and the prepared golden it is to be written
// into.
type goldenSource struct {
	img        image.Image
	qcow2, raw string
	prepared   volume.Volume
}

// prepareGolden makes a new qcow2 image and prepares key's golden for it.
func prepareGolden(t *testing.T, c volume.Cloner, key string, size int64, seed uint64) goldenSource {
	t.Helper()
	qcow2, raw := testenv.QCOW2Image(t, t.TempDir(), size, seed)
	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	prep, err := c.PrepareGolden(t.Context(), key, img.VirtualSize)
	require.NoError(t, err)
	return goldenSource{img: img, qcow2: qcow2, raw: raw, prepared: prep}
}

// WatchVolume checks, from now until stop is called, that path always names
// a whole file of size bytes, as a volume must while it is recloned (a
// fresh clone renamed over it): stop fails t if the name went missing or
// read short meanwhile.
func WatchVolume(t *testing.T, path string, size int64) (stop func()) {
	t.Helper()
	var done atomic.Bool
	var bad atomic.Value
	var wg sync.WaitGroup
	wg.Go(func() {
		for !done.Load() {
			st, err := os.Stat(path)
			if err != nil {
				bad.Store(err.Error())
				return
			}
			if st.Size() != size {
				bad.Store(fmt.Sprintf("size %d", st.Size()))
				return
			}
		}
	})
	halt := func() {
		done.Store(true)
		wg.Wait()
	}
	t.Cleanup(halt)
	return func() {
		t.Helper()
		halt()
		require.Nil(t, bad.Load(), "the volume's name went missing or read short while it was recloned")
	}
}

// Scribble writes 1 MiB of 0xa5 at each offset of the file at path and
// flushes it.
func Scribble(t *testing.T, path string, offs ...int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	defer f.Close()
	junk := bytes.Repeat([]byte{0xa5}, 1<<20)
	for _, off := range offs {
		_, err = f.WriteAt(junk, off)
		require.NoError(t, err)
	}
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
}

// Inode is the inode number of the file at path.
func Inode(t *testing.T, path string) uint64 {
	t.Helper()
	st, err := os.Stat(path)
	require.NoError(t, err)
	return st.Sys().(*syscall.Stat_t).Ino
}
