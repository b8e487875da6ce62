package imagecache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// A cache entry may have a golden: its image's disk as a read-only raw
// volume on the volume backend, from which volumes are cloned (see Cloner).
// The golden belongs to the entry: it is listed on it (CacheEntry.Golden),
// counted against the cap with it, evicted and deleted with it, and never
// removed while a job uses the image. A golden that no longer matches its
// record is dropped and rebuilt by the next job.

// GoldenStore is the part of a Cloner the cache needs to remove goldens.
type GoldenStore interface {
	RemoveGolden(ctx context.Context, key string) error
	GoldenKeys(ctx context.Context) ([]string, error)
}

// ErrGoldenCorrupt: a golden's content no longer has the digest recorded
// when it was sealed.
var ErrGoldenCorrupt = errors.New("the golden no longer matches the digest recorded when it was made")

// SetGoldens registers the store of the entries' goldens; call it before use.
func (c *Cache) SetGoldens(g GoldenStore) { c.goldens = g }

// goldenLocks serializes the making of each key's golden.
type goldenLocks struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

// LockGolden takes key's golden lock, held while a job looks up, makes or
// clones from the golden; it returns the release.
func (c *Cache) LockGolden(ctx context.Context, key string) (func(), error) {
	c.glocks.mu.Lock()
	if c.glocks.m == nil {
		c.glocks.m = map[string]chan struct{}{}
	}
	ch := c.glocks.m[key]
	if ch == nil {
		ch = make(chan struct{}, 1)
		c.glocks.m[key] = ch
	}
	c.glocks.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for another job making the golden of %s: %w", key, ctx.Err())
	}
}

// updateEntry changes key's entry under its lock; fn may not return an
// error matching kvstate.ErrCacheEntryNotFound.
func (c *Cache) updateEntry(ctx context.Context, key string, fn func(e *kvstate.CacheEntry) error) error {
	unlock, err := c.lock(ctx, key)
	if err != nil {
		return err
	}
	defer unlock()
	e, err := c.index.Get(ctx, c.host, key)
	if err != nil {
		return err
	}
	if err := fn(&e); err != nil {
		return err
	}
	return c.index.Put(ctx, c.host, e)
}

// Golden returns key's golden when its entry records one and the file is
// the one sealed (device, inode, size, ctime: a change to its bytes, mode
// or flags changes its ctime), in time that does not depend on its size. A
// golden that changed is dropped, and ok is false: make it again.
func (c *Cache) Golden(ctx context.Context, key string) (g volume.Golden, ok bool, err error) {
	e, err := c.index.Get(ctx, c.host, key)
	if errors.Is(err, kvstate.ErrCacheEntryNotFound) {
		return g, false, nil
	}
	if err != nil {
		return g, false, fmt.Errorf("look up the golden of %s: %w", key, err)
	}
	if e.Golden == nil {
		return g, false, nil
	}
	if same, err := c.goldenUnchanged(ctx, *e.Golden); err != nil {
		return g, false, fmt.Errorf("look up the golden of %s: %w", key, err)
	} else if !same {
		return g, false, c.DropGolden(ctx, key, "changed since it was sealed")
	}
	return volume.Golden{Key: key, Path: e.Golden.Path, Size: e.Golden.Size, Digest: e.Golden.Digest, Immutable: e.Golden.Immutable}, true, nil
}

// goldenUnchanged reports whether the file at rec.Path is the one sealed.
func goldenUnchanged(rec kvstate.Golden) bool {
	st, err := os.Lstat(rec.Path)
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o444 {
		return false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && uint64(sys.Dev) == rec.Dev && sys.Ino == rec.Ino && st.Size() == rec.Size &&
		sys.Ctim.Nano() == rec.CtimeNs
}

// goldenUnchanged is the golden store's GoldenUnchanged, or for files the
// check of their device, inode, size, mode and ctime.
func (c *Cache) goldenUnchanged(ctx context.Context, rec kvstate.Golden) (bool, error) {
	if gi, ok := c.goldens.(volume.GoldenInspector); ok {
		return gi.GoldenUnchanged(ctx, rec)
	}
	return goldenUnchanged(rec), nil
}

// goldenDigest is the golden store's DigestGolden, or GoldenDigest.
func (c *Cache) goldenDigest(ctx context.Context, path string) (string, error) {
	if gi, ok := c.goldens.(volume.GoldenInspector); ok {
		return gi.DigestGolden(ctx, path)
	}
	return volume.GoldenDigest(ctx, path)
}

// goldenRecord describes the sealed golden g for its entry.
func (c *Cache) goldenRecord(ctx context.Context, g volume.Golden) (kvstate.Golden, error) {
	if gi, ok := c.goldens.(volume.GoldenInspector); ok {
		return gi.GoldenRecord(ctx, g)
	}
	st, err := os.Lstat(g.Path)
	if err != nil {
		return kvstate.Golden{}, fmt.Errorf("stat golden %s: %w", g.Path, err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return kvstate.Golden{}, fmt.Errorf("no device and inode for golden %s", g.Path)
	}
	return kvstate.Golden{Path: g.Path, Size: st.Size(), AllocatedBytes: sys.Blocks * 512, Digest: g.Digest,
		Dev: uint64(sys.Dev), Ino: sys.Ino, CtimeNs: sys.Ctim.Nano(), Immutable: g.Immutable}, nil
}

// AttachGolden records the sealed golden g on its entry. The image must be
// in use by the caller, so that the entry cannot go meanwhile; if it went
// anyway, the golden is removed.
func (c *Cache) AttachGolden(ctx context.Context, g volume.Golden) (kvstate.Golden, error) {
	rec, err := c.goldenRecord(ctx, g)
	if err != nil {
		return kvstate.Golden{}, err
	}
	now := time.Now().UTC()
	rec.CreatedAt, rec.VerifiedAt = now, now
	err = c.updateEntry(ctx, g.Key, func(e *kvstate.CacheEntry) error {
		e.Golden = &rec
		return nil
	})
	if err != nil {
		if c.goldens != nil {
			_ = c.goldens.RemoveGolden(context.WithoutCancel(ctx), g.Key)
		}
		return kvstate.Golden{}, fmt.Errorf("record the golden of %s on its cache entry: %w", g.Key, err)
	}
	c.changed(ctx)
	return rec, nil
}

// DropGolden removes key's golden (not the cached image) and its record;
// why says why, for the foreign-file hook's log.
func (c *Cache) DropGolden(ctx context.Context, key, why string) error {
	if c.goldens == nil {
		return nil
	}
	if err := c.goldens.RemoveGolden(ctx, key); err != nil {
		return fmt.Errorf("remove the golden of %s (%s): %w", key, why, err)
	}
	err := c.updateEntry(ctx, key, func(e *kvstate.CacheEntry) error {
		e.Golden = nil
		return nil
	})
	if err != nil && !errors.Is(err, kvstate.ErrCacheEntryNotFound) {
		return fmt.Errorf("drop the golden of %s from its cache entry (%s): %w", key, why, err)
	}
	c.changed(ctx)
	return nil
}

// VerifyGolden hashes key's golden (time proportional to its data) and
// compares it with the digest recorded when it was sealed: a mismatch drops
// the golden and returns an error matching ErrGoldenCorrupt.
func (c *Cache) VerifyGolden(ctx context.Context, g volume.Golden) error {
	got, err := c.goldenDigest(ctx, g.Path)
	if err != nil {
		return err
	}
	if got != g.Digest {
		if derr := c.DropGolden(context.WithoutCancel(ctx), g.Key, "digest mismatch"); derr != nil {
			return fmt.Errorf("%w (%s), and removing it failed: %v", ErrGoldenCorrupt, g.Path, derr)
		}
		return fmt.Errorf("%w (%s); it was removed, the next job makes it again", ErrGoldenCorrupt, g.Path)
	}
	return c.updateEntry(ctx, g.Key, func(e *kvstate.CacheEntry) error {
		if e.Golden != nil && e.Golden.Path == g.Path {
			e.Golden.VerifiedAt = time.Now().UTC()
		}
		return nil
	})
}

// reconcileGoldens, at start, drops the golden records whose file changed
// and removes the goldens (and those being prepared) that no entry records.
// Keys in use are left alone.
func (c *Cache) reconcileGoldens(ctx context.Context, sum *ReconcileSummary) error {
	if c.goldens == nil {
		return nil
	}
	entries, err := c.index.List(ctx, c.host)
	if err != nil {
		return fmt.Errorf("list cache entries of %s: %w", c.host, err)
	}
	recorded := map[string]bool{}
	for _, e := range entries {
		if e.Golden == nil {
			continue
		}
		same, err := c.goldenUnchanged(ctx, *e.Golden)
		if err != nil {
			return err
		}
		if c.busy(e.Key) || same {
			recorded[e.Key] = true
			continue
		}
		if err := c.DropGolden(ctx, e.Key, "changed since it was sealed"); err != nil {
			return err
		}
		sum.GoldensDropped++
	}
	keys, err := c.goldens.GoldenKeys(ctx)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if recorded[k] || c.busy(k) {
			continue
		}
		if err := c.goldens.RemoveGolden(ctx, k); err != nil {
			return err
		}
		sum.GoldensDropped++
	}
	return nil
}

// ScrubSummary says what a scrub checked and removed.
type ScrubSummary struct {
	// Images and Goldens count the files hashed.
	Images  int `json:"images"`
	Goldens int `json:"goldens"`
	// ImagesEvicted counts cached images (with their goldens) removed
	// because their digest no longer matched.
	ImagesEvicted int `json:"images_evicted"`
	// GoldensEvicted counts goldens removed because their digest no longer
	// matched (their cached image stays; the next job makes them again).
	GoldensEvicted int `json:"goldens_evicted"`
	// Busy counts mismatches left for the next scrub because a job was
	// using the image.
	Busy int `json:"busy"`
}

// Scrub re-hashes every cached image and every golden, off any job's path,
// and evicts what no longer matches its digest: an image with its golden,
// or a golden alone. An image a job is using is hashed but not removed
// (Busy); the next scrub tries again.
func (c *Cache) Scrub(ctx context.Context) (ScrubSummary, error) {
	var sum ScrubSummary
	entries, err := c.index.List(ctx, c.host)
	if err != nil {
		return sum, fmt.Errorf("list cache entries of %s: %w", c.host, err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return sum, err
		}
		want := e.Checksum
		if e.KeyKind == kvstate.KeyKindSHA256 {
			want = e.Key
		}
		ok, err := c.verify(ctx, e, want, func(string, int64, int64) {})
		if err != nil {
			return sum, err
		}
		sum.Images++
		if !ok {
			evicted, err := c.scrubDrop(ctx, e, func(cur kvstate.CacheEntry) error { return c.dropEntry(ctx, cur, "digest mismatch found by a scrub") })
			if err != nil {
				return sum, err
			}
			if evicted {
				sum.ImagesEvicted++
				c.changed(ctx)
			} else {
				sum.Busy++
			}
			continue
		}
		if e.Golden == nil {
			continue
		}
		if err := c.scrubGolden(ctx, e, &sum); err != nil {
			return sum, err
		}
	}
	return sum, nil
}

func (c *Cache) scrubGolden(ctx context.Context, e kvstate.CacheEntry, sum *ScrubSummary) error {
	g := *e.Golden
	got, err := c.goldenDigest(ctx, g.Path)
	sum.Goldens++
	same := false
	if err == nil && got == g.Digest {
		if same, err = c.goldenUnchanged(ctx, g); err != nil && ctx.Err() == nil {
			return err
		}
	}
	if same {
		return c.updateEntry(ctx, e.Key, func(cur *kvstate.CacheEntry) error {
			if cur.Golden != nil && cur.Golden.Path == g.Path && cur.Golden.Ino == g.Ino && cur.Golden.LVUUID == g.LVUUID {
				cur.Golden.VerifiedAt = time.Now().UTC()
			}
			return nil
		})
	}
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	dropped, err := c.scrubDrop(ctx, e, func(kvstate.CacheEntry) error {
		if c.goldens == nil {
			return nil
		}
		if err := c.goldens.RemoveGolden(ctx, e.Key); err != nil {
			return err
		}
		cur, err := c.index.Get(ctx, c.host, e.Key)
		if err != nil {
			return err
		}
		cur.Golden = nil
		return c.index.Put(ctx, c.host, cur)
	})
	if err != nil {
		return err
	}
	if dropped {
		sum.GoldensEvicted++
		c.changed(ctx)
	} else {
		sum.Busy++
	}
	return nil
}

// scrubDrop runs drop on e's current entry with its lock held and the image
// idle; false when a job uses it or the entry changed meanwhile.
func (c *Cache) scrubDrop(ctx context.Context, e kvstate.CacheEntry, drop func(cur kvstate.CacheEntry) error) (bool, error) {
	unlock, ok := c.tryLockIdle(e.Key)
	if !ok {
		return false, nil
	}
	defer unlock()
	cur, err := c.index.Get(ctx, c.host, e.Key)
	if errors.Is(err, kvstate.ErrCacheEntryNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	if cur.Path != e.Path || !cur.CreatedAt.Equal(e.CreatedAt) {
		return false, nil
	}
	return true, drop(cur)
}

// RunScrub scrubs the cache every interval until ctx ends, reporting each
// outcome to report.
func (c *Cache) RunScrub(ctx context.Context, every time.Duration, report func(ScrubSummary, error)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sum, err := c.Scrub(ctx)
		if ctx.Err() != nil {
			return
		}
		report(sum, err)
	}
}
