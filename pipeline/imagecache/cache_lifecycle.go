package imagecache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/source"
)

// Defaults of Options.
const (
	DefaultRetryBudget  = 2 * time.Minute
	DefaultRetryInitial = 200 * time.Millisecond
	DefaultRetryMax     = 10 * time.Second
	DefaultStallTimeout = time.Minute
	DefaultMinFreeBytes = 64 << 20
)

// Options tunes a Cache. Zero fields take the defaults above.
type Options struct {
	// MaxBytes caps the bytes of cached images and their goldens (the space
	// a golden takes, not its size); least recently used images
	// that no job is using are evicted to stay under it. 0 is no cap. The
	// cap is soft: when every image is in use, downloads go on and a later
	// one evicts.
	MaxBytes int64
	// MinFreeBytes is the free space left in the cache's filesystem after
	// a download (a download that would leave less is refused after
	// eviction). 0 is DefaultMinFreeBytes; negative is none.
	MinFreeBytes int64
	// RetryBudget is how long the object store may keep failing with
	// transient errors (refused or reset connections, timeouts, 5xx,
	// SlowDown) before a download gives up; progress restarts the clock.
	// 0 is DefaultRetryBudget; negative disables retries.
	RetryBudget time.Duration
	// RetryInitial is the first backoff; it doubles up to RetryMax.
	RetryInitial time.Duration
	RetryMax     time.Duration
	// StallTimeout abandons (and retries) a request or download that has
	// received nothing for this long. 0 is DefaultStallTimeout.
	StallTimeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.MinFreeBytes == 0 {
		o.MinFreeBytes = DefaultMinFreeBytes
	} else if o.MinFreeBytes < 0 {
		o.MinFreeBytes = 0
	}
	if o.RetryBudget == 0 {
		o.RetryBudget = DefaultRetryBudget
	}
	if o.RetryInitial <= 0 {
		o.RetryInitial = DefaultRetryInitial
	}
	if o.RetryMax <= 0 {
		o.RetryMax = DefaultRetryMax
	}
	if o.RetryMax < o.RetryInitial {
		o.RetryMax = o.RetryInitial
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = DefaultStallTimeout
	}
	return o
}

// retrier paces retries of transient errors: exponential backoff with
// jitter, giving up once failures have lasted the retry budget.
type retrier struct {
	opts     Options
	start    time.Time // first failure since the last progress; zero: none
	delay    time.Duration
	attempts int
}

func (c *Cache) newRetrier() *retrier { return &retrier{opts: c.opts} }

// progressed ends a streak of failures.
func (r *retrier) progressed() { r.start, r.attempts = time.Time{}, 0 }

// wait returns err itself when it cannot heal (or ctx ended: ctx's
// error), an error saying the budget is spent, or nil after sleeping the
// backoff: then try again.
func (r *retrier) wait(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if !source.IsTransient(err) {
		return err
	}
	now := time.Now()
	if r.start.IsZero() {
		r.start, r.delay = now, r.opts.RetryInitial
	}
	r.attempts++
	elapsed := now.Sub(r.start)
	if r.opts.RetryBudget < 0 {
		return err
	}
	if elapsed >= r.opts.RetryBudget {
		return fmt.Errorf("gave up after %d attempts over %s (retry budget %s): %w", r.attempts, elapsed.Round(time.Millisecond), r.opts.RetryBudget, err)
	}
	d := time.Duration(float64(r.delay) * (0.8 + 0.4*rand.Float64()))
	if left := r.opts.RetryBudget - elapsed; d > left {
		d = left
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	r.delay = min(2*r.delay, r.opts.RetryMax)
	return nil
}

// retry runs fn until it succeeds, fails for good or the budget is spent.
func (c *Cache) retry(ctx context.Context, fn func() error) error {
	rt := c.newRetrier()
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if werr := rt.wait(ctx, err); werr != nil {
			return werr
		}
	}
}

// inflight is a download running: its announced size and bytes written.
type inflight struct {
	size    int64
	written atomic.Int64
}

// freeBytes is the space available to the cache in its filesystem.
func (c *Cache) freeBytes() (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(c.dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", c.dir, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// pending returns, over the downloads running, the bytes they will add to
// the cache and the bytes they have still to write. c.mu must be held.
func (c *Cache) pending() (size, remaining int64) {
	for _, f := range c.inflight {
		if f.size > 0 {
			size += f.size
			remaining += max(0, f.size-f.written.Load())
		}
	}
	return size, remaining
}

// reserve makes room for a download of size bytes (-1: unknown) of key,
// evicting as needed, checks the free space and registers the download.
func (c *Cache) reserve(ctx context.Context, key string, size int64) (*inflight, error) {
	c.evictMu.Lock()
	defer c.evictMu.Unlock()
	fl := &inflight{size: size}
	if size >= 0 {
		if _, err := c.evictLocked(ctx, size); err != nil {
			return nil, err
		}
		if free, err := c.freeBytes(); err == nil {
			c.mu.Lock()
			_, remaining := c.pending()
			c.mu.Unlock()
			avail := free - remaining
			if avail < size+c.opts.MinFreeBytes {
				capText := "none"
				if c.opts.MaxBytes > 0 {
					capText = strconv.FormatInt(c.opts.MaxBytes, 10) + " bytes"
				}
				return nil, fmt.Errorf("not enough space in the image cache %s: the image needs %d bytes, %d are free (cache cap %s; %d bytes are kept free; images in use are never evicted)",
					c.dir, size, max(0, avail), capText, c.opts.MinFreeBytes)
			}
		}
	}
	c.mu.Lock()
	c.inflight[key] = fl
	c.mu.Unlock()
	return fl, nil
}

func (c *Cache) unreserve(key string) {
	c.mu.Lock()
	delete(c.inflight, key)
	c.mu.Unlock()
}

// EvictSummary says what an eviction removed.
type EvictSummary struct {
	Evicted int   `json:"evicted"`
	Bytes   int64 `json:"bytes"`
}

// Evict removes least recently used images that no job is using until the
// cache is under its cap and the filesystem keeps its free-space reserve,
// or only images in use are left. It runs after every download; call it
// to apply a lowered cap.
func (c *Cache) Evict(ctx context.Context) (EvictSummary, error) {
	c.evictMu.Lock()
	defer c.evictMu.Unlock()
	return c.evictLocked(ctx, 0)
}

// evictLocked evicts so that need more bytes fit; c.evictMu is held.
func (c *Cache) evictLocked(ctx context.Context, need int64) (EvictSummary, error) {
	var sum EvictSummary
	c.mu.Lock()
	pendingSize, _ := c.pending()
	c.mu.Unlock()
	over := func(total int64) bool {
		if c.opts.MaxBytes > 0 && total+pendingSize+need > c.opts.MaxBytes {
			return true
		}
		free, err := c.freeBytes()
		if err != nil {
			return false
		}
		c.mu.Lock()
		_, remaining := c.pending()
		c.mu.Unlock()
		return free-remaining < need+c.opts.MinFreeBytes
	}
	if c.opts.MaxBytes == 0 && !over(0) {
		return sum, nil
	}
	entries, err := c.index.List(ctx, c.host)
	if err != nil {
		return sum, fmt.Errorf("list cache entries of %s: %w", c.host, err)
	}
	var total int64
	for _, e := range entries {
		total += e.Bytes()
	}
	if !over(total) {
		return sum, nil
	}
	sort.SliceStable(entries, func(i, j int) bool {
		a, b := entries[i], entries[j]
		if !a.LastUsed.Equal(b.LastUsed) {
			return a.LastUsed.Before(b.LastUsed)
		}
		if !a.CreatedAt.Equal(b.CreatedAt) {
			return a.CreatedAt.Before(b.CreatedAt)
		}
		return a.Key < b.Key
	})
	defer func() {
		if sum.Evicted > 0 {
			c.changed(ctx)
		}
	}()
	for _, e := range entries {
		if !over(total) {
			break
		}
		unlock, ok := c.tryLockIdle(e.Key)
		if !ok {
			continue
		}
		cur, err := c.index.Get(ctx, c.host, e.Key)
		if errors.Is(err, kvstate.ErrCacheEntryNotFound) {
			unlock()
			total -= e.Bytes()
			continue
		}
		if err == nil {
			err = c.dropEntry(ctx, cur, "evicted")
		}
		unlock()
		if err != nil {
			return sum, fmt.Errorf("evict cached image %s: %w", e.Path, err)
		}
		total -= e.Bytes()
		sum.Evicted++
		sum.Bytes += cur.Bytes()
	}
	if sum.Evicted > 0 {
		if err := fsutil.SyncDir(c.dir); err != nil {
			return sum, err
		}
	}
	return sum, nil
}

// ErrImageInUse matches (errors.Is) the error of Remove for an image in use.
var ErrImageInUse = errors.New("image is in use by a running job")

// ImageInUseError is Remove's error for an image a job is using or
// downloading. errors.Is(err, ErrImageInUse) holds, and it has InUse().
type ImageInUseError struct{ Key string }

func (e *ImageInUseError) Error() string {
	return "image " + e.Key + " is in use by a running job"
}

// InUse reports true: the image is in use.
func (e *ImageInUseError) InUse() bool { return true }

// Is makes errors.Is(err, ErrImageInUse) true.
func (e *ImageInUseError) Is(target error) bool { return target == ErrImageInUse }

// Remove deletes key's entry and its file (an image found unusable, or a
// deletion asked for); a file the cache did not create stays (see
// removeOwned), only the entry goes. It refuses while a job is using or downloading the
// image: release your own Acquire first.
func (c *Cache) Remove(ctx context.Context, key string) error {
	if c.InUse(key) {
		return &ImageInUseError{Key: key}
	}
	unlock, err := c.lock(ctx, key)
	if err != nil {
		return err
	}
	defer unlock()
	if c.InUse(key) {
		return &ImageInUseError{Key: key}
	}
	e, err := c.index.Get(ctx, c.host, key)
	if errors.Is(err, kvstate.ErrCacheEntryNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := c.dropEntry(ctx, e, "deleted from the cache"); err != nil {
		return err
	}
	c.changed(ctx)
	return nil
}

// RemovePartials removes the download files a crashed process left behind
// in the cache's partial directory (not those of downloads running now) and
// returns how many it removed. Nothing outside that directory is touched.
func (c *Cache) RemovePartials() (int, error) {
	dir := c.partialDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("read the cache's partial directory %s: %w", dir, err)
	}
	n := 0
	for _, d := range ents {
		if !d.Type().IsRegular() {
			continue
		}
		if key, _, ok := strings.Cut(d.Name(), "-"); ok && c.busy(key) {
			continue
		}
		p := filepath.Join(dir, d.Name())
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return n, fmt.Errorf("remove partial download %s: %w", p, err)
		}
		n++
	}
	if n > 0 {
		return n, fsutil.SyncDir(dir)
	}
	return n, nil
}

// busy reports whether key is in use or being downloaded.
func (c *Cache) busy(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, down := c.inflight[key]
	return down || c.inUse[key] > 0
}

// ReconcileSummary says what ReconcileReport changed.
type ReconcileSummary struct {
	// PartialsRemoved counts interrupted downloads removed from the cache's
	// partial directory.
	PartialsRemoved int `json:"partials_removed"`
	// EntriesKept counts index entries whose file is there with its size.
	EntriesKept int `json:"entries_kept"`
	// MissingDropped counts index entries dropped because their file is
	// missing, not a regular file, or outside the cache directory.
	MissingDropped int `json:"missing_dropped"`
	// SizeMismatchDropped counts index entries dropped, with their file,
	// because the file's size differs from the entry's.
	SizeMismatchDropped int `json:"size_mismatch_dropped"`
	// OrphansRemoved counts files the cache created (their ownership record
	// matches) that no index entry names, removed: a download that stopped
	// between putting the file in place and indexing it.
	OrphansRemoved int `json:"orphans_removed"`
	// Adopted counts indexed files cached by a version without ownership
	// records that proved to be the entry's image (name, size and SHA-256)
	// and are now recorded as the cache's own.
	Adopted int `json:"adopted,omitempty"`
	// ForeignKept counts files left in place because the cache cannot prove
	// it created them (no ownership record matches: someone else wrote or
	// replaced them), though an index entry or a stale record named them;
	// those entries and records are dropped.
	ForeignKept int `json:"foreign_kept,omitempty"`
	// GoldensDropped counts goldens removed: changed since they were sealed,
	// or recorded on no entry (a job that stopped while making one).
	GoldensDropped int `json:"goldens_dropped,omitempty"`
	// Evicted and EvictedBytes: images evicted to get under the cap.
	Evicted      int   `json:"evicted"`
	EvictedBytes int64 `json:"evicted_bytes"`
}

// Reconcile is ReconcileReport without the summary.
func (c *Cache) Reconcile(ctx context.Context) error {
	_, err := c.ReconcileReport(ctx)
	return err
}

// ReconcileReport brings the directory and this host's index entries into
// agreement, at start: it removes interrupted downloads from the partial
// directory; drops entries whose file is missing, and entries whose file
// has another size along with the file; adopts the files older versions
// cached (see adoptLegacy); removes files it created that no entry names;
// then evicts to the cap. It removes only files whose ownership record
// matches them: any other file, whatever its name, stays (its entry is
// dropped). Images in use or being downloaded are left alone.
func (c *Cache) ReconcileReport(ctx context.Context) (ReconcileSummary, error) {
	var sum ReconcileSummary
	n, err := c.RemovePartials()
	sum.PartialsRemoved = n
	if err != nil {
		return sum, err
	}
	entries, err := c.index.List(ctx, c.host)
	if err != nil {
		return sum, fmt.Errorf("list cache entries of %s: %w", c.host, err)
	}
	changed := false
	defer func() {
		if changed {
			c.changed(ctx)
		}
	}()
	named := map[string]bool{}
	for _, e := range entries {
		if c.busy(e.Key) {
			named[filepath.Base(e.Path)] = true
			sum.EntriesKept++
			continue
		}
		keep, err := c.reconcileEntry(ctx, e, &sum)
		if err != nil {
			return sum, err
		}
		if keep {
			named[filepath.Base(e.Path)] = true
			continue
		}
		if err := c.index.Delete(ctx, c.host, e.Key); err != nil {
			return sum, fmt.Errorf("drop cache entry of %s: %w", e.Path, err)
		}
		changed = true
	}
	removed, err := c.sweepRecords(ctx, named, &sum)
	changed = changed || removed
	if err != nil {
		return sum, err
	}
	if err := c.reconcileGoldens(ctx, &sum); err != nil {
		return sum, err
	}
	ev, err := c.Evict(ctx)
	sum.Evicted, sum.EvictedBytes = ev.Evicted, ev.Bytes
	return sum, err
}

// reconcileEntry checks one entry's file, counting what it finds in sum,
// and reports whether the entry stays; the caller drops it otherwise. It
// removes the file only when the cache created it and its size is wrong.
func (c *Cache) reconcileEntry(ctx context.Context, e kvstate.CacheEntry, sum *ReconcileSummary) (bool, error) {
	if !c.inDir(e.Path) {
		sum.MissingDropped++
		return false, nil
	}
	name := filepath.Base(e.Path)
	st, err := os.Lstat(e.Path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		sum.MissingDropped++
		return false, c.removeRecord(name)
	case err != nil:
		return false, fmt.Errorf("check cached image %s: %w", e.Path, err)
	case !st.Mode().IsRegular():
		sum.MissingDropped++ // not a regular file: not ours to remove
		return false, nil
	}
	rec, err := c.readRecord(name)
	if errors.Is(err, os.ErrNotExist) {
		adopted, err := c.adoptLegacy(ctx, e)
		if err != nil {
			return false, err
		}
		if adopted {
			sum.Adopted++
			sum.EntriesKept++
			return true, nil
		}
	}
	if err != nil || !rec.matches(st) {
		c.foreign(ctx, e.Path, "its cache entry is dropped, the file is left in place: the cache did not create it (no ownership record matches it)")
		sum.ForeignKept++
		return false, c.removeRecord(name)
	}
	if st.Size() == e.Size {
		sum.EntriesKept++
		return true, nil
	}
	if _, err := c.removeOwned(ctx, e.Path, "cached image of the wrong size"); err != nil {
		return false, err
	}
	sum.SizeMismatchDropped++
	return false, nil
}

// sweepRecords goes over the ownership records: a record whose file no
// entry names (and is not in use) is an orphan, removed with its file when
// the record matches it; a record of a missing file, or of a file someone
// else replaced (left in place), is dropped. It reports whether it removed
// a file.
func (c *Cache) sweepRecords(ctx context.Context, named map[string]bool, sum *ReconcileSummary) (bool, error) {
	dir := filepath.Join(c.state, ownedDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false, fmt.Errorf("read the cache's ownership records %s: %w", dir, err)
	}
	removedAny := false
	for _, d := range ents {
		name := d.Name()
		if tmp, _ := filepath.Match(recordTmpGlob, name); tmp {
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return removedAny, fmt.Errorf("remove unfinished ownership record %s: %w", name, err)
			}
			continue
		}
		if named[name] {
			continue
		}
		rec, err := c.readRecord(name)
		if err == nil && c.busy(rec.Key) {
			continue
		}
		p := filepath.Join(c.dir, name)
		if err != nil {
			// An unreadable record proves nothing: drop it, keep the file.
			if err := c.removeRecord(name); err != nil {
				return removedAny, err
			}
			continue
		}
		_, serr := os.Lstat(p)
		removed, err := c.removeOwned(ctx, p, "unindexed cache file")
		if err != nil {
			return removedAny, fmt.Errorf("remove unindexed cache file %s: %w", p, err)
		}
		switch {
		case removed:
			sum.OrphansRemoved++
			removedAny = true
		case serr == nil:
			sum.ForeignKept++
		}
	}
	return removedAny, nil
}
