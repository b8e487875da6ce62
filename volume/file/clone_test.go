package file

import (
	"context"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
	"github.com/libvirt-volume-provisioner/provisioner/volume/volumetest"
)

// goldenSize is an image's virtual size in these tests: not a multiple of
// the file systems' 4 KiB blocks, so a clone's growth past the golden's
// partial last block must read as zeros.
const goldenSize = 24<<20 + 512

func TestFileBackendReflinkClones(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{testenv.XFS, testenv.Btrfs} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b, err := New(filepath.Join(testenv.FileSystem(t, kind), "volumes"))
			require.NoError(t, err)
			ok, reason := b.CloneSupport()
			require.True(t, ok, reason)
			const key = "aa11"
			g, raw := volumetest.Golden(t, b, key, goldenSize, 7)

			// Sealed: read-only, immutable, its digest that of the image's disk.
			st, err := os.Stat(g.Path)
			require.NoError(t, err)
			require.Equal(t, os.FileMode(0o444), st.Mode().Perm())
			require.Equal(t, int64(goldenSize), g.Size)
			require.True(t, g.Immutable, "the worker runs as root here: the golden gets the immutable flag")
			imm, err := volume.IsImmutable(g.Path)
			require.NoError(t, err)
			require.True(t, imm)
			refDigest, err := volume.GoldenDigest(ctx, raw)
			require.NoError(t, err)
			require.Equal(t, refDigest, g.Digest, "the digest is of the content: the golden reads as the image")
			_, err = os.OpenFile(g.Path, os.O_WRONLY, 0)
			require.Error(t, err, "an immutable golden cannot be opened for writing, even by root")

			// Byte-exact clones of the requested size.
			a, err := b.Clone(ctx, g, "vm-a", 64<<20)
			require.NoError(t, err)
			testenv.RequireVolumeIs(t, a.Path, a.Size, raw)
			c, err := b.Clone(ctx, g, "vm-b", 32<<20)
			require.NoError(t, err)
			testenv.RequireVolumeIs(t, c.Path, c.Size, raw)
			_, err = b.Clone(ctx, g, "vm-a", 64<<20)
			require.ErrorContains(t, err, "already exists")
			_, err = b.Clone(ctx, g, "vm-small", goldenSize-512)
			require.ErrorContains(t, err, "a clone is never shrunk")
			require.NoFileExists(t, filepath.Join(b.Dir, "vm-small"))

			// Writes into one clone change neither the other nor the golden.
			volumetest.Scribble(t, a.Path, 0, 5<<20, goldenSize-100, 40<<20)
			testenv.RequireVolumeIs(t, c.Path, c.Size, raw)
			testenv.RequireVolumeIs(t, g.Path, g.Size, raw)

			// Reprovisioning replaces the volume with a fresh clone; the
			// name never goes missing or reads short meanwhile.
			oldIno := volumetest.Inode(t, a.Path)
			stop := volumetest.WatchVolume(t, a.Path, 64<<20)
			for i := range 20 {
				a, err = b.Reclone(ctx, g, a)
				require.NoError(t, err)
				if i == 0 {
					// (Later inode numbers may be reused ones.)
					require.NotEqual(t, oldIno, volumetest.Inode(t, a.Path), "a new file was renamed over the volume")
				}
			}
			stop()
			testenv.RequireVolumeIs(t, a.Path, a.Size, raw)
			require.Equal(t, int64(64<<20), a.Size, "a reclone keeps the volume's size")
			leftovers, _ := filepath.Glob(filepath.Join(b.Dir, ".vm-a.clone-*"))
			require.Empty(t, leftovers)

			// The golden goes (immutable flag and all); its clones stay whole.
			keys, err := b.GoldenKeys(ctx)
			require.NoError(t, err)
			require.Equal(t, []string{key}, keys)
			require.NoError(t, b.RemoveGolden(ctx, key))
			require.NoFileExists(t, g.Path)
			testenv.RequireVolumeIs(t, a.Path, a.Size, raw)
			testenv.RequireVolumeIs(t, c.Path, c.Size, raw)
			keys, err = b.GoldenKeys(ctx)
			require.NoError(t, err)
			require.Empty(t, keys)
		})
	}
}

func TestFileBackendWithoutReflinksConverts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tmpfs := filepath.Join(t.TempDir(), "tmpfs")
	testenv.MountTmpfs(t, tmpfs, "64m")
	xfs := testenv.FileSystem(t, testenv.XFS)
	crossDir := filepath.Join(xfs, "volumes")
	require.NoError(t, os.MkdirAll(filepath.Join(crossDir, goldenDirName), 0o750))
	other := testenv.FileSystem(t, testenv.XFS)
	require.NoError(t, runCmd("mount", "--bind", other, filepath.Join(crossDir, goldenDirName)))
	t.Cleanup(func() { _ = runCmd("umount", filepath.Join(crossDir, goldenDirName)) })

	for _, tc := range []struct {
		name, dir, reason string
	}{
		{"ext4", filepath.Join(testenv.FileSystem(t, testenv.Ext4), "volumes"), "(ext4) has no reflinks"},
		{"tmpfs", filepath.Join(tmpfs, "volumes"), "(tmpfs) has no reflinks"},
		{"cross-filesystem", crossDir, "are on different file systems"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := New(tc.dir)
			require.NoError(t, err)
			ok, reason := b.CloneSupport()
			require.False(t, ok)
			require.Contains(t, reason, tc.reason)
			_, err = b.PrepareGolden(ctx, "ab", 1<<20)
			require.ErrorIs(t, err, volume.ErrCloneUnsupported)
			_, err = b.Clone(ctx, volume.Golden{Key: "ab"}, "vm-1", 1<<20)
			require.ErrorIs(t, err, volume.ErrCloneUnsupported)
			vol, err := b.Create(ctx, "vm-1", 1<<20)
			require.NoError(t, err, "volumes are still made, to be converted into")
			require.FileExists(t, vol.Path)
			leftovers, _ := filepath.Glob(filepath.Join(tc.dir, ".probe-*"))
			require.Empty(t, leftovers)
		})
	}
	_, err := os.Stat(filepath.Join(tmpfs, "volumes", goldenDirName))
	require.ErrorIs(t, err, os.ErrNotExist, "a golden directory made for nothing is removed again")

	off, err := NewWithoutClones(filepath.Join(xfs, "off"))
	require.NoError(t, err)
	ok, reason := off.CloneSupport()
	require.False(t, ok)
	require.Contains(t, reason, "PROVISIONER_CLONES=off")
}

func runCmd(name string, args ...string) error {
	out, err := osexec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %v: %w: %s", name, args, err, out)
	}
	return nil
}
