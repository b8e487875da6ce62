//go:build cgo

package libvirt_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	golibvirt "libvirt.org/go/libvirt"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
	"github.com/libvirt-volume-provisioner/provisioner/volume/libvirt"
	"github.com/libvirt-volume-provisioner/provisioner/volume/volumetest"
)

const mib = 1 << 20

// dirPool is a Backend on a started dir pool of the test's own, with the
// connection and directory the conformance suite's hooks reach behind it
// with.
type dirPool struct {
	*libvirt.Backend
	conn *golibvirt.Connect
	dir  string
}

// openDirPool defines and starts a dir pool in a new directory (removed
// when the test ends) and opens a Backend on it.
func openDirPool(t *testing.T) dirPool {
	t.Helper()
	conn, uri := testConn(t)
	name, dir := definePool(t, conn, true)
	b, err := libvirt.Open(uri, name)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	require.Equal(t, "dir", b.PoolType())
	return dirPool{Backend: b, conn: conn, dir: dir}
}

func (p dirPool) path(name string) string { return filepath.Join(p.dir, name) }

// TestConformance runs the backend conformance suite against the real
// libvirtd, on a dir pool of each subtest's own.
func TestConformance(t *testing.T) {
	t.Parallel()
	volumetest.Run(t, volumetest.Harness[dirPool]{
		New:             openDirPool,
		Size:            16*mib + 4096, // libvirt makes sizes that are no whole MiB exactly
		SmallSize:       mib,
		Path:            dirPool.path,
		NewReadsAsZeros: true,
		ExistsError: func(p dirPool, name string) string {
			return fmt.Sprintf("create volume %q in libvirt storage pool %q: it already exists", name, p.Pool())
		},
		InvalidNames: []string{"-x", "snapshot1"},
		Names:        func(t *testing.T, p dirPool) []string { return volumetest.DirNames(t, p.dir) },
		// A file put in the pool's directory behind libvirt's back.
		PutForeign: func(t *testing.T, p dirPool, name string) []byte {
			data := bytes.Repeat([]byte{7}, 4096)
			require.NoError(t, os.WriteFile(p.path(name), data, 0o600))
			return data
		},
		PutUnusable: func(t *testing.T, p dirPool, name string) string {
			out, err := exec.Command(testenv.QemuImg(t), "create", "-f", "qcow2", p.path(name), "1M").CombinedOutput()
			require.NoError(t, err, "%s", out)
			return "has format qcow2; only raw volumes can be written"
		},
		Symlinks: volumetest.SymlinkUnlinked,
		PutSymlink: func(t *testing.T, p dirPool, name, target string) {
			require.NoError(t, os.Symlink(target, p.path(name)))
		},
		Holders: []volumetest.Holder[dirPool]{
			{Name: "FileDisk", Hold: func(t *testing.T, p dirPool, vol volume.Volume) volumetest.Use {
				return runDomain(t, p, vol, fileDisk(vol.Path, "vda"))
			}},
			{Name: "SymlinkedFileDisk", Hold: func(t *testing.T, p dirPool, vol volume.Volume) volumetest.Use {
				link := filepath.Join(worldDir(t), "disk-link")
				require.NoError(t, os.Symlink(vol.Path, link))
				return runDomain(t, p, vol, fileDisk(link, "vda"))
			}},
			{Name: "PoolVolumeDisk", Hold: func(t *testing.T, p dirPool, vol volume.Volume) volumetest.Use {
				return runDomain(t, p, vol, volumeDisk(p.Pool(), vol.Name, "vda"))
			}},
		},
	})
}

// runDomain starts a domain with the disk, which is vol, until Release.
func runDomain(t *testing.T, p dirPool, vol volume.Volume, disk string) volumetest.Use {
	t.Helper()
	name := unique(t, "dom")
	d := startDomain(t, p.conn, name, disk)
	active, err := d.IsActive()
	require.NoError(t, err)
	require.True(t, active)
	return volumetest.Use{
		Release: func() { destroyDomain(t, d) },
		Refusal: fmt.Sprintf("volume %q (%s) is attached to running domain %q; refusing to overwrite it", vol.Name, vol.Path, name),
	}
}
