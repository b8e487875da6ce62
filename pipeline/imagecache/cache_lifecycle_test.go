package imagecache

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
)

func TestCacheEvictionSkipsImagesInUse(t *testing.T) {
	t.Parallel()
	m, bucket := needMinIO(t)
	ctx := context.Background()
	src := testSource(t, m)
	refA, digestA := putImage(t, m, bucket, "a.raw", 1<<20, 21, true)
	refB, digestB := putImage(t, m, bucket, "b.raw", 1<<20, 22, true)
	refC, digestC := putImage(t, m, bucket, "c.raw", 1<<20, 23, true)
	cache, index, host := newTestCache(t, Options{MaxBytes: 5 << 19}) // room for two and a half
	var changes atomic.Int64
	cache.SetOnChange(func(context.Context) { changes.Add(1) })

	// A is the least recently used, but a job holds it.
	eA, hit, releaseA, err := ensureInUse(ctx, cache, src, refA, nil)
	require.NoError(t, err)
	require.False(t, hit)
	defer releaseA()
	require.True(t, cache.InUse(digestA))
	err = cache.Remove(ctx, digestA)
	require.EqualError(t, err, "image "+digestA+" is in use by a running job")
	require.ErrorIs(t, err, ErrImageInUse)
	var inUse interface{ InUse() bool }
	require.ErrorAs(t, err, &inUse)
	require.True(t, inUse.InUse())
	require.FileExists(t, eA.Path)
	eB, _, err := ensure(ctx, cache, src, refB, nil)
	require.NoError(t, err)
	require.False(t, cache.InUse(digestB))

	before := changes.Load()
	eC, hit, err := ensure(ctx, cache, src, refC, nil)
	require.NoError(t, err)
	require.False(t, hit)
	require.Greater(t, changes.Load(), before+1, "the download and the eviction both report a change")
	require.NoFileExists(t, eB.Path, "B, the least recently used image not in use, is evicted")
	_, err = index.Get(ctx, host, digestB)
	require.ErrorIs(t, err, kvstate.ErrCacheEntryNotFound)
	require.FileExists(t, eA.Path)
	require.FileExists(t, eC.Path)
	require.ElementsMatch(t, []string{filepath.Base(eA.Path), filepath.Base(eC.Path)}, cacheFiles(t, cache))

	// Released, A goes next.
	releaseA()
	releaseA() // idempotent
	require.False(t, cache.InUse(digestA))
	_, hit, err = ensure(ctx, cache, src, refB, nil)
	require.NoError(t, err)
	require.False(t, hit)
	require.NoFileExists(t, eA.Path)
	_, err = index.Get(ctx, host, digestA)
	require.ErrorIs(t, err, kvstate.ErrCacheEntryNotFound)
	entries, err := index.List(ctx, host)
	require.NoError(t, err)
	var keys []string
	for _, e := range entries {
		keys = append(keys, e.Key)
	}
	require.ElementsMatch(t, []string{digestB, digestC}, keys)

	// Nothing over the cap: an explicit eviction removes nothing.
	sum, err := cache.Evict(ctx)
	require.NoError(t, err)
	require.Equal(t, EvictSummary{}, sum)
	// Not in use any more: Remove works.
	require.NoError(t, cache.Remove(ctx, digestC))
	require.NoFileExists(t, eC.Path)
}

func TestCacheEvictionEverythingInUse(t *testing.T) {
	t.Parallel()
	m, bucket := needMinIO(t)
	ctx := context.Background()
	src := testSource(t, m)
	refA, _ := putImage(t, m, bucket, "a.raw", 1<<20, 24, true)
	refB, _ := putImage(t, m, bucket, "b.raw", 1<<20, 25, true)
	cache, _, _ := newTestCache(t, Options{MaxBytes: 1 << 20})

	eA, _, releaseA, err := ensureInUse(ctx, cache, src, refA, nil)
	require.NoError(t, err)
	eB, _, releaseB, err := ensureInUse(ctx, cache, src, refB, nil)
	require.NoError(t, err, "the cap is soft: nothing can be evicted, the download goes on")
	require.FileExists(t, eA.Path)
	require.FileExists(t, eB.Path)
	releaseA()
	releaseB()
	sum, err := cache.Evict(ctx)
	require.NoError(t, err)
	require.Equal(t, EvictSummary{Evicted: 1, Bytes: 1 << 20}, sum)
	require.NoFileExists(t, eA.Path, "the least recently used goes")
	require.FileExists(t, eB.Path)
}

func TestCacheURLKeyRevalidated(t *testing.T) {
	t.Parallel()
	m, bucket := needMinIO(t)
	ctx := context.Background()
	src := testSource(t, m)
	ref, digest1 := putImage(t, m, bucket, "images/disk.raw", 1<<20, 31, false)
	cache, index, host := newTestCache(t, Options{})

	e1, hit, err := ensure(ctx, cache, src, ref, nil)
	require.NoError(t, err)
	require.False(t, hit)
	require.Equal(t, kvstate.KeyKindURL, e1.KeyKind)
	require.Equal(t, digest1, e1.Checksum)
	require.NotEmpty(t, e1.ETag)
	_, hit, err = ensure(ctx, cache, src, ref, nil)
	require.NoError(t, err)
	require.True(t, hit, "unchanged object: served from the cache")

	// Same URL, new content.
	_, digest2 := putImage(t, m, bucket, "images/disk.raw", 1<<20, 32, false)
	require.NotEqual(t, digest1, digest2)
	e2, hit, err := ensure(ctx, cache, src, ref, nil)
	require.NoError(t, err)
	require.False(t, hit, "the cached copy is stale")
	require.Equal(t, e1.Key, e2.Key)
	require.Equal(t, digest2, e2.Checksum)
	require.NotEqual(t, e1.ETag, e2.ETag)
	got, err := testenv.FileSHA256(e2.Path)
	require.NoError(t, err)
	require.Equal(t, digest2, got)
	stored, err := index.Get(ctx, host, e1.Key)
	require.NoError(t, err)
	require.Equal(t, digest2, stored.Checksum)
	require.Len(t, cacheFiles(t, cache), 1)

	// A different size is stale too.
	_, digest3 := putImage(t, m, bucket, "images/disk.raw", 2<<20, 33, false)
	e3, hit, err := ensure(ctx, cache, src, ref, nil)
	require.NoError(t, err)
	require.False(t, hit)
	require.Equal(t, digest3, e3.Checksum)
	require.Equal(t, int64(2<<20), e3.Size)
}

func TestCacheReconcileSummary(t *testing.T) {
	t.Parallel()
	m, bucket := needMinIO(t)
	ctx := context.Background()
	src := testSource(t, m)
	refA, _ := putImage(t, m, bucket, "a.qcow2", 1<<20, 41, true)
	refB, _ := putImage(t, m, bucket, "b.qcow2", 1<<20, 42, true)
	refC, _ := putImage(t, m, bucket, "c.qcow2", 1<<20, 43, true)
	cache, index, host := newTestCache(t, Options{})
	eA, _, err := ensure(ctx, cache, src, refA, nil)
	require.NoError(t, err)
	eB, _, err := ensure(ctx, cache, src, refB, nil)
	require.NoError(t, err)
	eC, _, err := ensure(ctx, cache, src, refC, nil)
	require.NoError(t, err)
	// Orphans: files the cache put in place whose entries were never
	// written (a crash in between).
	var orphans []string
	for i, object := range []string{"old.qcow2", "noext"} {
		ref, digest := putImage(t, m, bucket, object, 1<<10, uint64(44+i), true)
		e, _, err := ensure(ctx, cache, src, ref, nil)
		require.NoError(t, err)
		require.NoError(t, index.Delete(ctx, host, digest))
		orphans = append(orphans, e.Path)
	}

	dir := cache.Dir()
	write := func(name string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte("x"), 0o600))
		return p
	}
	partial := filepath.Join(cache.partialDir(), eA.Key+"-123")
	require.NoError(t, os.WriteFile(partial, []byte("x"), 0o600))
	// Files the cache did not create stay, whatever their names.
	unrelated := []string{write("notes.txt"), write("user-image.qcow2"), write("old-0123456789ABCDEF.qcow2"),
		write("old-0123456789abcdef.qcow2"), write("noext-fedcba9876543210"), write(".partial-" + eA.Key + "-123")}
	require.NoError(t, os.Remove(eB.Path)) // entry without a file
	wrong := eC
	wrong.Size += 8
	require.NoError(t, index.Put(ctx, host, wrong)) // file of the wrong size

	var changes atomic.Int64
	cache.SetOnChange(func(context.Context) { changes.Add(1) })
	sum, err := cache.ReconcileReport(ctx)
	require.NoError(t, err)
	require.Equal(t, ReconcileSummary{PartialsRemoved: 1, EntriesKept: 1, MissingDropped: 1, SizeMismatchDropped: 1, OrphansRemoved: 2}, sum)
	require.Positive(t, changes.Load())
	require.NoFileExists(t, partial)
	for _, p := range orphans {
		require.NoFileExists(t, p)
	}
	require.NoFileExists(t, eC.Path)
	require.FileExists(t, eA.Path)
	for _, p := range unrelated {
		require.FileExists(t, p, "files the cache did not create are left alone")
	}
	entries, err := index.List(ctx, host)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, eA.Key, entries[0].Key)

	// Nothing left to do.
	sum, err = cache.ReconcileReport(ctx)
	require.NoError(t, err)
	require.Equal(t, ReconcileSummary{EntriesKept: 1}, sum)

	// With a cap the cache is over, reconciling evicts.
	capped, err := NewWithOptions(dir, host, index, Options{MaxBytes: 1 << 10})
	require.NoError(t, err)
	sum, err = capped.ReconcileReport(ctx)
	require.NoError(t, err)
	require.Equal(t, ReconcileSummary{EntriesKept: 1, Evicted: 1, EvictedBytes: 1 << 20}, sum)
	require.NoFileExists(t, eA.Path)
	names := cacheFiles(t, capped)
	sort.Strings(names)
	require.Equal(t, []string{".partial-" + eA.Key + "-123", "noext-fedcba9876543210", "notes.txt", "old-0123456789ABCDEF.qcow2",
		"old-0123456789abcdef.qcow2", "user-image.qcow2"}, names)
}
