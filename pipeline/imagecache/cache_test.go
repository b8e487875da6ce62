package imagecache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/source"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"
)

// cacheFixture is a cache on a fresh directory and host, and an image of
// size bytes uploaded to a fresh bucket.
type cacheFixture struct {
	m      *testenv.MinIO
	bucket string
	src    *source.MinIO
	index  kvstate.CacheIndex
	host   string
	cache  *Cache
	ref    messaging.ImageRef
	digest string
	local  string
}

func newCacheFixture(t *testing.T, size int64, withChecksum bool) *cacheFixture {
	t.Helper()
	m, bucket := needMinIO(t)
	f := &cacheFixture{m: m, bucket: bucket, src: testSource(t, m)}
	f.index, f.host = testIndex(t)
	var err error
	f.cache, err = New(filepath.Join(t.TempDir(), "cache"), f.host, f.index)
	require.NoError(t, err)
	f.local = filepath.Join(t.TempDir(), "disk.raw")
	require.NoError(t, testenv.RawImage(f.local, size, 7))
	url, digest, err := m.PutImage(context.Background(), bucket, "images/disk.raw", f.local, withChecksum)
	require.NoError(t, err)
	f.digest = digest
	f.ref, err = messaging.ParseImageURL(url)
	require.NoError(t, err)
	return f
}

// cacheFiles lists the files in the cache directory, but for the cache's
// own state directory.
func cacheFiles(t *testing.T, c *Cache) []string {
	t.Helper()
	ents, err := os.ReadDir(c.Dir())
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		if e.Name() == stateDirName {
			continue
		}
		names = append(names, e.Name())
	}
	return names
}

// stageRecorder records which stages progress reported.
type stageRecorder struct {
	mu     sync.Mutex
	stages []string
}

func (r *stageRecorder) progress(stage string, _, _ int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := len(r.stages); n == 0 || r.stages[n-1] != stage {
		r.stages = append(r.stages, stage)
	}
}

func TestCacheMissThenHit(t *testing.T) {
	t.Parallel()
	f := newCacheFixture(t, 3<<20, true)
	ctx := context.Background()

	var rec stageRecorder
	e, hit, err := ensure(ctx, f.cache, f.src, f.ref, rec.progress)
	require.NoError(t, err)
	require.False(t, hit)
	require.Equal(t, []string{stages.Checksum, stages.CacheCheck, stages.Download}, rec.stages)
	require.Equal(t, f.digest, e.Key)
	require.Equal(t, kvstate.KeyKindSHA256, e.KeyKind)
	require.Equal(t, f.digest, e.Checksum)
	require.Equal(t, int64(3<<20), e.Size)
	require.Equal(t, f.ref.URL, e.SourceURL)
	require.NotEmpty(t, e.ETag)
	require.Equal(t, filepath.Join(f.cache.Dir(), "disk-"+f.digest[:16]+".raw"), e.Path)
	got, err := testenv.FileSHA256(e.Path)
	require.NoError(t, err)
	require.Equal(t, f.digest, got)

	stored, err := f.index.Get(ctx, f.host, f.digest)
	require.NoError(t, err)
	require.Equal(t, e.Path, stored.Path)

	// With the image gone from the store, only the cache can serve it.
	require.NoError(t, f.m.Client.RemoveObject(ctx, f.bucket, f.ref.Object, minio.RemoveObjectOptions{}))
	rec = stageRecorder{}
	e2, hit, err := ensure(ctx, f.cache, f.src, f.ref, rec.progress)
	require.NoError(t, err)
	require.True(t, hit)
	require.Equal(t, []string{stages.Checksum, stages.CacheCheck, stages.Verify}, rec.stages)
	require.Equal(t, e.Path, e2.Path)
	require.False(t, e2.LastUsed.Before(e.LastUsed))
	require.Equal(t, []string{filepath.Base(e.Path)}, cacheFiles(t, f.cache))
}

func TestCacheChecksumMismatch(t *testing.T) {
	t.Parallel()
	f := newCacheFixture(t, 1<<20, false)
	ctx := context.Background()
	wrong := strings.Repeat("ab", 32)
	require.NoError(t, f.m.PutBytes(ctx, f.bucket, f.ref.Object+".sha256", []byte(wrong+"  disk.raw\n")))

	_, _, err := ensure(ctx, f.cache, f.src, f.ref, nil)
	require.ErrorContains(t, err, "checksum mismatch for "+f.ref.URL)
	require.ErrorContains(t, err, "the .sha256 object says "+wrong)
	require.ErrorContains(t, err, "hashes to "+f.digest)
	require.ErrorContains(t, err, "nothing was cached")
	require.Empty(t, cacheFiles(t, f.cache))
	_, err = f.index.Get(ctx, f.host, wrong)
	require.ErrorIs(t, err, kvstate.ErrCacheEntryNotFound)
	entries, err := f.index.List(ctx, f.host)
	require.NoError(t, err)
	require.Empty(t, entries)
}

func TestCacheURLKey(t *testing.T) {
	t.Parallel()
	f := newCacheFixture(t, 1<<20, false)
	ctx := context.Background()

	e, hit, err := ensure(ctx, f.cache, f.src, f.ref, nil)
	require.NoError(t, err)
	require.False(t, hit)
	urlSum := sha256.Sum256([]byte(f.ref.URL))
	require.Equal(t, hex.EncodeToString(urlSum[:]), e.Key)
	require.Equal(t, kvstate.KeyKindURL, e.KeyKind)
	require.Equal(t, f.digest, e.Checksum)

	e2, hit, err := ensure(ctx, f.cache, f.src, f.ref, nil)
	require.NoError(t, err)
	require.True(t, hit)
	require.Equal(t, e.Path, e2.Path)
}

func TestCacheCorruptFileRedownloaded(t *testing.T) {
	t.Parallel()
	f := newCacheFixture(t, 2<<20, true)
	ctx := context.Background()

	e, _, err := ensure(ctx, f.cache, f.src, f.ref, nil)
	require.NoError(t, err)
	// Bit rot: the bytes change, the modification time does not (a file
	// written through the filesystem is someone else's; it would be kept).
	st, err := os.Stat(e.Path)
	require.NoError(t, err)
	file, err := os.OpenFile(e.Path, os.O_RDWR, 0)
	require.NoError(t, err)
	b := make([]byte, 1)
	_, err = file.ReadAt(b, 12345)
	require.NoError(t, err)
	_, err = file.WriteAt([]byte{b[0] ^ 0xff}, 12345)
	require.NoError(t, err)
	require.NoError(t, file.Close())
	require.NoError(t, os.Chtimes(e.Path, st.ModTime(), st.ModTime()))

	e2, hit, err := ensure(ctx, f.cache, f.src, f.ref, nil)
	require.NoError(t, err)
	require.False(t, hit)
	got, err := testenv.FileSHA256(e2.Path)
	require.NoError(t, err)
	require.Equal(t, f.digest, got)
	require.Len(t, cacheFiles(t, f.cache), 1)

	// A missing file is downloaded again too.
	require.NoError(t, os.Remove(e2.Path))
	_, hit, err = ensure(ctx, f.cache, f.src, f.ref, nil)
	require.NoError(t, err)
	require.False(t, hit)
	require.Len(t, cacheFiles(t, f.cache), 1)
}

func TestCacheConcurrentEnsure(t *testing.T) {
	t.Parallel()
	f := newCacheFixture(t, 4<<20, true)
	ctx := context.Background()

	var wg sync.WaitGroup
	type result struct {
		e   kvstate.CacheEntry
		hit bool
		err error
	}
	results := make([]result, 4)
	for i := range results {
		wg.Go(func() {
			e, hit, err := ensure(ctx, f.cache, f.src, f.ref, nil)
			results[i] = result{e, hit, err}
		})
	}
	wg.Wait()
	misses := 0
	for _, r := range results {
		require.NoError(t, r.err)
		require.Equal(t, results[0].e.Path, r.e.Path)
		if !r.hit {
			misses++
		}
	}
	require.Equal(t, 1, misses, "exactly one caller downloads")
	require.Len(t, cacheFiles(t, f.cache), 1)
}

func TestCacheCancelRemovesPartial(t *testing.T) {
	t.Parallel()
	f := newCacheFixture(t, 8<<20, true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	_, _, err := ensure(ctx, f.cache, f.src, f.ref, func(stage string, done, _ int64) {
		if stage == stages.Download && done > 0 {
			cancel()
		}
	})
	require.ErrorIs(t, err, context.Canceled)
	require.Empty(t, cacheFiles(t, f.cache))
	_, err = f.index.Get(context.Background(), f.host, f.digest)
	require.True(t, errors.Is(err, kvstate.ErrCacheEntryNotFound))
}

func TestCacheMissingImage(t *testing.T) {
	t.Parallel()
	f := newCacheFixture(t, 1<<20, false)
	ref := f.ref
	ref.Object = "images/other.raw"
	ref.URL = strings.Replace(ref.URL, "disk.raw", "other.raw", 1)
	_, _, err := ensure(context.Background(), f.cache, f.src, ref, nil)
	require.ErrorContains(t, err, "image s3://"+f.bucket+"/images/other.raw not found on")
	require.Empty(t, cacheFiles(t, f.cache))
}

func TestCacheReconcile(t *testing.T) {
	t.Parallel()
	f := newCacheFixture(t, 1<<20, true)
	ctx := context.Background()

	e, _, err := ensure(ctx, f.cache, f.src, f.ref, nil)
	require.NoError(t, err)
	partial := filepath.Join(f.cache.partialDir(), f.digest+"-123")
	require.NoError(t, os.WriteFile(partial, []byte("half"), 0o600))
	n, err := f.cache.RemovePartials()
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.NoFileExists(t, partial)
	require.FileExists(t, e.Path)

	// Reconcile keeps entries whose file exists and drops the others.
	require.NoError(t, f.cache.Reconcile(ctx))
	_, err = f.index.Get(ctx, f.host, e.Key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(partial, []byte("half"), 0o600))
	require.NoError(t, os.Remove(e.Path))
	require.NoError(t, f.cache.Reconcile(ctx))
	_, err = f.index.Get(ctx, f.host, e.Key)
	require.ErrorIs(t, err, kvstate.ErrCacheEntryNotFound)
	require.Empty(t, cacheFiles(t, f.cache))
}

func TestCacheFileName(t *testing.T) {
	t.Parallel()
	key := strings.Repeat("0123456789abcdef", 4)
	cases := map[string]string{
		"debian-12.qcow2":                 "debian-12-0123456789abcdef.qcow2",
		"dir/sub/ubuntu 24.04.img":        "ubuntu_24.04-0123456789abcdef.img",
		"noext":                           "noext-0123456789abcdef",
		"weird/ä€.raw":                    "__-0123456789abcdef.raw",
		"dir/.hidden":                     "image-0123456789abcdef.hidden",
		"x." + strings.Repeat("y", 3):     "x-0123456789abcdef.yyy",
		strings.Repeat("a", 300) + ".raw": strings.Repeat("a", 100) + "-0123456789abcdef.raw",
	}
	for in, want := range cases {
		require.Equal(t, want, FileName(in, key), in)
	}
}
