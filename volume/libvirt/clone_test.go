//go:build cgo

package libvirt_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	golibvirt "libvirt.org/go/libvirt"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
	"github.com/libvirt-volume-provisioner/provisioner/volume/libvirt"
	"github.com/libvirt-volume-provisioner/provisioner/volume/volumetest"
)

// goldenSize is the images' virtual size here: not a multiple of the file
// systems' 4 KiB blocks, so what a clone grows past the golden must be
// zeroed.
const goldenSize = 24<<20 + 512

// fsPool defines and starts a dir pool in a directory of a new file system
// of kind on a loop device (testenv.FileSystem: unmounted and detached when
// the test ends), traversable by QEMU, and opens a Backend on it.
func fsPool(t *testing.T, kind string) (*libvirt.Backend, *golibvirt.Connect, string, string) {
	t.Helper()
	conn, uri := testConn(t)
	mnt := testenv.FileSystem(t, kind)
	for p := mnt; p != filepath.Dir(p) && p != os.TempDir(); p = filepath.Dir(p) {
		require.NoError(t, os.Chmod(p, 0o755)) // QEMU runs as libvirt-qemu
	}
	dir := filepath.Join(mnt, "pool")
	require.NoError(t, os.Mkdir(dir, 0o755))
	name := unique(t, "pool")
	pool, err := conn.StoragePoolCreateXML(fmt.Sprintf("<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>", name, dir), 0)
	require.NoError(t, err, "start pool %s", name)
	t.Cleanup(func() {
		_ = pool.Destroy()
		_ = pool.Free()
	})
	b, err := libvirt.Open(uri, name)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return b, conn, name, dir
}

func usedBytes(t *testing.T, dir string) int64 {
	t.Helper()
	unix.Sync()
	var st unix.Statfs_t
	require.NoError(t, unix.Statfs(dir, &st))
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

func TestDirPoolReflinkClones(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{testenv.XFS, testenv.Btrfs} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b, conn, pool, dir := fsPool(t, kind)
			ok, reason := b.CloneSupport()
			require.True(t, ok, reason)
			const key = "bb22"
			g, raw := volumetest.HashedGolden(t, b, key, goldenSize, 8)

			// Sealed: a read-only, immutable volume of the pool whose digest
			// is the image's disk's.
			require.Equal(t, filepath.Join(dir, ".golden-"+key+".raw"), g.Path)
			st, err := os.Stat(g.Path)
			require.NoError(t, err)
			require.Equal(t, os.FileMode(0o444), st.Mode().Perm())
			require.True(t, g.Immutable)
			ref, err := volume.GoldenDigest(ctx, raw)
			require.NoError(t, err)
			require.Equal(t, ref, g.Digest)
			require.Contains(t, poolVolumes(t, conn, pool), ".golden-"+key+".raw", "virsh vol-list shows the golden")
			keys, err := b.GoldenKeys(ctx)
			require.NoError(t, err)
			require.Equal(t, []string{key}, keys)

			// Byte-exact clones of any size, taking almost no new space.
			used := usedBytes(t, dir)
			a, err := b.Clone(ctx, g, "vm-a", 64<<20)
			require.NoError(t, err)
			require.Less(t, usedBytes(t, dir)-used, int64(1<<20), "a clone shares the golden's blocks")
			testenv.RequireVolumeIs(t, a.Path, a.Size, raw)
			c, err := b.Clone(ctx, g, "vm-c", 32<<20)
			require.NoError(t, err)
			testenv.RequireVolumeIs(t, c.Path, c.Size, raw)
			require.Subset(t, poolVolumes(t, conn, pool), []string{"vm-a", "vm-c"})
			got, ok, err := b.Lookup(ctx, "vm-a")
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, a, got)
			_, err = b.Clone(ctx, g, "vm-a", 64<<20)
			require.ErrorContains(t, err, "already exists")
			_, err = b.Clone(ctx, g, "vm-small", goldenSize-512)
			require.ErrorContains(t, err, "a clone is never shrunk")
			require.NotContains(t, poolVolumes(t, conn, pool), "vm-small")

			// Writes into one clone change neither the other nor the golden.
			volumetest.Scribble(t, a.Path, 0, 5<<20, goldenSize-100, 40<<20)
			testenv.RequireVolumeIs(t, c.Path, c.Size, raw)
			testenv.RequireVolumeIs(t, g.Path, g.Size, raw)

			// Reprovisioning: the name never goes missing or reads short.
			requireReclone(t, b, g, a, raw)
			testenv.RequireVolumeIs(t, c.Path, c.Size, raw)

			// The golden evicted, its clones stay whole and usable.
			require.NoError(t, b.RemoveGolden(ctx, key))
			require.NoFileExists(t, g.Path)
			require.NotContains(t, poolVolumes(t, conn, pool), ".golden-"+key+".raw")
			testenv.RequireVolumeIs(t, a.Path, a.Size, raw)
			testenv.RequireVolumeIs(t, c.Path, c.Size, raw)
			volumetest.Scribble(t, c.Path, 0)
			testenv.RequireVolumeIs(t, a.Path, a.Size, raw)
			keys, err = b.GoldenKeys(ctx)
			require.NoError(t, err)
			require.Empty(t, keys)
			require.NoError(t, b.Delete(ctx, "vm-c"))
		})
	}
}

// requireReclone reclones vol from g while another goroutine checks that
// the name always holds a whole volume of its size.
func requireReclone(t *testing.T, b *libvirt.Backend, g volume.Golden, vol volume.Volume, raw string) {
	t.Helper()
	oldIno := volumetest.Inode(t, vol.Path)
	stop := volumetest.WatchVolume(t, vol.Path, vol.Size)
	got, err := b.Reclone(context.Background(), g, vol)
	stop()
	require.NoError(t, err)
	require.Equal(t, vol, got)
	require.NotEqual(t, oldIno, volumetest.Inode(t, vol.Path), "a fresh clone replaced the volume")
	testenv.RequireVolumeIs(t, got.Path, got.Size, raw)
	vols, err := os.ReadDir(filepath.Dir(vol.Path))
	require.NoError(t, err)
	for _, d := range vols {
		require.NotContains(t, d.Name(), ".clone-", "no temporary clone is left")
	}
}

// TestDirPoolWithoutReflinks: on ext4 libvirt cannot clone with reflink, so
// the backend says why and makes no goldens; clones can be turned off.
func TestDirPoolWithoutReflinks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b, conn, pool, dir := fsPool(t, testenv.Ext4)
	ok, reason := b.CloneSupport()
	require.False(t, ok)
	require.Contains(t, reason, "libvirt cannot clone volumes with reflink")
	require.Contains(t, reason, "ext4")
	_, err := b.PrepareGolden(ctx, "cc33", 1<<20)
	require.ErrorIs(t, err, volume.ErrCloneUnsupported)
	for _, v := range poolVolumes(t, conn, pool) {
		require.NotContains(t, v, ".probe-", "the probe's volumes are removed")
	}
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range ents {
		require.NotContains(t, e.Name(), ".probe-")
		require.NotContains(t, e.Name(), ".golden", "a pool without clones gets no marker")
	}

	_, uri := testConn(t)
	off, err := libvirt.Open(uri, pool, libvirt.WithoutClones("PROVISIONER_CLONES=off"))
	require.NoError(t, err)
	defer off.Close()
	ok, reason = off.CloneSupport()
	require.False(t, ok)
	require.Equal(t, "PROVISIONER_CLONES=off", reason)
}

// TestCreateRefusedWithoutSpace: a volume that libvirt would allocate
// whole is refused, before anything is created, when the pool's file
// system has less free.
func TestCreateRefusedWithoutSpace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b, conn, pool, dir := fsPool(t, testenv.Ext4)
	free, where, err := b.FreeSpace(ctx)
	require.NoError(t, err)
	require.Contains(t, where, dir)
	_, err = b.Create(ctx, "vm-big", free+64<<20)
	require.ErrorIs(t, err, volume.ErrNoSpace)
	require.ErrorContains(t, err, "it is allocated whole")
	require.NotContains(t, poolVolumes(t, conn, pool), "vm-big")
	require.NoFileExists(t, filepath.Join(dir, "vm-big"))
	_, err = b.Create(ctx, "vm-fits", 8<<20)
	require.NoError(t, err)
}
