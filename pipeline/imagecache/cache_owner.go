package imagecache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// The cache directory is shared with the operator (by default it is
// /var/lib/libvirt/images, where VM disks live), so the cache removes a file
// only when it can prove it created it. What proves it lives in the state
// directory, a subdirectory of the cache directory that the cache creates
// and marks as its own:
//
//	<cache dir>/.provisioner/owner            the marker; its text is stateMarker
//	<cache dir>/.provisioner/partials/<key>-* downloads under way (or interrupted)
//	<cache dir>/.provisioner/owned/<name>     one ownership record per cached file
//
// An ownership record is written and flushed before the download is renamed
// into place as <cache dir>/<name>, and names the file's device, inode, size
// and modification time. A file in the cache directory is the cache's own
// only while a record for its name matches all four: a file someone else put
// there, under any name, or one that replaced a cached file (even by writing
// into the same inode), has no matching record and is never removed.
const (
	stateDirName   = ".provisioner"
	markerName     = "owner"
	partialsDir    = "partials"
	ownedDir       = "owned"
	recordTmpGlob  = ".tmp-*"
	stateMarker    = "libvirt-volume-provisioner image cache state, v1: created by the worker; do not edit\n"
	maxRecordBytes = 4 << 10
)

// ErrForeignStateDir: the cache directory holds a .provisioner entry that
// the cache did not create (it has no marker), so the cache will not use it.
var ErrForeignStateDir = errors.New("the cache's state directory exists but was not created by the provisioner")

// ownership is the record proving the cache created the file Name in the
// cache directory.
type ownership struct {
	Name    string `json:"name"`
	Key     string `json:"key"`
	Dev     uint64 `json:"dev"`
	Ino     uint64 `json:"ino"`
	Size    int64  `json:"size"`
	MtimeNs int64  `json:"mtime_ns"`
}

// matches reports whether st is the file the record describes.
func (o ownership) matches(st os.FileInfo) bool {
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && st.Mode().IsRegular() && uint64(sys.Dev) == o.Dev && sys.Ino == o.Ino &&
		st.Size() == o.Size && st.ModTime().UnixNano() == o.MtimeNs
}

// recordOf describes the file st as the cached file name of key.
func recordOf(name, key string, st os.FileInfo) (ownership, error) {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return ownership{}, fmt.Errorf("no device and inode for %s on this platform", name)
	}
	return ownership{Name: name, Key: key, Dev: uint64(sys.Dev), Ino: sys.Ino, Size: st.Size(), MtimeNs: st.ModTime().UnixNano()}, nil
}

// initStateDir makes (or checks) the state directory of the cache in dir
// and returns its path. An existing .provisioner is used only when it is a
// directory holding the marker, or an empty directory (a start that stopped
// before writing the marker); anything else is refused with
// ErrForeignStateDir.
func initStateDir(dir string) (string, error) {
	state := filepath.Join(dir, stateDirName)
	marker := filepath.Join(state, markerName)
	err := os.Mkdir(state, 0o750)
	if err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("create the cache's state directory %s: %w", state, err)
	}
	if err != nil {
		if err := checkStateDir(state, marker); err != nil {
			return "", err
		}
	}
	if _, err := os.Lstat(marker); errors.Is(err, os.ErrNotExist) {
		if err := fsutil.WriteFileSync(marker, []byte(stateMarker)); err != nil {
			return "", fmt.Errorf("mark the cache's state directory %s: %w", state, err)
		}
	}
	for _, sub := range []string{partialsDir, ownedDir} {
		if err := os.Mkdir(filepath.Join(state, sub), 0o750); err != nil && !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("create %s in the cache's state directory: %w", sub, err)
		}
		if st, err := os.Lstat(filepath.Join(state, sub)); err != nil || !st.IsDir() {
			return "", fmt.Errorf("%w: %s is not a directory", ErrForeignStateDir, filepath.Join(state, sub))
		}
	}
	if err := fsutil.SyncDir(state); err != nil {
		return "", err
	}
	return state, fsutil.SyncDir(dir)
}

// checkStateDir accepts an existing state directory: a real directory with
// the marker, or an empty one.
func checkStateDir(state, marker string) error {
	st, err := os.Lstat(state)
	if err != nil {
		return fmt.Errorf("check the cache's state directory %s: %w", state, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("%w: %s is not a directory; move it out of the cache directory", ErrForeignStateDir, state)
	}
	got, err := fsutil.ReadSmallFile(marker, maxRecordBytes)
	if err == nil && string(got) == stateMarker {
		return nil
	}
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %s does not hold the provisioner's marker; move the directory out of the cache directory", ErrForeignStateDir, state)
	}
	ents, err := os.ReadDir(state)
	if err != nil {
		return fmt.Errorf("read the cache's state directory %s: %w", state, err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("%w: %s has no marker (%s) and is not empty; move the directory out of the cache directory", ErrForeignStateDir, state, markerName)
	}
	return nil
}

// partialDir is where downloads are written before they are complete.
func (c *Cache) partialDir() string { return filepath.Join(c.state, partialsDir) }

// recordPath is the ownership record of the cached file name.
func (c *Cache) recordPath(name string) string { return filepath.Join(c.state, ownedDir, name) }

// writeRecord stores rec, replacing a record of the same name, durably:
// it is flushed, renamed into place, and its directory flushed.
func (c *Cache) writeRecord(rec ownership) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode ownership record of %s: %w", rec.Name, err)
	}
	dir := filepath.Join(c.state, ownedDir)
	f, err := os.CreateTemp(dir, recordTmpGlob)
	if err != nil {
		return fmt.Errorf("write ownership record of %s: %w", rec.Name, err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, c.recordPath(rec.Name))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write ownership record of %s: %w", rec.Name, err)
	}
	return fsutil.SyncDir(dir)
}

// readRecord returns the ownership record of name; an error matching
// os.ErrNotExist when there is none.
func (c *Cache) readRecord(name string) (ownership, error) {
	var rec ownership
	b, err := fsutil.ReadSmallFile(c.recordPath(name), maxRecordBytes)
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil || rec.Name != name {
		return rec, fmt.Errorf("ownership record %s is unreadable", c.recordPath(name))
	}
	return rec, nil
}

// removeRecord removes name's ownership record (none is not an error).
func (c *Cache) removeRecord(name string) error {
	if err := os.Remove(c.recordPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove ownership record of %s: %w", name, err)
	}
	return nil
}

// owns reports whether p, a path in the cache directory, is a file the
// cache created: its ownership record matches the file there now.
func (c *Cache) owns(p string) bool {
	if !c.inDir(p) {
		return false
	}
	rec, err := c.readRecord(filepath.Base(p))
	if err != nil {
		return false
	}
	st, err := os.Lstat(p)
	return err == nil && rec.matches(st)
}

// removeOwned removes p if the cache created it, then its record, and
// reports whether it did. A file the cache cannot prove it created is left
// where it is and reported to the foreign-file hook with why it was to go.
func (c *Cache) removeOwned(ctx context.Context, p, why string) (bool, error) {
	if p == "" || !c.inDir(p) {
		return false, nil
	}
	name := filepath.Base(p)
	rec, rerr := c.readRecord(name)
	st, serr := os.Lstat(p)
	switch {
	case errors.Is(serr, os.ErrNotExist):
		return false, c.removeRecord(name) // the file is gone: so is the record's purpose
	case serr != nil:
		return false, fmt.Errorf("check cached image %s: %w", p, serr)
	case rerr != nil || !rec.matches(st):
		c.foreign(ctx, p, why+": left in place, the cache did not create this file (no ownership record matches it)")
		if rerr == nil {
			return false, c.removeRecord(name) // it describes a file that is no longer there
		}
		return false, nil
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("remove cached image %s: %w", p, err)
	}
	if err := fsutil.SyncDir(c.dir); err != nil {
		return true, err
	}
	return true, c.removeRecord(name)
}

// foreign reports a file the cache left in place.
func (c *Cache) foreign(ctx context.Context, p, reason string) {
	if c.onForeign != nil {
		c.onForeign(ctx, p, reason)
	}
}

// SetOnForeignFile registers fn to hear of files the cache would have
// removed (an evicted, deleted or stale entry's file, an orphan) but left in
// place because it cannot prove it created them; the worker logs them.
// Call it before use.
func (c *Cache) SetOnForeignFile(fn func(ctx context.Context, path, reason string)) { c.onForeign = fn }

// maxNameTries is how many names place tries when the cache file's name is
// taken by a file the cache did not create.
const maxNameTries = 10

// place moves the finished download tmp (in the partial directory) into the
// cache directory as name, or as name with "-2", "-3"... before its
// extension when that name is taken by a file the cache did not create. The
// ownership record is flushed before the rename; no existing file is ever
// replaced. It returns the file's path.
func (c *Cache) place(tmp, name, key string) (string, error) {
	st, err := os.Lstat(tmp)
	if err != nil {
		return "", fmt.Errorf("stat downloaded image %s: %w", tmp, err)
	}
	ext := filepath.Ext(name)
	stem := strings.TrimSuffix(name, ext)
	for i := 1; i <= maxNameTries; i++ {
		cand := name
		if i > 1 {
			cand = fmt.Sprintf("%s-%d%s", stem, i, ext)
		}
		final := filepath.Join(c.dir, cand)
		if _, err := os.Lstat(final); err == nil && c.owns(final) {
			if _, err := c.removeOwned(context.Background(), final, "replaced by a new download"); err != nil {
				return "", err
			}
		}
		rec, err := recordOf(cand, key, st)
		if err != nil {
			return "", err
		}
		if err := c.writeRecord(rec); err != nil {
			return "", err
		}
		err = fsutil.RenameNoReplace(tmp, final)
		if err == nil {
			return final, fsutil.SyncDir(c.dir)
		}
		if rerr := c.removeRecord(cand); rerr != nil {
			return "", rerr
		}
		if !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("move downloaded image into place as %s: %w", final, err)
		}
	}
	return "", fmt.Errorf("move downloaded image into place as %s: that name and %d others are taken by files the cache did not create", filepath.Join(c.dir, name), maxNameTries-1)
}

// adoptLegacy writes the ownership record of an indexed file cached by a
// version without records, when the file proves to be what the entry says:
// its name is the one the cache gives that key and object, it has the
// entry's size, and its SHA-256 is the entry's (for a URL key, the key is
// also the SHA-256 of the entry's URL). A KV entry forged to name another
// file cannot pass: the 16 hex digits in a cached file's name are bound to
// the file's own digest or to its URL. It reports whether it adopted.
func (c *Cache) adoptLegacy(ctx context.Context, e kvstate.CacheEntry) (bool, error) {
	if !c.inDir(e.Path) || !c.legacyName(e) {
		return false, nil
	}
	f, err := os.OpenFile(e.Path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false, nil
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil || !before.Mode().IsRegular() || before.Size() != e.Size {
		return false, nil
	}
	h := sha256.New()
	if _, err := copyProgress(ctx, h, f, func(int64) {}); err != nil {
		return false, fmt.Errorf("hash %s, cached by an older version, to adopt it: %w", e.Path, err)
	}
	after, err := f.Stat()
	if err != nil || !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
		return false, nil
	}
	want := e.Key
	if e.KeyKind == kvstate.KeyKindURL {
		want = e.Checksum
	}
	if hex.EncodeToString(h.Sum(nil)) != strings.ToLower(want) {
		return false, nil
	}
	rec, err := recordOf(filepath.Base(e.Path), e.Key, after)
	if err != nil {
		return false, err
	}
	return true, c.writeRecord(rec)
}

// legacyName reports whether e's file has the name the cache gives its key
// and object, and a URL key is the SHA-256 of the entry's URL.
func (c *Cache) legacyName(e kvstate.CacheEntry) bool {
	ref, err := messaging.ParseImageURL(e.SourceURL)
	if err != nil || filepath.Base(e.Path) != FileName(ref.Object, e.Key) {
		return false
	}
	switch e.KeyKind {
	case kvstate.KeyKindSHA256:
		return len(e.Key) == 64
	case kvstate.KeyKindURL:
		sum := sha256.Sum256([]byte(e.SourceURL))
		return e.Key == hex.EncodeToString(sum[:]) && e.Checksum != ""
	}
	return false
}
