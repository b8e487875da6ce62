package imagecache

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/source"
	"github.com/libvirt-volume-provisioner/provisioner/volume/file"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// goldenFixture is a cache in a plain directory whose goldens live on a
// reflink file system, as on a host whose volumes are on XFS.
type goldenFixture struct {
	cache   *Cache
	index   kvstate.CacheIndex
	host    string
	backend *file.Backend
	src     *source.MinIO
	m       *testenv.MinIO
	bucket  string
}

// goldenSize is an image's virtual size in these tests: not a multiple of 4 KiB.
const goldenSize = 24<<20 + 512

func newGoldenFixture(t *testing.T, opts Options) *goldenFixture {
	t.Helper()
	m, bucket := needMinIO(t)
	b, err := file.New(filepath.Join(testenv.FileSystem(t, testenv.XFS), "volumes"))
	require.NoError(t, err)
	ok, reason := b.CloneSupport()
	require.True(t, ok, reason)
	cache, index, host := newTestCache(t, opts)
	cache.SetGoldens(b)
	return &goldenFixture{cache: cache, index: index, host: host, backend: b, src: testSource(t, m), m: m, bucket: bucket}
}

// putQCOW2 uploads a compressed qcow2 image with its .sha256 and returns
// its ref and raw reference.
func (f *goldenFixture) putQCOW2(t *testing.T, object string, seed uint64) (messaging.ImageRef, string) {
	t.Helper()
	qcow, raw := testenv.QCOW2Image(t, t.TempDir(), goldenSize, seed)
	url, _, err := f.m.PutImage(context.Background(), f.bucket, object, qcow, true)
	require.NoError(t, err)
	ref, err := messaging.ParseImageURL(url)
	require.NoError(t, err)
	return ref, raw
}

// ensureGolden caches ref, makes its golden from the cached file as the
// worker does and records it; the image stays in use until release.
func (f *goldenFixture) ensureGolden(t *testing.T, ref messaging.ImageRef) (kvstate.CacheEntry, volume.Golden, func()) {
	t.Helper()
	ctx := context.Background()
	e, _, release, err := ensureInUse(ctx, f.cache, f.src, ref, nil)
	require.NoError(t, err)
	img, err := image.Inspect(e.Path, "qcow2")
	require.NoError(t, err)
	prep, err := f.backend.PrepareGolden(ctx, e.Key, img.VirtualSize)
	require.NoError(t, err)
	require.NoError(t, convert.Native{}.Convert(ctx, img, e.Path, prep, nil))
	g, err := f.backend.SealGolden(ctx, e.Key, prep)
	require.NoError(t, err)
	_, err = f.cache.AttachGolden(ctx, g)
	require.NoError(t, err)
	return e, g, release
}

func (f *goldenFixture) entry(t *testing.T, key string) (kvstate.CacheEntry, bool) {
	t.Helper()
	e, err := f.index.Get(context.Background(), f.host, key)
	if errors.Is(err, kvstate.ErrCacheEntryNotFound) {
		return e, false
	}
	require.NoError(t, err)
	return e, true
}

// flipByte changes one byte of a data region of the file at p, clearing
// the immutable flag and the read-only mode first as an attacker with root
// would.
func flipByte(t *testing.T, p string, off int64) {
	t.Helper()
	require.NoError(t, volume.ClearImmutable(p))
	require.NoError(t, os.Chmod(p, 0o644))
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	require.NoError(t, err)
	b := make([]byte, 1)
	_, err = f.ReadAt(b, off)
	require.NoError(t, err)
	b[0] ^= 0xff
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.NoError(t, os.Chmod(p, 0o444))
}

// firstData is the offset of the first non-zero byte of the file at p.
func firstData(t *testing.T, p string) int64 {
	t.Helper()
	data, err := os.ReadFile(p)
	require.NoError(t, err)
	for i, c := range data {
		if c != 0 {
			return int64(i)
		}
	}
	t.Fatalf("%s holds only zeros", p)
	return 0
}

func TestCacheGoldenLifecycle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newGoldenFixture(t, Options{})
	refA, rawA := f.putQCOW2(t, "a.qcow2", 31)
	e, g, release := f.ensureGolden(t, refA)

	// Listed on the entry, with what the cap counts.
	got, ok := f.entry(t, e.Key)
	require.True(t, ok)
	require.NotNil(t, got.Golden)
	require.Equal(t, g.Path, got.Golden.Path)
	require.Equal(t, g.Digest, got.Golden.Digest)
	require.Equal(t, int64(goldenSize), got.Golden.Size)
	require.True(t, got.Golden.Immutable)
	require.Positive(t, got.Golden.AllocatedBytes)
	require.Equal(t, got.Size+got.Golden.AllocatedBytes, got.Bytes())
	found, ok, err := f.cache.Golden(ctx, e.Key)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, g, found)

	clone, err := f.backend.Clone(ctx, g, "vm-a", 32<<20)
	require.NoError(t, err)

	// Never removed while a job uses the image.
	require.ErrorIs(t, f.cache.Remove(ctx, e.Key), ErrImageInUse)
	require.FileExists(t, g.Path)
	release()

	// Deleted by checksum with its entry; the clone stays whole.
	require.NoError(t, f.cache.Remove(ctx, e.Key))
	require.NoFileExists(t, g.Path)
	require.NoFileExists(t, e.Path)
	_, ok = f.entry(t, e.Key)
	require.False(t, ok)
	testenv.RequireVolumeIs(t, clone.Path, clone.Size, rawA)
}

func TestCacheGoldenEvictedWithItsImage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newGoldenFixture(t, Options{})
	a, rawA := f.putQCOW2(t, "a.qcow2", 41)
	b, _ := f.putQCOW2(t, "b.qcow2", 42)
	eA, gA, releaseA := f.ensureGolden(t, a)
	cloneA, err := f.backend.Clone(ctx, gA, "vm-a", 32<<20)
	require.NoError(t, err)
	withGolden, _ := f.entry(t, eA.Key)

	// A cap that holds one image with its golden, not two: B evicts A,
	// but only once no job uses it.
	f.cache.opts.MaxBytes = withGolden.Bytes() * 3 / 2
	eB, _, releaseB := f.ensureGolden(t, b)
	require.FileExists(t, gA.Path, "A is in use: neither it nor its golden is evicted")
	releaseA()
	releaseB()
	sum, err := f.cache.Evict(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, sum.Evicted)
	require.Equal(t, withGolden.Bytes(), sum.Bytes, "the eviction freed the image and its golden")
	_, ok := f.entry(t, eA.Key)
	require.False(t, ok, "A, the least recently used, went")
	require.NoFileExists(t, gA.Path)
	require.NoFileExists(t, eA.Path)
	_, ok = f.entry(t, eB.Key)
	require.True(t, ok)
	testenv.RequireVolumeIs(t, cloneA.Path, cloneA.Size, rawA)
}

func TestCacheGoldenChangedIsDropped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newGoldenFixture(t, Options{})
	ref, _ := f.putQCOW2(t, "a.qcow2", 51)
	e, g, release := f.ensureGolden(t, ref)
	defer release()

	// A change of mode alone changes the ctime: found without hashing.
	require.NoError(t, volume.ClearImmutable(g.Path))
	require.NoError(t, os.Chmod(g.Path, 0o444))
	_, ok, err := f.cache.Golden(ctx, e.Key)
	require.NoError(t, err)
	require.False(t, ok)
	require.NoFileExists(t, g.Path)
	got, _ := f.entry(t, e.Key)
	require.Nil(t, got.Golden)
	require.FileExists(t, e.Path, "the cached image stays: only the golden is made again")
}

func TestCacheVerifyGoldenFindsCorruption(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newGoldenFixture(t, Options{})
	ref, _ := f.putQCOW2(t, "a.qcow2", 61)
	e, g, release := f.ensureGolden(t, ref)
	defer release()
	require.NoError(t, f.cache.VerifyGolden(ctx, g))

	flipByte(t, g.Path, firstData(t, g.Path))
	err := f.cache.VerifyGolden(ctx, g)
	require.ErrorIs(t, err, ErrGoldenCorrupt)
	require.NoFileExists(t, g.Path)
	got, _ := f.entry(t, e.Key)
	require.Nil(t, got.Golden)
}

func TestCacheScrub(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newGoldenFixture(t, Options{})
	a, _ := f.putQCOW2(t, "a.qcow2", 71)
	b, _ := f.putQCOW2(t, "b.qcow2", 72)
	eA, gA, releaseA := f.ensureGolden(t, a)
	eB, gB, releaseB := f.ensureGolden(t, b)
	releaseB()
	before, _ := f.entry(t, eA.Key)

	sum, err := f.cache.Scrub(ctx)
	require.NoError(t, err)
	require.Equal(t, ScrubSummary{Images: 2, Goldens: 2}, sum)
	after, _ := f.entry(t, eA.Key)
	require.True(t, after.Golden.VerifiedAt.After(before.Golden.VerifiedAt), "the scrub records when it verified")

	// A corrupted golden of an image in use is found, and left for the
	// next scrub while the job runs.
	flipByte(t, gA.Path, firstData(t, gA.Path))
	sum, err = f.cache.Scrub(ctx)
	require.NoError(t, err)
	require.Equal(t, ScrubSummary{Images: 2, Goldens: 2, Busy: 1}, sum)
	require.FileExists(t, gA.Path)
	releaseA()
	sum, err = f.cache.Scrub(ctx)
	require.NoError(t, err)
	require.Equal(t, ScrubSummary{Images: 2, Goldens: 2, GoldensEvicted: 1}, sum)
	require.NoFileExists(t, gA.Path)
	got, ok := f.entry(t, eA.Key)
	require.True(t, ok, "the cached image itself is intact and stays")
	require.Nil(t, got.Golden)
	require.FileExists(t, eA.Path)

	// A corrupted cached image goes with its golden.
	flipByte(t, eB.Path, 4096)
	sum, err = f.cache.Scrub(ctx)
	require.NoError(t, err)
	require.Equal(t, ScrubSummary{Images: 2, ImagesEvicted: 1}, sum)
	_, ok = f.entry(t, eB.Key)
	require.False(t, ok)
	require.NoFileExists(t, gB.Path)
	// Changed in place, the file no longer matches its ownership record:
	// the cache cannot prove it its own, so it is left (cache_owner.go).
	require.FileExists(t, eB.Path)
}

func TestCacheReconcileRemovesUnrecordedGoldens(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newGoldenFixture(t, Options{})
	ref, _ := f.putQCOW2(t, "a.qcow2", 81)
	e, g, release := f.ensureGolden(t, ref)
	release()
	// A job that stopped while making a golden of another image.
	orphan, err := f.backend.PrepareGolden(ctx, "bb", 1<<20)
	require.NoError(t, err)

	sum, err := f.cache.ReconcileReport(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, sum.GoldensDropped)
	require.NoFileExists(t, orphan.Path)
	require.FileExists(t, g.Path, "a recorded golden stays")
	got, _ := f.entry(t, e.Key)
	require.NotNil(t, got.Golden)
}
