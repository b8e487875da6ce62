package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// partialPrefix starts the names of files being downloaded.
const partialPrefix = ".partial-"

// copyBufSize is the buffer used to move image bytes.
const copyBufSize = 1 << 20

// maxStemLen caps the part of a cached file's name taken from the object.
const maxStemLen = 100

// CacheIndex is the cache index the Cache needs; kvstate.CacheIndex is one.
type CacheIndex interface {
	// Get returns one entry, or kvstate.ErrNotFound when there is none.
	Get(ctx context.Context, host, key string) (kvstate.CacheEntry, error)
	// Put stores or replaces an entry.
	Put(ctx context.Context, host string, e kvstate.CacheEntry) error
	// Delete removes an entry.
	Delete(ctx context.Context, host, key string) error
	// List returns every entry of host.
	List(ctx context.Context, host string) ([]kvstate.CacheEntry, error)
}

var _ CacheIndex = kvstate.CacheIndex{}

// Cache keeps downloaded images in a directory, keyed by their SHA-256 (or
// by their URL's SHA-256 when none is published), indexed per host.
type Cache struct {
	dir   string
	host  string
	index CacheIndex

	mu    sync.Mutex
	locks map[string]*keyLock

	// onChange runs after a file is added to or removed from the cache.
	onChange func(ctx context.Context)
}

// SetOnChange registers fn to run after a file is added to or removed from
// the cache (e.g. to refresh libvirt's images pool). Call it before use.
func (c *Cache) SetOnChange(fn func(ctx context.Context)) { c.onChange = fn }

func (c *Cache) changed(ctx context.Context) {
	if c.onChange != nil {
		c.onChange(ctx)
	}
}

// keyLock is a per-key lock: a one-slot channel, so waiting can be abandoned.
type keyLock struct {
	slot chan struct{}
	refs int
}

// NewCache makes a cache in dir (created if needed) for host's index entries.
func NewCache(dir, host string, index CacheIndex) (*Cache, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("cache directory %q: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o750); err != nil {
		return nil, fmt.Errorf("create cache directory %s: %w", abs, err)
	}
	return &Cache{dir: abs, host: host, index: index, locks: map[string]*keyLock{}}, nil
}

// Dir is the cache directory (absolute).
func (c *Cache) Dir() string { return c.dir }

// lock takes the per-key lock and returns its release.
func (c *Cache) lock(ctx context.Context, key string) (func(), error) {
	c.mu.Lock()
	l := c.locks[key]
	if l == nil {
		l = &keyLock{slot: make(chan struct{}, 1)}
		c.locks[key] = l
	}
	l.refs++
	c.mu.Unlock()

	drop := func() {
		c.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(c.locks, key)
		}
		c.mu.Unlock()
	}
	select {
	case l.slot <- struct{}{}:
		return func() { <-l.slot; drop() }, nil
	case <-ctx.Done():
		drop()
		return nil, fmt.Errorf("wait for another download of the same image: %w", ctx.Err())
	}
}

// Ensure makes sure the image ref names is in the cache and returns its
// entry; hit is true when it was there already and verified.
func (c *Cache) Ensure(ctx context.Context, src Source, ref messaging.ImageRef, progress ProgressFunc) (kvstate.CacheEntry, bool, error) {
	if progress == nil {
		progress = func(string, int64, int64) {}
	}
	progress(StageChecksum, 0, 0)
	digest, found, err := src.Checksum(ctx, ref.Bucket, ref.Object)
	if err != nil {
		return kvstate.CacheEntry{}, false, fmt.Errorf("read checksum of %s: %w", ref.URL, err)
	}
	key, kind := digest, kvstate.KeyKindSHA256
	if !found {
		sum := sha256.Sum256([]byte(ref.URL))
		key, kind = hex.EncodeToString(sum[:]), kvstate.KeyKindURL
	}

	unlock, err := c.lock(ctx, key)
	if err != nil {
		return kvstate.CacheEntry{}, false, err
	}
	defer unlock()

	progress(StageCacheCheck, 0, 0)
	if e, ok, err := c.lookup(ctx, key, kind, progress); err != nil {
		return kvstate.CacheEntry{}, false, err
	} else if ok {
		return e, true, nil
	}
	e, err := c.download(ctx, src, ref, key, kind, progress)
	if err != nil {
		return kvstate.CacheEntry{}, false, err
	}
	return e, false, nil
}

// lookup returns the verified entry of key; a stale or corrupt entry is
// removed with its file and reported as absent.
func (c *Cache) lookup(ctx context.Context, key, kind string, progress ProgressFunc) (kvstate.CacheEntry, bool, error) {
	e, err := c.index.Get(ctx, c.host, key)
	if errors.Is(err, kvstate.ErrNotFound) {
		return e, false, nil
	}
	if err != nil {
		return e, false, fmt.Errorf("look up image %s in the cache index: %w", key, err)
	}
	want := e.Checksum
	if kind == kvstate.KeyKindSHA256 {
		want = key
	}
	ok, err := c.verify(ctx, e, want, progress)
	if err != nil {
		return e, false, err
	}
	if !ok {
		if e.Path != "" && c.inDir(e.Path) {
			if err := os.Remove(e.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return e, false, fmt.Errorf("remove corrupt cached image %s: %w", e.Path, err)
			}
		}
		if err := c.index.Delete(ctx, c.host, key); err != nil {
			return e, false, fmt.Errorf("drop stale cache entry of %s: %w", e.SourceURL, err)
		}
		c.changed(ctx)
		return e, false, nil
	}
	e.LastUsed = time.Now().UTC()
	if err := c.index.Put(ctx, c.host, e); err != nil {
		return e, false, fmt.Errorf("update cache entry of %s: %w", e.SourceURL, err)
	}
	return e, true, nil
}

// inDir reports whether p is a file directly in the cache directory.
func (c *Cache) inDir(p string) bool {
	return filepath.Dir(filepath.Clean(p)) == c.dir
}

// verify hashes the entry's file and compares it with want. A missing file
// is a mismatch, not an error.
func (c *Cache) verify(ctx context.Context, e kvstate.CacheEntry, want string, progress ProgressFunc) (bool, error) {
	if e.Path == "" || want == "" || !c.inDir(e.Path) {
		return false, nil
	}
	f, err := os.Open(e.Path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("open cached image %s: %w", e.Path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("stat cached image %s: %w", e.Path, err)
	}
	if !st.Mode().IsRegular() || st.Size() != e.Size {
		return false, nil
	}
	h := sha256.New()
	total := st.Size()
	progress(StageVerify, 0, total)
	if _, err := copyProgress(ctx, h, f, func(done int64) { progress(StageVerify, done, total) }); err != nil {
		return false, fmt.Errorf("verify cached image %s: %w", e.Path, err)
	}
	return hex.EncodeToString(h.Sum(nil)) == strings.ToLower(want), nil
}

// download fetches ref into the cache and records it in the index.
func (c *Cache) download(ctx context.Context, src Source, ref messaging.ImageRef, key, kind string, progress ProgressFunc) (e kvstate.CacheEntry, err error) {
	r, info, err := src.Open(ctx, ref.Bucket, ref.Object)
	if err != nil {
		return e, err
	}
	defer r.Close()

	tmp, err := os.CreateTemp(c.dir, partialPrefix+key+"-*")
	if err != nil {
		return e, fmt.Errorf("create download file in cache directory %s: %w", c.dir, err)
	}
	defer func() {
		if tmp != nil {
			_ = tmp.Close()
		}
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}()

	h := sha256.New()
	total := info.Size
	progress(StageDownload, 0, total)
	n, err := copyProgress(ctx, io.MultiWriter(tmp, h), r, func(done int64) { progress(StageDownload, done, total) })
	if err != nil {
		return e, fmt.Errorf("download %s: %w", ref.URL, err)
	}
	if info.Size >= 0 && n != info.Size {
		return e, fmt.Errorf("download %s: got %d bytes, the object store announced %d", ref.URL, n, info.Size)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if kind == kvstate.KeyKindSHA256 && got != key {
		return e, fmt.Errorf("checksum mismatch for %s: the .sha256 object says %s, the downloaded image hashes to %s; nothing was cached", ref.URL, key, got)
	}
	if err := tmp.Sync(); err != nil {
		return e, fmt.Errorf("flush downloaded image %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		tmp = nil
		return e, fmt.Errorf("close downloaded image: %w", err)
	}
	tmpName := tmp.Name()
	tmp = nil
	defer func() {
		if err != nil {
			_ = os.Remove(tmpName)
		}
	}()

	final := filepath.Join(c.dir, CacheFileName(ref.Object, key))
	if err := os.Rename(tmpName, final); err != nil {
		return e, fmt.Errorf("move downloaded image into place as %s: %w", final, err)
	}
	if err := syncDir(c.dir); err != nil {
		_ = os.Remove(final)
		return e, err
	}
	now := time.Now().UTC()
	e = kvstate.CacheEntry{
		Key: key, KeyKind: kind, Path: final, Size: n, Checksum: got,
		SourceURL: ref.URL, ETag: info.ETag, CreatedAt: now, LastUsed: now,
	}
	if err := c.index.Put(ctx, c.host, e); err != nil {
		_ = os.Remove(final)
		return kvstate.CacheEntry{}, fmt.Errorf("record %s in the cache index: %w", ref.URL, err)
	}
	c.changed(ctx)
	return e, nil
}

// CacheFileName is the name a cached image gets: the object's base name,
// sanitized, with the first 16 digits of the key before its extension.
func CacheFileName(object, key string) string {
	base := path.Base(object)
	ext := path.Ext(base)
	stem := strings.TrimSuffix(base, ext)
	if !cleanExt(ext) {
		stem, ext = base, ""
	}
	stem = sanitizeName(stem)
	if len(stem) > maxStemLen {
		stem = stem[:maxStemLen]
	}
	if stem == "" || strings.HasPrefix(stem, ".") {
		stem = "image" + stem
	}
	short := key
	if len(short) > 16 {
		short = short[:16]
	}
	return stem + "-" + short + ext
}

func cleanExt(ext string) bool {
	if len(ext) < 2 || len(ext) > 16 {
		return false
	}
	for _, r := range ext[1:] {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

func sanitizeName(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// RemovePartials removes the download files a crashed process left behind
// and returns how many it removed.
func (c *Cache) RemovePartials() (int, error) {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return 0, fmt.Errorf("read cache directory %s: %w", c.dir, err)
	}
	n := 0
	for _, d := range ents {
		if !strings.HasPrefix(d.Name(), partialPrefix) || d.IsDir() {
			continue
		}
		p := filepath.Join(c.dir, d.Name())
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return n, fmt.Errorf("remove partial download %s: %w", p, err)
		}
		n++
	}
	return n, nil
}

// Reconcile removes partial downloads and the index entries of this host
// whose file is gone. Call it when no download is running.
func (c *Cache) Reconcile(ctx context.Context) error {
	if _, err := c.RemovePartials(); err != nil {
		return err
	}
	entries, err := c.index.List(ctx, c.host)
	if err != nil {
		return fmt.Errorf("list cache entries of %s: %w", c.host, err)
	}
	for _, e := range entries {
		st, err := os.Lstat(e.Path)
		if err == nil && st.Mode().IsRegular() {
			continue
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("check cached image %s: %w", e.Path, err)
		}
		if err := c.index.Delete(ctx, c.host, e.Key); err != nil {
			return fmt.Errorf("drop cache entry of missing file %s: %w", e.Path, err)
		}
	}
	return nil
}

// copyProgress copies src to dst with a 1 MiB buffer, stopping when ctx
// ends, and calls report with the bytes copied so far after each chunk.
func copyProgress(ctx context.Context, dst io.Writer, src io.Reader, report func(done int64)) (int64, error) {
	buf := make([]byte, copyBufSize)
	var done int64
	for {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		n, rerr := io.ReadFull(src, buf)
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return done, err
			}
			done += int64(n)
			report(done)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return done, nil
		}
		if rerr != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return done, ctxErr
			}
			return done, rerr
		}
	}
}

// syncDir fsyncs a directory so a rename or create in it is durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s to flush it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("flush directory %s: %w", dir, err)
	}
	return nil
}

// Remove deletes key's entry and its file, for an image found unusable. It
// waits for a download of the same key to finish first.
func (c *Cache) Remove(ctx context.Context, key string) error {
	unlock, err := c.lock(ctx, key)
	if err != nil {
		return err
	}
	defer unlock()
	e, err := c.index.Get(ctx, c.host, key)
	if errors.Is(err, kvstate.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if c.inDir(e.Path) {
		if err := os.Remove(e.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove cached image %s: %w", e.Path, err)
		}
		if err := syncDir(c.dir); err != nil {
			return err
		}
	}
	if err := c.index.Delete(ctx, c.host, key); err != nil {
		return err
	}
	c.changed(ctx)
	return nil
}
