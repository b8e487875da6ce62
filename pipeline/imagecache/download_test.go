package imagecache

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/source"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"
)

// dedicatedMinIO starts a MinIO server for one test (which may stop and
// start it) and makes a bucket on it.
func dedicatedMinIO(t *testing.T) (*testenv.MinIO, string) {
	t.Helper()
	sharedMinIO.Server(t)
	m, err := testenv.StartMinIO(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(m.Stop)
	require.NoError(t, m.Bucket(context.Background(), "images"))
	return m, "images"
}

// watchedSource is the real source.MinIO, recording the offsets it is asked
// to read from and throttling the bytes it hands out (a slow consumer).
// OpenAt of a resumed read waits for gate when it is set.
type watchedSource struct {
	*source.MinIO
	perMiB time.Duration
	gate   chan struct{}

	mu        sync.Mutex
	offsets   []int64
	stats     int
	checksums int
}

func (w *watchedSource) Checksum(ctx context.Context, bucket, object string) (string, bool, error) {
	w.mu.Lock()
	w.checksums++
	w.mu.Unlock()
	return w.MinIO.Checksum(ctx, bucket, object)
}

func (w *watchedSource) Stat(ctx context.Context, bucket, object string) (source.ObjectInfo, error) {
	w.mu.Lock()
	w.stats++
	w.mu.Unlock()
	return w.MinIO.Stat(ctx, bucket, object)
}

func (w *watchedSource) OpenAt(ctx context.Context, bucket, object string, offset int64, etag string) (io.ReadCloser, error) {
	w.mu.Lock()
	w.offsets = append(w.offsets, offset)
	w.mu.Unlock()
	if offset > 0 && w.gate != nil {
		select {
		case <-w.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	r, err := w.MinIO.OpenAt(ctx, bucket, object, offset, etag)
	if err != nil || w.perMiB == 0 {
		return r, err
	}
	return &slowReader{ReadCloser: r, perMiB: w.perMiB}, nil
}

func (w *watchedSource) calls() (offsets []int64, stats, checksums int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int64(nil), w.offsets...), w.stats, w.checksums
}

// slowReader sleeps in proportion to the bytes read.
type slowReader struct {
	io.ReadCloser
	perMiB time.Duration
}

func (s *slowReader) Read(p []byte) (int, error) {
	if len(p) > 256<<10 {
		p = p[:256<<10]
	}
	n, err := s.ReadCloser.Read(p)
	time.Sleep(time.Duration(int64(s.perMiB) * int64(n) >> 20))
	return n, err
}

// downloadRecorder records download progress and fires once past a fraction.
type downloadRecorder struct {
	mu    sync.Mutex
	done  []int64
	at    float64
	fired chan struct{}
	once  sync.Once
}

func newDownloadRecorder(at float64) *downloadRecorder {
	return &downloadRecorder{at: at, fired: make(chan struct{})}
}

func (r *downloadRecorder) progress(stage string, done, total int64) {
	if stage != stages.Download {
		return
	}
	r.mu.Lock()
	r.done = append(r.done, done)
	r.mu.Unlock()
	if total > 0 && float64(done) > r.at*float64(total) {
		r.once.Do(func() { close(r.fired) })
	}
}

func (r *downloadRecorder) values() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int64(nil), r.done...)
}

// putImage writes a RawImage of size bytes and uploads it as object.
func putImage(t *testing.T, m *testenv.MinIO, bucket, object string, size int64, seed uint64, withChecksum bool) (messaging.ImageRef, string) {
	t.Helper()
	local := filepath.Join(t.TempDir(), "image.raw")
	require.NoError(t, testenv.RawImage(local, size, seed))
	url, digest, err := m.PutImage(context.Background(), bucket, object, local, withChecksum)
	require.NoError(t, err)
	ref, err := messaging.ParseImageURL(url)
	require.NoError(t, err)
	return ref, digest
}

func newTestCache(t *testing.T, opts Options) (*Cache, kvstate.CacheIndex, string) {
	t.Helper()
	index, host := testIndex(t)
	c, err := NewWithOptions(filepath.Join(t.TempDir(), "cache"), host, index, opts)
	require.NoError(t, err)
	return c, index, host
}

func requireNoEntries(t *testing.T, index kvstate.CacheIndex, host string) {
	t.Helper()
	entries, err := index.List(context.Background(), host)
	require.NoError(t, err)
	require.Empty(t, entries)
}

func TestDownloadResumesAfterMinIORestart(t *testing.T) {
	t.Parallel()
	m, bucket := dedicatedMinIO(t)
	const size = 64 << 20
	ref, digest := putImage(t, m, bucket, "big.raw", size, 11, true)
	base, err := source.NewMinIO(m.Endpoint, m.AccessKey, m.SecretKey, false)
	require.NoError(t, err)
	src := &watchedSource{MinIO: base, perMiB: 40 * time.Millisecond}
	cache, index, host := newTestCache(t, Options{RetryInitial: 100 * time.Millisecond, RetryMax: time.Second, RetryBudget: 30 * time.Second})

	rec := newDownloadRecorder(0.3)
	restarted := make(chan error, 1)
	go func() {
		<-rec.fired
		restarted <- m.Restart(500 * time.Millisecond)
	}()
	e, hit, err := ensure(context.Background(), cache, src, ref, rec.progress)
	require.NoError(t, err)
	require.NoError(t, <-restarted)
	require.False(t, hit)
	require.Equal(t, digest, e.Key)
	got, err := testenv.FileSHA256(e.Path)
	require.NoError(t, err)
	require.Equal(t, digest, got)

	offsets, _, _ := src.calls()
	require.GreaterOrEqual(t, len(offsets), 2, "the download was interrupted and reopened")
	require.Equal(t, int64(0), offsets[0])
	resumedAt := offsets[len(offsets)-1]
	require.Greater(t, resumedAt, int64(size*3/10), "the download resumed with a range request, not from the start")
	require.Less(t, resumedAt, int64(size))

	done := rec.values()
	for i := 1; i < len(done); i++ {
		require.GreaterOrEqual(t, done[i], done[i-1], "progress never goes backwards")
	}
	require.Equal(t, int64(size), done[len(done)-1])
	stored, err := index.Get(context.Background(), host, digest)
	require.NoError(t, err)
	require.Equal(t, e.Path, stored.Path)
	require.Equal(t, []string{filepath.Base(e.Path)}, cacheFiles(t, cache))
}

func TestDownloadGivesUpAfterRetryBudget(t *testing.T) {
	t.Parallel()
	m, bucket := dedicatedMinIO(t)
	const size = 32 << 20
	ref, _ := putImage(t, m, bucket, "big.raw", size, 12, true)
	base, err := source.NewMinIO(m.Endpoint, m.AccessKey, m.SecretKey, false)
	require.NoError(t, err)
	src := &watchedSource{MinIO: base, perMiB: 40 * time.Millisecond}
	const budget = 2 * time.Second
	cache, index, host := newTestCache(t, Options{RetryBudget: budget, RetryInitial: 100 * time.Millisecond, RetryMax: 500 * time.Millisecond})

	rec := newDownloadRecorder(0.3)
	stopped := make(chan time.Time, 1)
	go func() {
		<-rec.fired
		m.Stop()
		stopped <- time.Now()
	}()
	_, _, err = ensure(context.Background(), cache, src, ref, rec.progress)
	failedAt := time.Now()
	require.Error(t, err)
	require.ErrorContains(t, err, "download "+ref.URL)
	require.ErrorContains(t, err, "gave up after")
	require.ErrorContains(t, err, "retry budget 2s")
	require.ErrorContains(t, err, "connection refused")
	require.True(t, errors.Is(err, syscall.ECONNREFUSED), "%v", err)
	took := failedAt.Sub(<-stopped)
	require.GreaterOrEqual(t, took, budget)
	require.Less(t, took, budget+5*time.Second)
	offsets, _, _ := src.calls()
	require.Greater(t, len(offsets), 2, "retried")
	require.Empty(t, cacheFiles(t, cache), "no partial file is left")
	requireNoEntries(t, index, host)
}

func TestDownloadImageReplacedDuringResume(t *testing.T) {
	t.Parallel()
	m, bucket := dedicatedMinIO(t)
	const size = 32 << 20
	ref, _ := putImage(t, m, bucket, "big.raw", size, 13, false)
	st, err := m.Client.StatObject(context.Background(), bucket, ref.Object, minio.StatObjectOptions{})
	require.NoError(t, err)
	base, err := source.NewMinIO(m.Endpoint, m.AccessKey, m.SecretKey, false)
	require.NoError(t, err)
	gate := make(chan struct{})
	src := &watchedSource{MinIO: base, perMiB: 40 * time.Millisecond, gate: gate}
	cache, index, host := newTestCache(t, Options{RetryInitial: 100 * time.Millisecond})

	// Past 30%: MinIO restarts (the stream breaks) and the object is
	// replaced before the download may resume.
	rec := newDownloadRecorder(0.3)
	replaced := make(chan error, 1)
	go func() {
		defer close(gate)
		<-rec.fired
		if err := m.Restart(200 * time.Millisecond); err != nil {
			replaced <- err
			return
		}
		other := filepath.Join(t.TempDir(), "other.raw")
		if err := testenv.RawImage(other, size, 14); err != nil {
			replaced <- err
			return
		}
		replaced <- m.PutFile(context.Background(), bucket, ref.Object, other)
	}()
	_, _, err = ensure(context.Background(), cache, src, ref, rec.progress)
	require.NoError(t, <-replaced)
	require.ErrorContains(t, err, "download "+ref.URL+": the image changed while downloading (ETag was "+st.ETag+")")
	require.ErrorIs(t, err, source.ErrObjectChanged)
	offsets, _, _ := src.calls()
	require.Len(t, offsets, 2, "one resume, refused at once")
	require.Empty(t, cacheFiles(t, cache))
	requireNoEntries(t, index, host)
}

func TestDownloadPermanentErrorsFailAtOnce(t *testing.T) {
	t.Parallel()
	m, bucket := needMinIO(t)
	ref, _ := putImage(t, m, bucket, "images/disk.raw", 1<<20, 15, false)
	cache, index, host := newTestCache(t, Options{})

	t.Run("missing object", func(t *testing.T) {
		base, err := source.NewMinIO(m.Endpoint, m.AccessKey, m.SecretKey, false)
		require.NoError(t, err)
		src := &watchedSource{MinIO: base}
		missing := ref
		missing.Object = "images/nope.raw"
		missing.URL = "http://" + m.Endpoint + "/" + bucket + "/images/nope.raw"
		start := time.Now()
		_, _, err = ensure(context.Background(), cache, src, missing, nil)
		require.Less(t, time.Since(start), time.Second)
		require.ErrorContains(t, err, "image s3://"+bucket+"/images/nope.raw not found on "+m.Endpoint)
		_, stats, _ := src.calls()
		require.Equal(t, 1, stats, "not retried")
	})
	t.Run("missing bucket", func(t *testing.T) {
		base, err := source.NewMinIO(m.Endpoint, m.AccessKey, m.SecretKey, false)
		require.NoError(t, err)
		src := &watchedSource{MinIO: base}
		missing := ref
		missing.Bucket = "no-such-bucket-" + host
		start := time.Now()
		_, _, err = ensure(context.Background(), cache, src, missing, nil)
		require.Less(t, time.Since(start), time.Second)
		require.ErrorContains(t, err, "does not exist")
	})
	t.Run("wrong credentials", func(t *testing.T) {
		base, err := source.NewMinIO(m.Endpoint, m.AccessKey, "wrong-secret", false)
		require.NoError(t, err)
		src := &watchedSource{MinIO: base}
		start := time.Now()
		_, _, err = ensure(context.Background(), cache, src, ref, nil)
		require.Less(t, time.Since(start), time.Second)
		require.ErrorContains(t, err, "rejected the worker's credentials")
		_, _, checksums := src.calls()
		require.Equal(t, 1, checksums, "not retried")
	})
	require.Empty(t, cacheFiles(t, cache))
	requireNoEntries(t, index, host)
}

func TestDownloadCacheFilesystemFull(t *testing.T) {
	t.Parallel()
	m, bucket := needMinIO(t)
	dir := filepath.Join(t.TempDir(), "cache")
	testenv.MountTmpfs(t, dir, "16m")
	index, host := testIndex(t)
	cache, err := NewWithOptions(dir, host, index, Options{MinFreeBytes: 1 << 20})
	require.NoError(t, err)
	ctx := context.Background()

	// Bigger than the filesystem: refused before downloading.
	big, _ := putImage(t, m, bucket, "big.raw", 24<<20, 16, true)
	_, _, err = ensure(ctx, cache, testSource(t, m), big, nil)
	require.ErrorContains(t, err, "not enough space in the image cache "+dir+": the image needs 25165824 bytes, ")
	require.ErrorContains(t, err, "are free (cache cap none")
	require.Empty(t, cacheFiles(t, cache))

	// Fits when it starts, but something else fills the filesystem meanwhile.
	mid, _ := putImage(t, m, bucket, "mid.raw", 10<<20, 17, true)
	filler := filepath.Join(dir, "filler")
	var once sync.Once
	_, _, err = ensure(ctx, cache, testSource(t, m), mid, func(stage string, done, _ int64) {
		if stage == stages.Download && done > 0 {
			once.Do(func() { _ = os.WriteFile(filler, make([]byte, 8<<20), 0o600) })
		}
	})
	require.ErrorContains(t, err, "not enough space in the image cache "+dir+" while downloading "+mid.URL)
	require.ErrorIs(t, err, syscall.ENOSPC)
	require.Equal(t, []string{"filler"}, cacheFiles(t, cache), "no partial file is left")
	require.NoError(t, os.Remove(filler))
	requireNoEntries(t, index, host)

	// The next, small download works.
	small, digest := putImage(t, m, bucket, "small.raw", 4<<20, 18, true)
	e, hit, err := ensure(ctx, cache, testSource(t, m), small, nil)
	require.NoError(t, err)
	require.False(t, hit)
	got, err := testenv.FileSHA256(e.Path)
	require.NoError(t, err)
	require.Equal(t, digest, got)
}

func TestIsTransient(t *testing.T) {
	t.Parallel()
	resp := func(status int, code string) error {
		return minio.ErrorResponse{StatusCode: status, Code: code}
	}
	for _, err := range []error{
		resp(http.StatusServiceUnavailable, "SlowDown"),
		resp(http.StatusServiceUnavailable, "XMinioServerNotInitialized"),
		resp(http.StatusInternalServerError, "InternalError"),
		resp(http.StatusBadGateway, ""),
		syscall.ECONNREFUSED,
		&os.SyscallError{Syscall: "read", Err: syscall.ECONNRESET},
		io.ErrUnexpectedEOF,
		source.ErrStalled,
	} {
		require.True(t, source.IsTransient(err), "%v", err)
	}
	for _, err := range []error{
		resp(http.StatusForbidden, "AccessDenied"),
		resp(http.StatusForbidden, "SignatureDoesNotMatch"),
		resp(http.StatusNotFound, "NoSuchKey"),
		resp(http.StatusNotFound, "NoSuchBucket"),
		resp(http.StatusPreconditionFailed, "PreconditionFailed"),
		source.ErrObjectChanged,
		context.Canceled,
		errors.New("checksum mismatch"),
		nil,
	} {
		require.False(t, source.IsTransient(err), "%v", err)
	}
}
