package volume

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrNoSpace matches (errors.Is) the error of a job that would write more
// than its volumes' file system has free: it fails before it writes
// anything.
var ErrNoSpace = errors.New("not enough free space")

// ErrFreeSpaceUnknown: the backend cannot tell its free space in bytes
// (a logical pool checks its own).
var ErrFreeSpaceUnknown = errors.New("the free space of the volumes' storage is not known in bytes")

// SpaceReporter is implemented by backends whose volumes, and goldens, are
// files in one file system: FreeSpace is what can still be written there,
// and where names it for messages.
type SpaceReporter interface {
	FreeSpace(ctx context.Context) (free int64, where string, err error)
}

// FreeBytes is the space that can still be written in the file system
// holding dir (statfs: available blocks, as for an unprivileged user).
func FreeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("free space of the file system of %s: %w", dir, err)
	}
	return int64(st.Bavail) * st.Frsize, nil
}

// AllocatedBytes is the space the file at path takes in its file system
// (0 for what is not a regular file).
func AllocatedBytes(path string) int64 {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0
	}
	return st.Blocks * 512
}
