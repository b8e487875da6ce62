package imagecache

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/source"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"
)

// ErrCachedImageCorrupt: a cached image no longer matches its digest.
var ErrCachedImageCorrupt = errors.New("the cached image no longer matches its checksum")

// hitVerifier returns the digest check of a cache hit whose check was
// left to the caller: a mismatch removes the image from the cache.
func (c *Cache) hitVerifier(e kvstate.CacheEntry) func(context.Context) error {
	want := e.Checksum
	if e.KeyKind == kvstate.KeyKindSHA256 {
		want = e.Key
	}
	return func(ctx context.Context) error {
		ok, err := c.verify(ctx, e, want, func(string, int64, int64) {})
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if derr := c.dropEntry(context.WithoutCancel(ctx), e, "digest mismatch"); derr != nil {
			return fmt.Errorf("%w (%s), and removing it failed: %v", ErrCachedImageCorrupt, e.Path, derr)
		}
		c.changed(ctx)
		return fmt.Errorf("%w (%s); it was removed from the cache, so the job can be submitted again", ErrCachedImageCorrupt, e.Path)
	}
}

// quickCheck is the check of a hit whose digest is verified later: the file
// is there, regular, in the cache directory, and of the recorded size.
func (c *Cache) quickCheck(e kvstate.CacheEntry) bool {
	if e.Path == "" || !c.inDir(e.Path) {
		return false
	}
	st, err := os.Stat(e.Path)
	return err == nil && st.Mode().IsRegular() && st.Size() == e.Size
}

// HitCheck is when Acquire checks the digest of a cache hit.
type HitCheck int

const (
	// CheckLater checks a hit's file at once (there, regular, in the cache
	// directory, of the recorded size) and leaves its digest to
	// Fetch.Verify, which the caller runs while it uses the image and must
	// see succeed before it trusts what it made of it. A mismatch removes
	// the image from the cache.
	CheckLater HitCheck = iota
	// CheckNow checks a hit's digest before Acquire returns: a stale or
	// corrupt entry is removed and the image downloaded again.
	CheckNow
)

// MissMode is what Acquire does with an image that is not cached.
type MissMode int

const (
	// WaitForDownload returns a miss once its download is committed, its
	// digest verified.
	WaitForDownload MissMode = iota
	// StreamDownload returns a miss as soon as its download starts, as
	// Fetch.Partial, for a caller that reads the image while it arrives.
	StreamDownload
)

// AcquireOptions say how Acquire checks a hit and returns a miss.
type AcquireOptions struct {
	// Progress receives the checksum, cache lookup and download stages;
	// nil for none.
	Progress stages.ProgressFunc
	Hit      HitCheck
	Miss     MissMode
}

// Fetch is what Acquire found or started: a cached image (Hit), an image
// downloaded now (Entry), or a download running in the background
// (Partial). The image stays in use until Release.
type Fetch struct {
	// Key is the image's cache key.
	Key string
	// Entry is the cached image; unset while Partial has not committed.
	Entry kvstate.CacheEntry
	// Hit is true when the image was in the cache.
	Hit bool
	// Partial is a streamed miss's download; its Wait returns the entry.
	Partial *Partial

	verify  func(context.Context) error
	release func()
}

// NewFetch is a Fetch of an image another implementation of the cache
// found (test harnesses): verify is its digest check (nil: none), release
// ends its use.
func NewFetch(e kvstate.CacheEntry, hit bool, verify func(context.Context) error, release func()) *Fetch {
	return &Fetch{Key: e.Key, Entry: e, Hit: hit, verify: verify, release: release}
}

// Verify checks a hit's digest when it was left for later (CheckLater); it
// returns nil at once otherwise: a miss's digest was checked while it
// downloaded, and Partial.Wait reports a streamed one's.
func (f *Fetch) Verify(ctx context.Context) error {
	if f.verify == nil {
		return nil
	}
	return f.verify(ctx)
}

// Release stops a download still running (nothing of it is cached) and
// waits for it to end, then lets the image be evicted again. Idempotent.
func (f *Fetch) Release() {
	if f.Partial != nil {
		f.Partial.Abort()
	}
	f.release()
}

// Acquire is the cache's one entry point: it makes sure the image ref names
// is cached (or being downloaded) and keeps it in use until the caller
// calls Fetch.Release. From the moment its cache key is known (so a
// download in progress counts), an image in use is never evicted and
// Remove refuses it; release before calling Remove on the same key. A
// streamed download holds the image's lock, so other jobs of the same
// image wait for it to be committed as they would for any download. On
// error nothing stays in use.
func (c *Cache) Acquire(ctx context.Context, src source.Source, ref messaging.ImageRef, o AcquireOptions) (*Fetch, error) {
	progress := o.Progress
	if progress == nil {
		progress = func(string, int64, int64) {}
	}
	progress(stages.Checksum, 0, 0)
	key, kind, err := c.keyOf(ctx, src, ref)
	if err != nil {
		return nil, err
	}
	release := c.acquire(key)
	unlock, err := c.lock(ctx, key)
	if err != nil {
		release()
		return nil, err
	}
	progress(stages.CacheCheck, 0, 0)
	e, hit, err := c.lookup(ctx, src, ref, key, kind, o.Hit, progress)
	if err != nil {
		unlock()
		release()
		return nil, err
	}
	if hit {
		unlock()
		f := &Fetch{Key: key, Entry: e, Hit: true, release: release}
		if o.Hit == CheckLater {
			f.verify = c.hitVerifier(e)
		}
		return f, nil
	}
	if o.Miss == StreamDownload {
		dctx, cancel := context.WithCancel(ctx)
		part := newPartial(cancel)
		go func() {
			e, err := c.download(dctx, src, ref, key, kind, progress, part)
			unlock()
			if err == nil {
				// Keep the cache under its cap; this image is in use, so it stays.
				_, _ = c.Evict(dctx)
			}
			cancel()
			part.finish(e, err)
		}()
		return &Fetch{Key: key, Partial: part, release: release}, nil
	}
	e, err = c.download(ctx, src, ref, key, kind, progress, nil)
	unlock()
	if err != nil {
		release()
		return nil, err
	}
	// Keep the cache under its cap; this image is in use, so it stays.
	_, _ = c.Evict(ctx)
	return &Fetch{Key: key, Entry: e, release: release}, nil
}
