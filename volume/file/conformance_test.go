package file_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
	"github.com/libvirt-volume-provisioner/provisioner/volume/file"
	"github.com/libvirt-volume-provisioner/provisioner/volume/volumetest"
)

// TestConformance runs the backend conformance suite on a volume directory
// of the test's own.
func TestConformance(t *testing.T) {
	t.Parallel()
	volumetest.Run(t, volumetest.Harness[*file.Backend]{
		New: func(t *testing.T) *file.Backend {
			b, err := file.New(filepath.Join(t.TempDir(), "volumes"))
			require.NoError(t, err)
			return b
		},
		Size:            16 << 20,
		SmallSize:       1 << 20,
		Path:            volumePath,
		NewReadsAsZeros: true,
		ExistsError: func(b *file.Backend, name string) string {
			return fmt.Sprintf("create volume %s: it already exists", volumePath(b, name))
		},
		// A name starting with a dot is one of the backend's own files.
		InvalidNames: []string{"../precious", ".golden", ".vm-1.clone-1"},
		NameError:    "is not a plain file name",
		Names:        func(t *testing.T, b *file.Backend) []string { return volumetest.DirNames(t, b.Dir) },
		PutForeign: func(t *testing.T, b *file.Backend, name string) []byte {
			data := bytes.Repeat([]byte{7}, 4096)
			require.NoError(t, os.WriteFile(volumePath(b, name), data, 0o600))
			return data
		},
		PutUnusable: func(t *testing.T, b *file.Backend, name string) string {
			require.NoError(t, os.Mkdir(volumePath(b, name), 0o700))
			return "not a regular file"
		},
		Symlinks: volumetest.SymlinkRefused,
		PutSymlink: func(t *testing.T, b *file.Backend, name, target string) {
			require.NoError(t, os.Symlink(target, volumePath(b, name)))
		},
		Holders: []volumetest.Holder[*file.Backend]{{Name: "QEMULock", Hold: holdLock}},
	})
}

func volumePath(b *file.Backend, name string) string { return filepath.Join(b.Dir, name) }

// holdLock takes an OFD lock on a byte of the volume, as QEMU does on the
// disks it opens.
func holdLock(t *testing.T, _ *file.Backend, vol volume.Volume) volumetest.Use {
	f, err := os.OpenFile(vol.Path, os.O_RDWR, 0)
	require.NoError(t, err)
	lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: 100, Len: 1}
	require.NoError(t, unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk))
	release := sync.OnceFunc(func() { _ = f.Close() }) // the lock goes with its file
	t.Cleanup(release)
	return volumetest.Use{
		Release: release,
		Refusal: fmt.Sprintf("volume %q is in use: another process holds a lock on %s (a running VM's QEMU locks its disks); refusing to overwrite it", vol.Name, vol.Path),
	}
}
