package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// Backend keeps volumes as raw files in one directory; a volume's file
// name is its name.
type Backend struct {
	// Dir is the directory holding the volumes.
	Dir string
	// clone is what New found out about reflinks in Dir.
	clone *fileClones
}

var _ volume.Backend = Backend{}

// New makes a backend in dir, creating it if needed, and finds
// out once whether its file system makes reflinks (CloneSupport): then it
// keeps its goldens in dir/.golden.
func New(dir string) (*Backend, error) {
	b, err := open(dir)
	if err != nil {
		return nil, err
	}
	b.clone = probeClones(b.Dir)
	return b, nil
}

// open makes (if needed) and opens the volume directory.
func open(dir string) (*Backend, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("volume directory %q: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o750); err != nil {
		return nil, fmt.Errorf("create volume directory %s: %w", abs, err)
	}
	return &Backend{Dir: abs}, nil
}

// NewWithoutClones is New that never clones (and
// creates no golden directory): every volume is converted into.
func NewWithoutClones(dir string) (*Backend, error) {
	b, err := open(dir)
	if err != nil {
		return nil, err
	}
	b.DisableClones("clones are turned off (PROVISIONER_CLONES=off)")
	return b, nil
}

// path returns the file of volume name, refusing names that would leave Dir
// and names starting with a dot (the backend's own files: goldens, clones
// about to replace a volume).
func (b Backend) path(name string) (string, error) {
	if name == "" || strings.HasPrefix(name, ".") || strings.ContainsAny(name, "/\x00") {
		return "", fmt.Errorf("volume name %q is not a plain file name", name)
	}
	return filepath.Join(b.Dir, name), nil
}

// checkVolumeFile refuses a volume path p (described by st) that is not a
// regular file.
func checkVolumeFile(p string, st os.FileInfo) error {
	switch {
	case st.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("volume path %s is a symlink; refusing to touch it", p)
	case !st.Mode().IsRegular():
		return fmt.Errorf("volume path %s is not a regular file (%s); refusing to touch it", p, st.Mode().Type())
	}
	return nil
}

// Lookup finds the volume name; ok is false when there is no such file.
func (b Backend) Lookup(_ context.Context, name string) (volume.Volume, bool, error) {
	p, err := b.path(name)
	if err != nil {
		return volume.Volume{}, false, err
	}
	st, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return volume.Volume{}, false, nil
	}
	if err != nil {
		return volume.Volume{}, false, fmt.Errorf("look up volume %s: %w", p, err)
	}
	if err := checkVolumeFile(p, st); err != nil {
		return volume.Volume{}, false, err
	}
	return volume.Volume{Name: name, Path: p, Size: st.Size()}, true, nil
}

// Create makes a sparse file of size bytes, reading as zeros; it fails if
// the name exists.
func (b Backend) Create(_ context.Context, name string, size int64) (vol volume.Volume, err error) {
	p, err := b.path(name)
	if err != nil {
		return volume.Volume{}, err
	}
	if size <= 0 {
		return volume.Volume{}, fmt.Errorf("create volume %s: size %d is not positive", p, size)
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if errors.Is(err, os.ErrExist) {
		return volume.Volume{}, fmt.Errorf("create volume %s: it already exists", p)
	}
	if err != nil {
		return volume.Volume{}, fmt.Errorf("create volume %s: %w", p, err)
	}
	defer func() {
		if f != nil {
			_ = f.Close()
		}
		if err != nil {
			_ = os.Remove(p)
		}
	}()
	if err := f.Truncate(size); err != nil {
		return volume.Volume{}, fmt.Errorf("size volume %s to %d bytes: %w", p, size, err)
	}
	if err := f.Sync(); err != nil {
		return volume.Volume{}, fmt.Errorf("flush volume %s: %w", p, err)
	}
	cerr := f.Close()
	f = nil
	if cerr != nil {
		return volume.Volume{}, fmt.Errorf("close volume %s: %w", p, cerr)
	}
	if err := fsutil.SyncDir(b.Dir); err != nil {
		return volume.Volume{}, err
	}
	return volume.Volume{Name: name, Path: p, Size: size}, nil
}

// Delete removes the volume's file; a missing volume is not an error.
func (b Backend) Delete(_ context.Context, name string) error {
	p, err := b.path(name)
	if err != nil {
		return err
	}
	st, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete volume %s: %w", p, err)
	}
	if err := checkVolumeFile(p, st); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete volume %s: %w", p, err)
	}
	return fsutil.SyncDir(b.Dir)
}

var _ volume.UseChecker = Backend{}

// CheckNotInUse returns a *volume.InUseError for a volume file on which
// another open file holds a lock: QEMU locks bytes of every disk image it
// opens (its image locking, on by default), so a running VM's disk is found
// this way, as is any other program that locks the file.
func (b Backend) CheckNotInUse(_ context.Context, vol volume.Volume) error {
	p, err := b.path(vol.Name)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("check whether volume %s is in use: %w", p, err)
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return fmt.Errorf("check whether volume %s is in use: %w", p, err)
	}
	if lk.Type != unix.F_UNLCK {
		who := "another process"
		if lk.Pid > 0 {
			who = fmt.Sprintf("process %d", lk.Pid)
		}
		return &volume.InUseError{Volume: vol.Name, Action: "overwrite",
			Reason: fmt.Sprintf("volume %q is in use: %s holds a lock on %s (a running VM's QEMU locks its disks)", vol.Name, who, p)}
	}
	return nil
}

// FreeSpace is the free space of the volume directory's file system.
func (b Backend) FreeSpace(context.Context) (int64, string, error) {
	free, err := volume.FreeBytes(b.Dir)
	return free, "the file system of " + b.Dir, err
}

var _ volume.SpaceReporter = Backend{}
