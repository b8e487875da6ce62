package imagecache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/source"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"
)

// copyBufSize is the buffer used to move image bytes.
const copyBufSize = 1 << 20

// maxStemLen caps the part of a cached file's name taken from the object.
const maxStemLen = 100

// Index is the cache index the Cache needs; kvstate.CacheIndex is one.
type Index interface {
	// Get returns one entry, or kvstate.ErrCacheEntryNotFound when there is none.
	Get(ctx context.Context, host, key string) (kvstate.CacheEntry, error)
	// Put stores or replaces an entry.
	Put(ctx context.Context, host string, e kvstate.CacheEntry) error
	// Delete removes an entry.
	Delete(ctx context.Context, host, key string) error
	// List returns every entry of host.
	List(ctx context.Context, host string) ([]kvstate.CacheEntry, error)
}

var _ Index = kvstate.CacheIndex{}

// Cache keeps downloaded images in a directory, keyed by their SHA-256 (or
// by their URL's SHA-256 when none is published), indexed per host.
type Cache struct {
	dir string
	// state is the cache's own subdirectory of dir (see cache_owner.go):
	// downloads under way and the records of the files the cache created.
	state string
	host  string
	index Index
	opts  Options

	mu    sync.Mutex
	locks map[string]*keyLock
	// inUse counts, per key, the callers between the start of
	// Acquire and their release: such images are never evicted or removed.
	inUse map[string]int
	// inflight holds the downloads running, by key.
	inflight map[string]*inflight

	// evictMu serializes eviction and the space check before a download.
	evictMu sync.Mutex

	// onChange runs after a file is added to or removed from the cache.
	onChange func(ctx context.Context)
	// onForeign hears of files left in place because the cache did not
	// create them.
	onForeign func(ctx context.Context, path, reason string)

	// goldens removes the entries' goldens (cache_golden.go); nil: none.
	goldens GoldenStore
	glocks  goldenLocks
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

// New makes a cache in dir (created if needed) for host's index
// entries, with the default options (no size cap). The cache keeps its own
// state in dir/.provisioner (created and marked by it); an existing
// .provisioner it did not create is refused with ErrForeignStateDir.
func New(dir, host string, index Index) (*Cache, error) {
	return NewWithOptions(dir, host, index, Options{})
}

// NewWithOptions is New with options; zero fields take their defaults.
func NewWithOptions(dir, host string, index Index, opts Options) (*Cache, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("cache directory %q: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o750); err != nil {
		return nil, fmt.Errorf("create cache directory %s: %w", abs, err)
	}
	if opts.MaxBytes < 0 {
		return nil, fmt.Errorf("cache size cap %d is negative; 0 means no cap", opts.MaxBytes)
	}
	state, err := initStateDir(abs)
	if err != nil {
		return nil, err
	}
	return &Cache{
		dir: abs, state: state, host: host, index: index, opts: opts.withDefaults(),
		locks: map[string]*keyLock{}, inUse: map[string]int{}, inflight: map[string]*inflight{},
	}, nil
}

// Dir is the cache directory (absolute).
func (c *Cache) Dir() string { return c.dir }

// Options returns the cache's options, defaults filled in.
func (c *Cache) Options() Options { return c.opts }

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

	select {
	case l.slot <- struct{}{}:
		return func() { <-l.slot; c.dropLock(key, l) }, nil
	case <-ctx.Done():
		c.dropLock(key, l)
		return nil, fmt.Errorf("wait for another download of the same image: %w", ctx.Err())
	}
}

func (c *Cache) dropLock(key string, l *keyLock) {
	c.mu.Lock()
	l.refs--
	if l.refs == 0 {
		delete(c.locks, key)
	}
	c.mu.Unlock()
}

// tryLockIdle takes key's lock only if it is free and the image is not in
// use, atomically with that check; ok is false otherwise.
func (c *Cache) tryLockIdle(key string) (unlock func(), ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inUse[key] > 0 {
		return nil, false
	}
	l := c.locks[key]
	if l == nil {
		l = &keyLock{slot: make(chan struct{}, 1)}
		c.locks[key] = l
	}
	select {
	case l.slot <- struct{}{}:
		l.refs++
		return func() { <-l.slot; c.dropLock(key, l) }, true
	default:
		if l.refs == 0 {
			delete(c.locks, key)
		}
		return nil, false
	}
}

// acquire marks key in use and returns the idempotent release.
func (c *Cache) acquire(key string) func() {
	c.mu.Lock()
	c.inUse[key]++
	c.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			if c.inUse[key]--; c.inUse[key] <= 0 {
				delete(c.inUse, key)
			}
			c.mu.Unlock()
		})
	}
}

// InUse reports whether a job is using or downloading the image of key.
func (c *Cache) InUse(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inUse[key] > 0
}

// keyOf returns the cache key of ref: the digest its .sha256 object
// publishes, or else the SHA-256 of its URL.
func (c *Cache) keyOf(ctx context.Context, src source.Source, ref messaging.ImageRef) (key, kind string, err error) {
	var digest string
	var found bool
	err = c.retry(ctx, func() error {
		actx, cancel := context.WithTimeout(ctx, c.opts.StallTimeout)
		defer cancel()
		var err error
		digest, found, err = src.Checksum(actx, ref.Bucket, ref.Object)
		return err
	})
	if err != nil {
		return "", "", fmt.Errorf("read checksum of %s: %w", ref.URL, err)
	}
	if !found {
		sum := sha256.Sum256([]byte(ref.URL))
		return hex.EncodeToString(sum[:]), kvstate.KeyKindURL, nil
	}
	return digest, kvstate.KeyKindSHA256, nil
}

// lookup returns the verified entry of key; a stale or corrupt entry is
// removed with its file and reported as absent. A URL-keyed entry is
// revalidated against the object first: another ETag or size makes it stale.
func (c *Cache) lookup(ctx context.Context, src source.Source, ref messaging.ImageRef, key, kind string, check HitCheck, progress stages.ProgressFunc) (kvstate.CacheEntry, bool, error) {
	e, err := c.index.Get(ctx, c.host, key)
	if errors.Is(err, kvstate.ErrCacheEntryNotFound) {
		return e, false, nil
	}
	if err != nil {
		return e, false, fmt.Errorf("look up image %s in the cache index: %w", key, err)
	}
	want := e.Checksum
	if kind == kvstate.KeyKindSHA256 {
		want = key
	}
	// Any file whose digest matches may be served; only one the cache
	// created is ever removed (dropEntry).
	ok := true
	if kind != kvstate.KeyKindSHA256 {
		info, err := c.statObject(ctx, src, ref)
		if err != nil {
			return e, false, fmt.Errorf("revalidate the cached copy of %s: %w", ref.URL, err)
		}
		ok = info.Size == e.Size && info.ETag == e.ETag
	}
	if ok && check == CheckLater {
		ok = c.quickCheck(e)
	} else if ok {
		if ok, err = c.verify(ctx, e, want, progress); err != nil {
			return e, false, err
		}
	}
	if !ok {
		if err := c.dropEntry(ctx, e, "stale or corrupt cache entry"); err != nil {
			return e, false, err
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

// dropEntry removes an entry's file (only when the cache created it: see
// removeOwned; why says why it goes) and then the entry.
func (c *Cache) dropEntry(ctx context.Context, e kvstate.CacheEntry, why string) error {
	if e.Golden != nil && c.goldens != nil {
		if err := c.goldens.RemoveGolden(ctx, e.Key); err != nil {
			return fmt.Errorf("remove the golden of %s (%s): %w", e.Key, why, err)
		}
	}
	if _, err := c.removeOwned(ctx, e.Path, why); err != nil {
		return err
	}
	if err := c.index.Delete(ctx, c.host, e.Key); err != nil {
		return fmt.Errorf("drop cache entry of %s: %w", e.SourceURL, err)
	}
	return nil
}

// statObject returns the object's size and ETag, with retries.
func (c *Cache) statObject(ctx context.Context, src source.Source, ref messaging.ImageRef) (source.ObjectInfo, error) {
	var info source.ObjectInfo
	err := c.retry(ctx, func() error {
		actx, cancel := context.WithTimeout(ctx, c.opts.StallTimeout)
		defer cancel()
		var err error
		if rs, ok := src.(source.ResumableSource); ok {
			info, err = rs.Stat(actx, ref.Bucket, ref.Object)
			return err
		}
		var r io.ReadCloser
		r, info, err = src.Open(actx, ref.Bucket, ref.Object)
		if err == nil {
			_ = r.Close()
		}
		return err
	})
	return info, err
}

// inDir reports whether p is a file directly in the cache directory.
func (c *Cache) inDir(p string) bool {
	return filepath.Dir(filepath.Clean(p)) == c.dir
}

// verify hashes the entry's file and compares it with want. A missing file
// is a mismatch, not an error.
func (c *Cache) verify(ctx context.Context, e kvstate.CacheEntry, want string, progress stages.ProgressFunc) (bool, error) {
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
	progress(stages.Verify, 0, total)
	if _, err := copyProgress(ctx, h, f, func(done int64) { progress(stages.Verify, done, total) }); err != nil {
		return false, fmt.Errorf("verify cached image %s: %w", e.Path, err)
	}
	return hex.EncodeToString(h.Sum(nil)) == strings.ToLower(want), nil
}

// download fetches ref into the cache and records it in the index. With a
// ResumableSource, transient failures are retried within the retry budget
// and the download resumes where it stopped, pinned to the object's ETag;
// the SHA-256 continues over the bytes already written.
//
// With part non-nil the file is readable through part while it arrives.
func (c *Cache) download(ctx context.Context, src source.Source, ref messaging.ImageRef, key, kind string, progress stages.ProgressFunc, part *Partial) (e kvstate.CacheEntry, err error) {
	d := &downloading{c: c, src: src, ref: ref, key: key, kind: kind, progress: progress, part: part}
	d.rs, d.resumable = src.(source.ResumableSource)
	if err := d.open(ctx); err != nil {
		return e, err
	}
	defer d.closeBody()

	if d.fl, err = c.reserve(ctx, key, d.info.Size); err != nil {
		return e, err
	}
	defer c.unreserve(key)

	if err := d.createPartial(); err != nil {
		return e, err
	}
	partialName := d.tmp.Name()
	defer func() {
		if d.tmp != nil {
			_ = d.tmp.Close()
		}
		if err != nil {
			_ = os.Remove(partialName) // gone already once renamed into place
		}
	}()
	if err := d.receive(ctx); err != nil {
		return e, err
	}
	return d.commit(ctx)
}

// downloading is one download of an image into a partial file of the
// cache, in the order of its methods: open the object, create the partial
// file, receive the bytes (resuming where the object store allows), commit
// the verified file into place and the index.
type downloading struct {
	c         *Cache
	src       source.Source
	rs        source.ResumableSource
	resumable bool
	ref       messaging.ImageRef
	key, kind string
	progress  stages.ProgressFunc
	part      *Partial

	info source.ObjectInfo
	r    io.ReadCloser // the response being read; nil between reads
	fl   *inflight
	tmp  *os.File // the partial file; nil once closed
	h    hash.Hash
	out  *writeBehind
	// offset is what arrived; reported what progress was told of.
	offset, reported int64
}

// open learns the object's size and ETag: by a stat where reads can
// resume (each read then opens at its offset), else by opening the one
// response the download reads.
func (d *downloading) open(ctx context.Context) error {
	var err error
	if d.resumable {
		d.info, err = d.c.statObject(ctx, d.src, d.ref)
		return err
	}
	return d.c.retry(ctx, func() error {
		var err error
		d.r, d.info, err = d.src.Open(ctx, d.ref.Bucket, d.ref.Object)
		return err
	})
}

// closeBody closes the response being read, if any.
func (d *downloading) closeBody() {
	if d.r != nil {
		_ = d.r.Close()
		d.r = nil
	}
}

// createPartial creates the partial file the bytes go to, and starts the
// Partial a streaming reader waits on.
func (d *downloading) createPartial() error {
	c := d.c
	tmp, err := os.CreateTemp(c.partialDir(), d.key+"-*")
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("not enough space in the image cache %s to start downloading %s: %w", c.dir, d.ref.URL, err)
		}
		return fmt.Errorf("create download file in cache directory %s: %w", c.dir, err)
	}
	d.tmp = tmp
	if d.part != nil {
		if err := d.part.start(tmp.Name(), d.info.Size); err != nil {
			return err
		}
	}
	d.h = sha256.New()
	d.out = &writeBehind{f: tmp}
	return nil
}

// report tells progress, the eviction accounting and the Partial's readers
// how much has arrived.
func (d *downloading) report() {
	if d.offset > d.reported {
		d.reported = d.offset
		d.progress(stages.Download, d.offset, d.info.Size)
	}
	d.fl.written.Store(d.offset)
	if d.part != nil {
		d.part.advance(d.offset)
	}
}

// receive reads the object into the partial file, hashing as the bytes
// arrive. A read that fails, stalls or ends early is resumed at its offset
// (pinned to the ETag) where the source allows, after the retrier's wait;
// without an ETag a resumed read could mix two versions of the object, so
// the download starts over.
func (d *downloading) receive(ctx context.Context) error {
	c, total := d.c, d.info.Size
	d.progress(stages.Download, 0, total)
	buf := make([]byte, copyBufSize)
	rt := c.newRetrier()
	for {
		if total >= 0 && d.offset == total && d.r == nil && d.offset > 0 {
			return nil // everything arrived; only the end of the stream was missing
		}
		rerr, err := d.read(ctx, rt, buf)
		if err != nil {
			return err
		}
		if rerr == nil {
			return nil
		}
		var of openFailed
		if errors.As(rerr, &of) {
			// Opened again at the same offset: nothing was read to doubt.
			if werr := rt.wait(ctx, of.err); werr != nil {
				return fmt.Errorf("download %s: %w", d.ref.URL, werr)
			}
			continue
		}
		if !d.resumable {
			return fmt.Errorf("download %s: %w", d.ref.URL, rerr)
		}
		if d.info.ETag == "" && d.offset > 0 {
			if err := d.restart(); err != nil {
				return err
			}
		}
		if werr := rt.wait(ctx, rerr); werr != nil {
			return fmt.Errorf("download %s: %w", d.ref.URL, werr)
		}
	}
}

// read reads one response (opening it at the offset where reads resume)
// until it ends. rerr is why the response ended before the object did (a
// retry may go on); err ends the download.
func (d *downloading) read(ctx context.Context, rt *retrier, buf []byte) (rerr, err error) {
	c, total := d.c, d.info.Size
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if d.r == nil {
		r, err := d.rs.OpenAt(actx, d.ref.Bucket, d.ref.Object, d.offset, d.info.ETag)
		if err != nil {
			return openFailed{err}, nil
		}
		d.r = r
	}
	var timer *time.Timer
	if d.resumable {
		timer = time.AfterFunc(c.opts.StallTimeout, func() { cancel(source.ErrStalled) })
	}
	rerr, werr := pump(ctx, d.r, d.out, d.h, buf, func(n int) {
		d.offset += int64(n)
		if timer != nil {
			timer.Reset(c.opts.StallTimeout)
		}
		rt.progressed()
		d.report()
	})
	if timer != nil {
		timer.Stop()
	}
	stalled := errors.Is(context.Cause(actx), source.ErrStalled)
	cancel(nil)
	d.closeBody()
	if werr != nil {
		if errors.Is(werr, syscall.ENOSPC) {
			return nil, fmt.Errorf("not enough space in the image cache %s while downloading %s (%d of %d bytes written): %w", c.dir, d.ref.URL, d.offset, total, werr)
		}
		return nil, fmt.Errorf("write downloaded image %s: %w", d.tmp.Name(), werr)
	}
	if cerr := ctx.Err(); cerr != nil {
		return nil, fmt.Errorf("download %s: %w", d.ref.URL, cerr)
	}
	if rerr == nil {
		if total < 0 || d.offset >= total {
			return nil, nil
		}
		rerr = fmt.Errorf("the object store ended the response after %d of %d bytes: %w", d.offset, total, io.ErrUnexpectedEOF)
	}
	if stalled {
		rerr = fmt.Errorf("%w for %s", source.ErrStalled, c.opts.StallTimeout)
	}
	if errors.Is(rerr, source.ErrObjectChanged) {
		return nil, fmt.Errorf("download %s: the image changed while downloading (ETag was %s); nothing was cached: %w", d.ref.URL, d.info.ETag, rerr)
	}
	return rerr, nil
}

// openFailed is a read whose response could not be opened.
type openFailed struct{ err error }

func (o openFailed) Error() string { return o.err.Error() }
func (o openFailed) Unwrap() error { return o.err }

// restart empties the partial file to download the object again from its
// start.
func (d *downloading) restart() error {
	if d.part != nil {
		d.part.restart() // before the file is truncated under its readers
	}
	if _, err := d.tmp.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("restart download %s: %w", d.ref.URL, err)
	}
	if err := d.tmp.Truncate(0); err != nil {
		return fmt.Errorf("restart download %s: %w", d.ref.URL, err)
	}
	d.h.Reset()
	d.offset = 0
	d.out = &writeBehind{f: d.tmp}
	return nil
}

// commit checks what arrived (its length, and its digest against the
// published one), flushes it, and puts it in place and in the index.
func (d *downloading) commit(ctx context.Context) (e kvstate.CacheEntry, err error) {
	c, ref, key, n, total := d.c, d.ref, d.key, d.offset, d.info.Size
	if total >= 0 && n != total {
		return e, fmt.Errorf("download %s: got %d bytes, the object store announced %d", ref.URL, n, total)
	}
	got := hex.EncodeToString(d.h.Sum(nil))
	if d.kind == kvstate.KeyKindSHA256 && got != key {
		return e, fmt.Errorf("checksum mismatch for %s: the .sha256 object says %s, the downloaded image hashes to %s; nothing was cached", ref.URL, key, got)
	}
	if err := d.tmp.Sync(); err != nil {
		return e, fmt.Errorf("flush downloaded image %s: %w", d.tmp.Name(), err)
	}
	tmpName := d.tmp.Name()
	err = d.tmp.Close()
	d.tmp = nil
	if err != nil {
		return e, fmt.Errorf("close downloaded image: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmpName)
		}
	}()

	final, err := c.place(tmpName, FileName(ref.Object, key), key)
	if err != nil {
		if final != "" {
			_, _ = c.removeOwned(ctx, final, "download not committed")
		}
		return e, err
	}
	now := time.Now().UTC()
	e = kvstate.CacheEntry{
		Key: key, KeyKind: d.kind, Path: final, Size: n, Checksum: got,
		SourceURL: ref.URL, ETag: d.info.ETag, CreatedAt: now, LastUsed: now,
	}
	if err := c.index.Put(ctx, c.host, e); err != nil {
		_, _ = c.removeOwned(context.WithoutCancel(ctx), final, "download not committed")
		return kvstate.CacheEntry{}, fmt.Errorf("record %s in the cache index: %w", ref.URL, err)
	}
	c.changed(ctx)
	return e, nil
}

// firstChunk is the size of the first chunk pump writes: small, so that a
// reader of the file being downloaded (the image's header) does not wait
// for a whole copy buffer to fill.
const firstChunk = 64 << 10

// pump copies r into f and h in chunks of len(buf) (the first one
// firstChunk), calling chunk after each chunk written. rerr is r's error
// (nil at the end of the stream), werr the file's; it stops when ctx ends
// (rerr is then ctx's error).
func pump(ctx context.Context, r io.Reader, f io.Writer, h io.Writer, buf []byte, chunk func(n int)) (rerr, werr error) {
	size := min(len(buf), firstChunk)
	for {
		if err := ctx.Err(); err != nil {
			return err, nil
		}
		n, err := fill(r, buf[:size])
		size = len(buf)
		if n > 0 {
			if _, werr := f.Write(buf[:n]); werr != nil {
				return nil, werr
			}
			_, _ = h.Write(buf[:n])
			chunk(n)
		}
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return err, nil
		}
	}
}

// fill reads from r until buf is full or r fails; io.EOF marks the end.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// FileName is the name a cached image gets: the object's base name,
// sanitized, with the first 16 digits of the key before its extension.
func FileName(object, key string) string {
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
