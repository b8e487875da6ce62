//go:build lvmguest

package lvm

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// linkBytesPerSec is the 1 Gbit/s link of the file backend's benchmark.
const linkBytesPerSec = 1e9 / 8

// pacedDownload copies src into dst no faster than the link, hashing what
// arrives (as the cache does while it downloads); its ReaderAt waits for
// the bytes a read needs, as a download still arriving does for a
// streaming conversion (image.Arriving).
type pacedDownload struct {
	dst string

	mu      sync.Mutex
	cond    *sync.Cond
	written int64
	done    bool
	err     error
}

// download starts copying src into dst; wait returns when the last byte
// has arrived and been hashed.
func download(src, dst string) *pacedDownload {
	d := &pacedDownload{dst: dst}
	d.cond = sync.NewCond(&d.mu)
	go d.run(src)
	return d
}

func (d *pacedDownload) run(src string) {
	err := func() error {
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(d.dst)
		if err != nil {
			return err
		}
		defer out.Close()
		h := sha256.New()
		buf := make([]byte, 1<<20)
		start := time.Now()
		var n int64
		for {
			k, rerr := in.Read(buf)
			if k > 0 {
				if _, err := out.Write(buf[:k]); err != nil {
					return err
				}
				h.Write(buf[:k])
				n += int64(k)
				if ahead := time.Duration(float64(n)/linkBytesPerSec*float64(time.Second)) - time.Since(start); ahead > 0 {
					time.Sleep(ahead)
				}
				d.mu.Lock()
				d.written = n
				d.cond.Broadcast()
				d.mu.Unlock()
			}
			if rerr == io.EOF {
				return nil
			}
			if rerr != nil {
				return rerr
			}
		}
	}()
	d.mu.Lock()
	d.done, d.err = true, err
	d.cond.Broadcast()
	d.mu.Unlock()
}

func (d *pacedDownload) wait() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for !d.done {
		d.cond.Wait()
	}
	return d.err
}

func (d *pacedDownload) ReaderAt(context.Context) io.ReaderAt { return d }

func (d *pacedDownload) ReadAt(b []byte, off int64) (int, error) {
	d.mu.Lock()
	for !d.done && d.written < off+int64(len(b)) {
		d.cond.Wait()
	}
	err := d.err
	d.mu.Unlock()
	if err != nil {
		return 0, err
	}
	f, err := os.Open(d.dst)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.ReadAt(b, off)
}

var _ image.Arriving = (*pacedDownload)(nil)

// benchThinCold compares, for one image, the download alone over the
// paced 1 Gbit/s link (into a file, hashed as it arrives) with a cold job
// on the thin pool as the worker runs it: the golden thin LV prepared, the
// image converted into it while it downloads, the golden sealed (the lvm
// backend reads it back to hash it), and the volume snapshotted from it,
// extended to its size.
func benchThinCold(t *testing.T, b *Backend, name, qcow2 string, volSize int64) (downloadAlone, coldJob time.Duration) {
	ctx := t.Context()
	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	dir := t.TempDir()

	start := time.Now()
	require.NoError(t, download(qcow2, filepath.Join(dir, "alone.qcow2")).wait())
	downloadAlone = time.Since(start)
	require.NoError(t, os.Remove(filepath.Join(dir, "alone.qcow2")))

	key := fmt.Sprintf("%x", sha256.Sum256([]byte("cold "+qcow2)))
	start = time.Now()
	d := download(qcow2, filepath.Join(dir, "cold.qcow2"))
	defer os.Remove(filepath.Join(dir, "cold.qcow2")) // the guest's /tmp is its memory
	prep, err := b.PrepareGolden(ctx, key, img.VirtualSize)
	require.NoError(t, err)
	defer func() { _ = b.RemoveGolden(context.Background(), key) }()
	// As the worker (pipeline.Plan's makeGolden): the digest from what is
	// written where the backend seals with one (volume.DigestSealer);
	// otherwise the backend reads the golden back when it seals it.
	var conv convert.Converter = convert.Native{}
	ds, digestSeals := any(b).(volume.DigestSealer)
	var h *volume.GoldenHasher
	if digestSeals {
		h = volume.NewGoldenHasher(prep.Size)
		conv = convert.Native{}.WithDigest(h)
	}
	streaming := conv.(interface {
		ConvertStream(context.Context, image.Image, image.Arriving, volume.Volume, stages.ProgressFunc) error
	})
	require.NoError(t, streaming.ConvertStream(ctx, img, d, prep, nil))
	require.NoError(t, d.wait())
	var g volume.Golden
	if digestSeals {
		digest, err := h.Sum()
		require.NoError(t, err)
		g, err = ds.SealGoldenDigest(ctx, key, prep, digest)
		require.NoError(t, err)
	} else {
		g, err = b.SealGolden(ctx, key, prep)
		require.NoError(t, err)
	}
	vol, err := b.Clone(ctx, g, "bench-cold-"+name, volSize)
	require.NoError(t, err)
	coldJob = time.Since(start)
	require.NoError(t, b.Delete(ctx, vol.Name))
	return downloadAlone, coldJob
}
