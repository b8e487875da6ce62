package imagecache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/source"
)

// userFile writes a file of size random bytes into dir as an operator
// would (not through the cache) and returns its path and SHA-256.
func userFile(t *testing.T, dir, name string, size int, seed uint64) (string, string) {
	t.Helper()
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, b, 0o644))
	sum := sha256.Sum256(b)
	return p, hex.EncodeToString(sum[:])
}

// requireIntact checks that p still holds the bytes of digest.
func requireIntact(t *testing.T, p, digest string) {
	t.Helper()
	got, err := testenv.FileSHA256(p)
	require.NoError(t, err, "the user's file %s must survive", p)
	require.Equal(t, digest, got, "the user's file %s must survive byte for byte", p)
}

// replaceMode is how a user's file replaces a cached one.
type replaceMode string

const (
	renamedOver replaceMode = "renamed-over" // a new file renamed over it: another inode
	inPlace     replaceMode = "in-place"     // rewritten with the same size, as cp onto it does: the same inode
)

// replaceFile puts the user's own bytes at p, a cached file, as mode says,
// and returns their SHA-256.
func replaceFile(t *testing.T, p string, mode replaceMode) string {
	t.Helper()
	st, err := os.Stat(p)
	require.NoError(t, err)
	tmp, digest := userFile(t, filepath.Dir(p), "incoming.tmp", int(st.Size()), 99)
	if mode == renamedOver {
		require.NoError(t, os.Rename(tmp, p))
		return digest
	}
	time.Sleep(20 * time.Millisecond) // a later modification time, even with coarse clocks
	b, err := os.ReadFile(tmp)
	require.NoError(t, err)
	require.NoError(t, os.Remove(tmp))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	require.NoError(t, err)
	_, err = f.Write(b)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	return digest
}

// TestCacheReconcileLeavesUserFiles reproduces the attack on the sweep: files an
// operator keeps in the cache directory, named like cached images or like
// partial downloads, survive a worker start (a new Cache on the directory
// and ReconcileReport), while what the cache itself left behind goes.
func TestCacheReconcileLeavesUserFiles(t *testing.T) {
	t.Parallel()
	m, bucket := needMinIO(t)
	ctx := context.Background()
	src := testSource(t, m)
	refA, _ := putImage(t, m, bucket, "a.qcow2", 1<<20, 51, true)
	refB, digestB := putImage(t, m, bucket, "b.qcow2", 1<<20, 52, true)
	cache, index, host := newTestCache(t, Options{})
	eA, _, err := ensure(ctx, cache, src, refA, nil)
	require.NoError(t, err)
	// A crash between putting B's file in place and indexing it.
	eB, _, err := ensure(ctx, cache, src, refB, nil)
	require.NoError(t, err)
	require.NoError(t, index.Delete(ctx, host, digestB))
	// An interrupted download of the cache's own.
	partial := filepath.Join(cache.partialDir(), digestB+"-123")
	require.NoError(t, os.WriteFile(partial, []byte("half"), 0o600))

	dir := cache.Dir()
	users := map[string]string{}
	for i, name := range []string{"vmdisk-0123456789abcdef.qcow2", "node-a1b2c3d4e5f60718.img", ".partial-foo", ".partial-" + eA.Key + "-123"} {
		p, digest := userFile(t, dir, name, 64<<10, uint64(i))
		users[p] = digest
	}

	restarted, err := New(dir, host, index)
	require.NoError(t, err)
	sum, err := restarted.ReconcileReport(ctx)
	require.NoError(t, err)
	require.Equal(t, ReconcileSummary{PartialsRemoved: 1, EntriesKept: 1, OrphansRemoved: 1}, sum)
	for p, digest := range users {
		requireIntact(t, p, digest)
	}
	require.NoFileExists(t, eB.Path, "the cache's own orphan goes")
	require.NoFileExists(t, partial, "the cache's own partial download goes")
	require.FileExists(t, eA.Path)

	// And again: nothing changes.
	sum, err = restarted.ReconcileReport(ctx)
	require.NoError(t, err)
	require.Equal(t, ReconcileSummary{EntriesKept: 1}, sum)
	for p, digest := range users {
		requireIntact(t, p, digest)
	}
}

// TestCacheReplacedFileSurvives: a user's file that replaced a cached file
// under the same name (a new inode, or written into the cached file's own
// inode) survives eviction, Remove, reconcile, and the next download of the
// image, which goes to another name.
func TestCacheReplacedFileSurvives(t *testing.T) {
	t.Parallel()
	type testBundle struct {
		cache  *Cache
		index  kvstate.CacheIndex
		host   string
		src    *source.MinIO
		entry  kvstate.CacheEntry
		digest string // the user's bytes now at entry.Path
	}
	setup := func(t *testing.T, mode replaceMode) *testBundle {
		t.Helper()
		m, bucket := needMinIO(t)
		b := &testBundle{src: testSource(t, m)}
		ref, _ := putImage(t, m, bucket, "disk.raw", 1<<20, 61, true)
		b.cache, b.index, b.host = newTestCache(t, Options{MaxBytes: 1 << 10})
		var err error
		b.entry, _, err = ensure(context.Background(), b.cache, b.src, ref, nil)
		require.NoError(t, err)
		b.digest = replaceFile(t, b.entry.Path, mode)
		return b
	}
	ops := map[string]func(t *testing.T, b *testBundle){
		"evict": func(t *testing.T, b *testBundle) {
			_, err := b.cache.Evict(context.Background())
			require.NoError(t, err)
		},
		"remove": func(t *testing.T, b *testBundle) {
			require.NoError(t, b.cache.Remove(context.Background(), b.entry.Key))
		},
		"reconcile": func(t *testing.T, b *testBundle) {
			sum, err := b.cache.ReconcileReport(context.Background())
			require.NoError(t, err)
			require.Equal(t, 1, sum.ForeignKept)
		},
		"download": func(t *testing.T, b *testBundle) {
			ref, err := messaging.ParseImageURL(b.entry.SourceURL)
			require.NoError(t, err)
			e, hit, err := ensure(context.Background(), b.cache, b.src, ref, nil)
			require.NoError(t, err)
			require.False(t, hit, "the user's bytes are not the image")
			require.NotEqual(t, b.entry.Path, e.Path, "the new download does not replace the user's file")
			require.FileExists(t, e.Path)
		},
	}
	for _, mode := range []replaceMode{renamedOver, inPlace} {
		for name, op := range ops {
			t.Run(string(mode)+"/"+name, func(t *testing.T) {
				t.Parallel()
				b := setup(t, mode)
				op(t, b)
				requireIntact(t, b.entry.Path, b.digest)
				if name != "download" {
					_, err := b.index.Get(context.Background(), b.host, b.entry.Key)
					require.ErrorIs(t, err, kvstate.ErrCacheEntryNotFound, "the entry goes, the file stays")
				}
			})
		}
	}
}

// TestCacheForgedEntryLeavesUserFile: an index entry (KV, which another
// host could write) whose path names a user's file, with that file's size
// and digest, makes neither eviction, nor a cache delete, nor reconcile
// remove the file.
func TestCacheForgedEntryLeavesUserFile(t *testing.T) {
	t.Parallel()
	setup := func(t *testing.T) (*Cache, kvstate.CacheEntry, string) {
		t.Helper()
		cache, index, host := newTestCache(t, Options{MaxBytes: 1 << 10})
		p, digest := userFile(t, cache.Dir(), "vmdisk-0123456789abcdef.qcow2", 64<<10, 7)
		now := time.Now().UTC()
		e := kvstate.CacheEntry{Key: digest, KeyKind: kvstate.KeyKindSHA256, Path: p, Size: 64 << 10, Checksum: digest,
			SourceURL: "http://127.0.0.1:9000/images/vmdisk.qcow2", CreatedAt: now, LastUsed: now}
		require.NoError(t, index.Put(context.Background(), host, e))
		return cache, e, digest
	}
	ops := map[string]func(t *testing.T, c *Cache, e kvstate.CacheEntry){
		"evict": func(t *testing.T, c *Cache, _ kvstate.CacheEntry) {
			_, err := c.Evict(context.Background())
			require.NoError(t, err)
		},
		"remove": func(t *testing.T, c *Cache, e kvstate.CacheEntry) {
			require.NoError(t, c.Remove(context.Background(), e.Key))
		},
		"reconcile": func(t *testing.T, c *Cache, _ kvstate.CacheEntry) {
			_, err := c.ReconcileReport(context.Background())
			require.NoError(t, err)
		},
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cache, e, digest := setup(t)
			var foreign []string
			cache.SetOnForeignFile(func(_ context.Context, p, _ string) { foreign = append(foreign, p) })
			op(t, cache, e)
			requireIntact(t, e.Path, digest)
			require.Equal(t, []string{e.Path}, foreign, "the file left in place is reported")
		})
	}
}

// TestCacheReconcileAdoptsLegacyFiles: files an older version cached (in the
// index, without ownership records) are adopted when their name, size and
// digest are the entry's, and then removable; one whose bytes are not the
// entry's is kept, its entry dropped; an old-style partial download in the
// cache directory is not provably ours and stays.
func TestCacheReconcileAdoptsLegacyFiles(t *testing.T) {
	t.Parallel()
	m, bucket := needMinIO(t)
	ctx := context.Background()
	src := testSource(t, m)
	refA, digestA := putImage(t, m, bucket, "a.qcow2", 1<<20, 71, true)
	refB, digestB := putImage(t, m, bucket, "b.raw", 1<<20, 72, false)
	refC, digestC := putImage(t, m, bucket, "c.raw", 1<<20, 73, true)
	cache, index, host := newTestCache(t, Options{})
	var paths []string
	for _, ref := range []messaging.ImageRef{refA, refB, refC} {
		e, _, err := ensure(ctx, cache, src, ref, nil)
		require.NoError(t, err)
		paths = append(paths, e.Path)
	}
	// What an older version leaves: no state directory at all.
	require.NoError(t, os.RemoveAll(filepath.Join(cache.Dir(), stateDirName)))
	userC := replaceFile(t, paths[2], renamedOver)
	oldPartial, oldDigest := userFile(t, cache.Dir(), ".partial-"+digestA+"-123", 1<<10, 3)

	upgraded, err := New(cache.Dir(), host, index)
	require.NoError(t, err)
	sum, err := upgraded.ReconcileReport(ctx)
	require.NoError(t, err)
	require.Equal(t, ReconcileSummary{EntriesKept: 2, Adopted: 2, ForeignKept: 1}, sum)
	requireIntact(t, paths[2], userC)
	requireIntact(t, oldPartial, oldDigest)
	_, err = index.Get(ctx, host, digestC)
	require.ErrorIs(t, err, kvstate.ErrCacheEntryNotFound)

	// Adopted files are the cache's own: a delete removes them.
	e, err := index.Get(ctx, host, digestA)
	require.NoError(t, err)
	require.NoError(t, upgraded.Remove(ctx, e.Key))
	require.NoFileExists(t, paths[0])
	entries, err := index.List(ctx, host)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, digestB, entries[0].Checksum, "the URL-keyed image is adopted too")
}

// TestCacheStateDirMustBeOurs: a .provisioner in the cache directory that
// the cache did not create (no marker) is refused, its contents untouched;
// an empty one (a start that stopped before the marker) is taken.
func TestCacheStateDirMustBeOurs(t *testing.T) {
	t.Parallel()
	index, host := testIndex(t)
	t.Run("foreign directory", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		require.NoError(t, os.Mkdir(filepath.Join(dir, stateDirName), 0o755))
		p, digest := userFile(t, filepath.Join(dir, stateDirName), "notes", 100, 1)
		_, err := New(dir, host, index)
		require.ErrorIs(t, err, ErrForeignStateDir)
		require.ErrorContains(t, err, "move the directory out of the cache directory")
		requireIntact(t, p, digest)
	})
	t.Run("file", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		p, digest := userFile(t, dir, stateDirName, 100, 2)
		_, err := New(dir, host, index)
		require.ErrorIs(t, err, ErrForeignStateDir)
		requireIntact(t, p, digest)
	})
	t.Run("empty directory", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		require.NoError(t, os.Mkdir(filepath.Join(dir, stateDirName), 0o755))
		c, err := New(dir, host, index)
		require.NoError(t, err)
		_, err = New(c.Dir(), host, index)
		require.NoError(t, err, "marked: taken again")
	})
}
