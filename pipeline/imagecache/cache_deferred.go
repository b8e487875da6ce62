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

type deferKey struct{}

// verifyLater reports whether ctx asks lookup to leave a hit's digest check
// to the caller.
func verifyLater(ctx context.Context) bool {
	v, _ := ctx.Value(deferKey{}).(bool)
	return v
}

// ErrCachedImageCorrupt: a cached image no longer matches its digest.
var ErrCachedImageCorrupt = errors.New("the cached image no longer matches its checksum")

// EnsureInUseVerifyLater is EnsureInUse for callers that check a cache hit
// while they use it: on a hit the file's size is checked at once, and the
// full digest check is left to verify, which the caller runs concurrently
// with its work and must see succeed before it trusts the result. A
// mismatch removes the image from the cache. On a miss the digest was
// checked while downloading and verify returns nil at once.
func (c *Cache) EnsureInUseVerifyLater(ctx context.Context, src source.Source, ref messaging.ImageRef, progress stages.ProgressFunc) (e kvstate.CacheEntry, hit bool, verify func(context.Context) error, release func(), err error) {
	e, hit, release, err = c.EnsureInUse(context.WithValue(ctx, deferKey{}, true), src, ref, progress)
	if err != nil || !hit {
		return e, hit, func(context.Context) error { return nil }, release, err
	}
	verify = c.hitVerifier(e)
	return e, hit, verify, release, nil
}

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
