package file

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
	"golang.org/x/sys/unix"
)

// The file backend keeps its goldens in a directory of its own inside the
// volume directory, so that they are on the volumes' file system (a reflink
// never crosses file systems):
//
//	<volume dir>/.golden/owner                 the marker; its text is goldenMarker
//	<volume dir>/.golden/<key>.raw             a sealed golden: mode 0444, immutable where possible
//	<volume dir>/.golden/.prepare-<key>-*      a golden being written
//	<volume dir>/.<volume>.clone-*             a clone about to replace <volume>
//
// Volume names never start with a dot, so none of these is a volume.
const (
	goldenDirName = ".golden"
	goldenMarker  = "libvirt-volume-provisioner goldens, v1: created by the worker; do not edit\n"
	// markerName is the file in the golden directory holding goldenMarker.
	markerName = "owner"
	// maxMarkerBytes caps what is read of a marker.
	maxMarkerBytes = 4 << 10
	goldenExt      = ".raw"
	preparePrefix  = ".prepare-"
	cloneTmpPrefix = "."
)

// fileClones is what the file backend found out about clones, once.
type fileClones struct {
	dir    string // the golden directory; "" when clones are off
	reason string // why clones are off
}

var _ volume.Cloner = Backend{}

// probeClones finds out, once per volume directory, whether a file in the
// golden directory can be cloned into the volume directory (FICLONE), and
// creates the golden directory if so.
func probeClones(dir string) *fileClones {
	gdir := filepath.Join(dir, goldenDirName)
	_, existed := os.Lstat(gdir)
	if err := initGoldenDir(gdir); err != nil {
		return &fileClones{reason: err.Error()}
	}
	fc := probeClone(dir, gdir)
	if fc.dir == "" && existed != nil {
		// Made for nothing: leave the directory as it was.
		_ = os.Remove(filepath.Join(gdir, markerName))
		_ = os.Remove(gdir)
	}
	return fc
}

// probeClone tries FICLONE from a file in gdir to one in dir.
func probeClone(dir, gdir string) *fileClones {
	src, err := os.CreateTemp(gdir, ".probe-*")
	if err != nil {
		return &fileClones{reason: fmt.Sprintf("create a probe file in %s: %v", gdir, err)}
	}
	defer os.Remove(src.Name())
	defer src.Close()
	dst, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return &fileClones{reason: fmt.Sprintf("create a probe file in %s: %v", dir, err)}
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return &fileClones{reason: fmt.Sprintf("write a probe file in %s: %v", gdir, err)}
	}
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		return &fileClones{reason: cloneErrReason(dir, err)}
	}
	return &fileClones{dir: gdir}
}

// cloneErrReason says why FICLONE failed with err in dir.
func cloneErrReason(dir string, err error) string {
	kind := fsutil.KindOf(dir)
	switch {
	case errors.Is(err, unix.EXDEV):
		return fmt.Sprintf("%s and its %s directory are on different file systems (%v)", dir, goldenDirName, err)
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOTTY), errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS):
		return fmt.Sprintf("the file system of %s (%s) has no reflinks (FICLONE: %v); XFS made with reflink=1 and btrfs have them", dir, kind, err)
	}
	return fmt.Sprintf("FICLONE in %s (%s) failed: %v", dir, kind, err)
}

// initGoldenDir creates (or checks) the golden directory: a directory of
// the provisioner's is one that holds its marker; an existing one without
// it is refused, and nothing in it is touched.
func initGoldenDir(gdir string) error {
	marker := filepath.Join(gdir, markerName)
	err := os.Mkdir(gdir, 0o750)
	if err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create the golden directory %s: %w", gdir, err)
	}
	if err != nil {
		st, serr := os.Lstat(gdir)
		if serr != nil || !st.IsDir() {
			return fmt.Errorf("%s exists and is not a directory the provisioner created; move it away to use clones", gdir)
		}
		got, rerr := fsutil.ReadSmallFile(marker, maxMarkerBytes)
		if errors.Is(rerr, os.ErrNotExist) {
			if ents, _ := os.ReadDir(gdir); len(ents) == 0 {
				rerr = fsutil.WriteFileSync(marker, []byte(goldenMarker))
				got = []byte(goldenMarker)
			}
		}
		if rerr != nil || string(got) != goldenMarker {
			return fmt.Errorf("%s exists but does not hold the provisioner's marker; move it away to use clones", gdir)
		}
		return nil
	}
	if err := fsutil.WriteFileSync(marker, []byte(goldenMarker)); err != nil {
		return fmt.Errorf("mark the golden directory %s: %w", gdir, err)
	}
	return fsutil.SyncDir(filepath.Dir(gdir))
}

// DisableClones turns clones off (say why); the worker converts into every
// volume as it would on a file system without reflinks.
func (b *Backend) DisableClones(reason string) { b.clone = &fileClones{reason: reason} }

// CloneSupport reports what New found: whether the volume
// directory's file system makes reflinks between the golden directory and
// the volumes.
func (b Backend) CloneSupport() (bool, string) {
	if b.clone == nil {
		return false, "the backend was not opened with New"
	}
	return b.clone.dir != "", b.clone.reason
}

func (b Backend) goldenDir() (string, error) {
	if ok, reason := b.CloneSupport(); !ok {
		return "", fmt.Errorf("%w: %s", volume.ErrCloneUnsupported, reason)
	}
	return b.clone.dir, nil
}

func (b Backend) goldenPath(key string) (string, error) {
	gdir, err := b.goldenDir()
	if err != nil {
		return "", err
	}
	if err := volume.ValidGoldenKey(key); err != nil {
		return "", err
	}
	return filepath.Join(gdir, key+goldenExt), nil
}

// PrepareGolden creates a sparse file of size bytes in the golden directory.
func (b Backend) PrepareGolden(_ context.Context, key string, size int64) (volume.Volume, error) {
	gdir, err := b.goldenDir()
	if err != nil {
		return volume.Volume{}, err
	}
	if err := volume.ValidGoldenKey(key); err != nil {
		return volume.Volume{}, err
	}
	f, err := os.CreateTemp(gdir, preparePrefix+key+"-*")
	if err != nil {
		return volume.Volume{}, fmt.Errorf("create golden of %s: %w", key, err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		_ = os.Remove(f.Name())
		return volume.Volume{}, fmt.Errorf("size golden of %s to %d bytes: %w", key, size, err)
	}
	return volume.Volume{Name: "golden " + key, Path: f.Name(), Size: size}, nil
}

// SealGolden flushes the prepared file, hashes it, makes it mode 0444,
// renames it to <key>.raw and sets the immutable flag where the file
// system and the worker's privileges allow (Golden.Immutable says).
func (b Backend) SealGolden(ctx context.Context, key string, prepared volume.Volume) (volume.Golden, error) {
	return b.sealGolden(ctx, key, prepared, "")
}

var _ volume.DigestSealer = Backend{}

// SealGoldenDigest is SealGolden for a golden hashed while it was written
// (GoldenHasher): digest is recorded as its content's, and it is not read
// back.
func (b Backend) SealGoldenDigest(ctx context.Context, key string, prepared volume.Volume, digest string) (volume.Golden, error) {
	if digest == "" {
		return volume.Golden{}, fmt.Errorf("seal golden of %s: no digest given", key)
	}
	return b.sealGolden(ctx, key, prepared, digest)
}

// sealGolden seals prepared; digest "" hashes it first.
func (b Backend) sealGolden(ctx context.Context, key string, prepared volume.Volume, digest string) (volume.Golden, error) {
	final, err := b.goldenPath(key)
	if err != nil {
		return volume.Golden{}, err
	}
	gdir := filepath.Dir(final)
	if filepath.Dir(prepared.Path) != gdir || !strings.HasPrefix(filepath.Base(prepared.Path), preparePrefix+key+"-") {
		return volume.Golden{}, fmt.Errorf("seal golden of %s: %s is not a golden being prepared", key, prepared.Path)
	}
	return volume.SealGoldenFile(ctx, key, prepared.Path, final, digest)
}

// RemoveGolden removes key's golden and any file being prepared for it.
func (b Backend) RemoveGolden(_ context.Context, key string) error {
	final, err := b.goldenPath(key)
	if err != nil {
		return err
	}
	gdir := filepath.Dir(final)
	if err := volume.RemoveGoldenFile(final); err != nil {
		return err
	}
	prepared, _ := filepath.Glob(filepath.Join(gdir, preparePrefix+key+"-*"))
	for _, p := range prepared {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove golden being prepared %s: %w", p, err)
		}
	}
	return fsutil.SyncDir(gdir)
}

// GoldenKeys lists the keys with a golden file or one being prepared.
func (b Backend) GoldenKeys(context.Context) ([]string, error) {
	gdir, err := b.goldenDir()
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(gdir)
	if err != nil {
		return nil, fmt.Errorf("list goldens in %s: %w", gdir, err)
	}
	return volume.GoldenKeysIn(ents, func(name string) (string, bool) {
		switch {
		case strings.HasPrefix(name, preparePrefix):
			key, _, _ := strings.Cut(strings.TrimPrefix(name, preparePrefix), "-")
			return key, true
		case strings.HasSuffix(name, goldenExt):
			return strings.TrimSuffix(name, goldenExt), true
		}
		return "", false
	}), nil
}

// Clone creates volume name as a reflink of g, then grows it to size.
func (b Backend) Clone(_ context.Context, g volume.Golden, name string, size int64) (vol volume.Volume, err error) {
	p, err := b.path(name)
	if err != nil {
		return volume.Volume{}, err
	}
	if _, err := b.goldenDir(); err != nil {
		return volume.Volume{}, err
	}
	if size < g.Size {
		return volume.Volume{}, fmt.Errorf("clone volume %s: %d bytes is less than the image's %d; a clone is never shrunk", p, size, g.Size)
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if errors.Is(err, os.ErrExist) {
		return volume.Volume{}, fmt.Errorf("clone volume %s: it already exists", p)
	}
	if err != nil {
		return volume.Volume{}, fmt.Errorf("clone volume %s: %w", p, err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(p)
		}
	}()
	if err := cloneInto(f, g, size); err != nil {
		return volume.Volume{}, fmt.Errorf("clone volume %s: %w", p, err)
	}
	if err := fsutil.SyncDir(b.Dir); err != nil {
		return volume.Volume{}, err
	}
	return volume.Volume{Name: name, Path: p, Size: size}, nil
}

// cloneInto makes the empty file f a reflink of g grown to size, flushes
// and closes it.
func cloneInto(f *os.File, g volume.Golden, size int64) error {
	defer f.Close()
	src, err := os.OpenFile(g.Path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open golden: %w", err)
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return fmt.Errorf("stat golden: %w", err)
	}
	if st.Size() != g.Size {
		return fmt.Errorf("golden %s is %d bytes, not the %d it was sealed with", g.Path, st.Size(), g.Size)
	}
	if err := unix.IoctlFileClone(int(f.Fd()), int(src.Fd())); err != nil {
		return fmt.Errorf("FICLONE from %s: %w", g.Path, err)
	}
	if size > g.Size {
		if err := f.Truncate(size); err != nil {
			return fmt.Errorf("grow to %d bytes: %w", size, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return f.Close()
}

// Reclone clones g to a temporary name next to vol, gives it vol's size,
// mode and owner, and renames it over vol.
func (b Backend) Reclone(_ context.Context, g volume.Golden, vol volume.Volume) (volume.Volume, error) {
	p, err := b.path(vol.Name)
	if err != nil {
		return volume.Volume{}, err
	}
	if _, err := b.goldenDir(); err != nil {
		return volume.Volume{}, err
	}
	old, err := os.Lstat(p)
	if err != nil {
		return volume.Volume{}, fmt.Errorf("reclone volume %s: %w", p, err)
	}
	if err := checkVolumeFile(p, old); err != nil {
		return volume.Volume{}, err
	}
	size := old.Size()
	if size < g.Size {
		return volume.Volume{}, fmt.Errorf("reclone volume %s: its %d bytes are less than the image's %d", p, size, g.Size)
	}
	f, err := os.CreateTemp(b.Dir, cloneTmpPrefix+vol.Name+".clone-*")
	if err != nil {
		return volume.Volume{}, fmt.Errorf("reclone volume %s: %w", p, err)
	}
	tmp := f.Name()
	_ = f.Chmod(old.Mode().Perm())
	if sys, ok := old.Sys().(*syscall.Stat_t); ok {
		_ = f.Chown(int(sys.Uid), int(sys.Gid)) // keeps a volume handed to another user theirs (as root)
	}
	if err := cloneInto(f, g, size); err != nil {
		_ = os.Remove(tmp)
		return volume.Volume{}, fmt.Errorf("reclone volume %s: %w", p, err)
	}
	// The volume may have been replaced meanwhile by something else: only a
	// regular file is renamed over.
	if cur, err := os.Lstat(p); err != nil || checkVolumeFile(p, cur) != nil {
		_ = os.Remove(tmp)
		return volume.Volume{}, fmt.Errorf("reclone volume %s: it changed while it was being cloned; left as it is", p)
	}
	if err := os.Rename(tmp, p); err != nil {
		_ = os.Remove(tmp)
		return volume.Volume{}, fmt.Errorf("reclone volume %s: %w", p, err)
	}
	if err := fsutil.SyncDir(b.Dir); err != nil {
		return volume.Volume{}, err
	}
	return volume.Volume{Name: vol.Name, Path: p, Size: size}, nil
}
