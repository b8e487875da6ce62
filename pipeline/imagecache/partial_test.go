package imagecache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
)

// readAsync runs r.ReadAt(n bytes at off) in a goroutine.
func readAsync(r io.ReaderAt, n int, off int64) <-chan error {
	done := make(chan error, 1)
	go func() {
		b := make([]byte, n)
		_, err := r.ReadAt(b, off)
		done <- err
	}()
	return done
}

func requirePending(t *testing.T, ch <-chan error) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("the read returned (%v) before its bytes arrived", err)
	case <-time.After(50 * time.Millisecond):
	}
}

// TestPartialReaderWaitsForBytes drives a Partial by hand over a real file:
// reads wait for their range, a read past the announced end returns io.EOF
// once the end arrived, a failed download fails waiting reads, a restarted
// one breaks them, and ctx ends a wait.
func TestPartialReaderWaitsForBytes(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "download")
	data := make([]byte, 4096)
	for i := range data {
		data[i] = byte(i * 7)
	}
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	write := func(p *Partial, upto int) {
		require.NoError(t, os.WriteFile(path, data[:upto], 0o600))
		p.advance(int64(upto))
	}

	t.Run("waits", func(t *testing.T) {
		p := newPartial(func() {})
		require.NoError(t, p.start(path, int64(len(data))))
		r := p.ReaderAt(t.Context())
		got := readAsync(r, 1000, 1000)
		requirePending(t, got)
		write(p, 1500)
		requirePending(t, got) // [1000, 2000) is not all there
		write(p, 2000)
		require.NoError(t, <-got)
		b := make([]byte, 1000)
		n, err := r.ReadAt(b, 1000)
		require.NoError(t, err)
		require.Equal(t, data[1000:2000], b[:n])

		// Past the end: waits for the last byte, then io.EOF with the rest.
		tail := readAsync(r, 1000, 3500)
		requirePending(t, tail)
		write(p, len(data))
		require.ErrorIs(t, <-tail, io.EOF)
		p.finish(kvstate.CacheEntry{Key: "k"}, nil)
		e, err := p.Wait(t.Context())
		require.NoError(t, err)
		require.Equal(t, "k", e.Key)
		p.Abort()
	})
	t.Run("failed", func(t *testing.T) {
		p := newPartial(func() {})
		require.NoError(t, p.start(path, int64(len(data))))
		got := readAsync(p.ReaderAt(t.Context()), 100, 3000)
		requirePending(t, got)
		p.finish(kvstate.CacheEntry{}, errors.New("checksum mismatch"))
		err := <-got
		require.ErrorContains(t, err, "the download failed: checksum mismatch")
	})
	t.Run("restarted", func(t *testing.T) {
		p := newPartial(func() {})
		require.NoError(t, p.start(path, int64(len(data))))
		write(p, 2000)
		require.False(t, p.Restarted())
		waiting := readAsync(p.ReaderAt(t.Context()), 100, 3000)
		requirePending(t, waiting)
		p.restart()
		require.True(t, p.Restarted())
		require.ErrorIs(t, <-waiting, ErrStreamRestarted, "a read waiting when the download restarted")
		write(p, 4000)
		_, err := p.ReaderAt(t.Context()).ReadAt(make([]byte, 10), 0)
		require.ErrorIs(t, err, ErrStreamRestarted, "bytes read after a restart")
	})
	t.Run("context", func(t *testing.T) {
		p := newPartial(func() {})
		ctx, cancel := context.WithCancelCause(t.Context())
		got := readAsync(p.ReaderAt(ctx), 10, 0) // before the file even exists
		requirePending(t, got)
		stop := errors.New("conversion stopped")
		cancel(stop)
		require.ErrorIs(t, <-got, stop)
	})
}

// streamFixture is a compressed qcow2 image in MinIO, served slowly, and a
// cache to stream it into.
type streamFixture struct {
	cache *Cache
	index kvstate.CacheIndex
	host  string
	src   *watchedSource
	ref   messaging.ImageRef
	qcow2 string
	raw   string // qemu-img's own conversion of it
}

func newStreamFixture(t *testing.T, virt int64, checksum string) *streamFixture {
	t.Helper()
	qcow2, _ := testenv.QCOW2Image(t, t.TempDir(), virt, 41)
	return streamFixtureOf(t, qcow2, checksum)
}

// streamFixtureOf is newStreamFixture for a qcow2 file of the test's own.
func streamFixtureOf(t *testing.T, qcow2, checksum string) *streamFixture {
	t.Helper()
	m, bucket := needMinIO(t)
	url, _, err := m.PutImage(t.Context(), bucket, "images/stream.qcow2", qcow2, checksum == "")
	require.NoError(t, err)
	if checksum != "" {
		require.NoError(t, m.PutBytes(t.Context(), bucket, "images/stream.qcow2.sha256", []byte(checksum+"  stream.qcow2\n")))
	}
	ref, err := messaging.ParseImageURL(url)
	require.NoError(t, err)
	c, index, host := newTestCache(t, Options{})
	// About 0.25 s a MiB: the conversion overtakes the download.
	src := &watchedSource{MinIO: testSource(t, m), perMiB: 250 * time.Millisecond}
	return &streamFixture{cache: c, index: index, host: host, src: src, ref: ref, qcow2: qcow2, raw: testenv.QemuRawReference(t, qcow2)}
}

// startStream starts fetching f's image (a miss) and inspects its header.
func (f *streamFixture) startStream(t *testing.T) (*Fetch, image.Image) {
	t.Helper()
	fetch, err := f.cache.Acquire(t.Context(), f.src, f.ref, AcquireOptions{Miss: StreamDownload})
	require.NoError(t, err)
	t.Cleanup(fetch.Release)
	require.False(t, fetch.Hit)
	require.NotNil(t, fetch.Partial)
	img, stream, err := image.InspectStream(t.Context(), fetch.Partial, "qcow2")
	require.NoError(t, err)
	require.True(t, stream)
	return fetch, img
}

// TestStreamConvertWhileDownloading: the native converter writes the
// volume from the download as it arrives (its first data lands before the
// download ends), the cache commits the verified image, and the volume is
// byte-exact.
func TestStreamConvertWhileDownloading(t *testing.T) {
	t.Parallel()
	const virt = 24 << 20
	f := newStreamFixture(t, virt, "")
	fetch, err := f.cache.Acquire(t.Context(), f.src, f.ref, AcquireOptions{Miss: StreamDownload})
	require.NoError(t, err)
	defer fetch.Release()
	require.False(t, fetch.Hit)
	require.NotNil(t, fetch.Partial)

	img, stream, err := image.InspectStream(t.Context(), fetch.Partial, "")
	require.NoError(t, err)
	require.True(t, stream)
	require.Equal(t, image.Image{Format: messaging.ImageQCOW2, VirtualSize: virt}, img)

	vol := testenv.GarbageVolume(t, t.TempDir(), virt)
	var mu sync.Mutex
	var firstData time.Time
	err = convert.Native{}.ConvertStream(t.Context(), img, fetch.Partial, vol, func(_ string, done, _ int64) {
		mu.Lock()
		if done > 0 && firstData.IsZero() {
			firstData = time.Now()
		}
		mu.Unlock()
	})
	require.NoError(t, err)
	e, err := fetch.Partial.Wait(t.Context())
	require.NoError(t, err)
	downloaded := time.Now()
	testenv.RequireVolumeIs(t, vol.Path, vol.Size, f.raw)
	require.False(t, firstData.IsZero())
	require.True(t, firstData.Before(downloaded), "the conversion wrote nothing before the download ended")

	digest, err := testenv.FileSHA256(f.qcow2)
	require.NoError(t, err)
	require.Equal(t, digest, e.Checksum)
	require.Equal(t, []string{filepath.Base(e.Path)}, cacheFiles(t, f.cache))
	got, err := f.index.Get(t.Context(), f.host, e.Key)
	require.NoError(t, err)
	require.Equal(t, e.Path, got.Path)

	// The next fetch is a hit.
	again, err := f.cache.Acquire(t.Context(), f.src, f.ref, AcquireOptions{Miss: StreamDownload})
	require.NoError(t, err)
	defer again.Release()
	require.True(t, again.Hit)
	require.NoError(t, again.Verify(t.Context()))
}

// TestStreamChecksumMismatch: a streamed image whose digest does not match
// its .sha256 converts (the slow source makes the header arrive long before
// the end), but Wait reports the mismatch and nothing is cached.
func TestStreamChecksumMismatch(t *testing.T) {
	t.Parallel()
	f := newStreamFixture(t, 4<<20, "1111111111111111111111111111111111111111111111111111111111111111")
	fetch, img := f.startStream(t)
	vol := testenv.ZeroedVolume(t, t.TempDir(), 4<<20)
	cerr := convert.Native{}.ConvertStream(t.Context(), img, fetch.Partial, vol, nil)
	_, err := fetch.Partial.Wait(t.Context())
	require.ErrorContains(t, err, "checksum mismatch")
	if cerr != nil { // the conversion may have read everything before the end was judged
		require.ErrorContains(t, cerr, "checksum mismatch")
	}
	require.Empty(t, cacheFiles(t, f.cache))
	requireNoEntries(t, f.index, f.host)
}

// TestStreamReleaseAbortsDownload: releasing a fetch whose download is
// still running stops it and leaves the cache empty.
func TestStreamReleaseAbortsDownload(t *testing.T) {
	t.Parallel()
	f := newStreamFixture(t, 16<<20, "")
	fetch, err := f.cache.Acquire(t.Context(), f.src, f.ref, AcquireOptions{Miss: StreamDownload})
	require.NoError(t, err)
	_, _, err = image.InspectStream(t.Context(), fetch.Partial, "")
	require.NoError(t, err)
	fetch.Release()
	_, err = fetch.Partial.Wait(t.Context())
	require.ErrorIs(t, err, context.Canceled)
	require.Empty(t, cacheFiles(t, f.cache))
	requireNoEntries(t, f.index, f.host)
}

// TestStreamConvertReverseOrder: an image whose clusters lie in the file in
// the reverse of their guest order (as a VM that wrote its disk from the
// end would leave it) streams byte-exact: the conversion's first reads wait
// for the end of the file.
func TestStreamConvertReverseOrder(t *testing.T) {
	t.Parallel()
	qemuIO, err := exec.LookPath("qemu-io")
	if err != nil {
		testenv.Missing(t, "qemu-io", "apt-get install qemu-utils")
	}
	const virt = 8 << 20
	qcow2 := filepath.Join(t.TempDir(), "reverse.qcow2")
	testenv.RunQemuImg(t, "create", "-q", "-f", "qcow2", qcow2, "8M")
	args := []string{"-f", "qcow2"}
	for i := virt/(256<<10) - 1; i >= 0; i -= 2 { // every other 256 KiB, last first
		args = append(args, "-c", fmt.Sprintf("write -P %d %d 256k", i%250+1, i*(256<<10)))
	}
	out, err := exec.Command(qemuIO, append(args, qcow2)...).CombinedOutput()
	require.NoError(t, err, "%s", out)
	f := streamFixtureOf(t, qcow2, "")
	f.src.perMiB = 250 * time.Millisecond // about a second for the 4 MiB file

	fetch, img := f.startStream(t)
	vol := testenv.GarbageVolume(t, t.TempDir(), virt)
	require.NoError(t, convert.Native{}.ConvertStream(t.Context(), img, fetch.Partial, vol, nil))
	_, err = fetch.Partial.Wait(t.Context())
	require.NoError(t, err)
	testenv.RequireVolumeIs(t, vol.Path, vol.Size, f.raw)
}
