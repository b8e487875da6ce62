package file

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
	"github.com/stretchr/testify/require"
)

func TestFileBackendLifecycle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b, err := New(filepath.Join(t.TempDir(), "volumes"))
	require.NoError(t, err)

	_, ok, err := b.Lookup(ctx, "vm1-root")
	require.NoError(t, err)
	require.False(t, ok)

	vol, err := b.Create(ctx, "vm1-root", 10<<20)
	require.NoError(t, err)
	require.Equal(t, volume.Volume{Name: "vm1-root", Path: filepath.Join(b.Dir, "vm1-root"), Size: 10 << 20}, vol)
	data, err := os.ReadFile(vol.Path)
	require.NoError(t, err)
	require.Len(t, data, 10<<20)
	require.True(t, fsutil.AllZero(data))

	got, ok, err := b.Lookup(ctx, "vm1-root")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, vol, got)

	_, err = b.Create(ctx, "vm1-root", 1<<20)
	require.ErrorContains(t, err, "already exists")
	got, _, err = b.Lookup(ctx, "vm1-root")
	require.NoError(t, err)
	require.Equal(t, int64(10<<20), got.Size, "a failed create leaves the volume alone")

	require.NoError(t, b.Delete(ctx, "vm1-root"))
	require.NoFileExists(t, vol.Path)
	require.NoError(t, b.Delete(ctx, "vm1-root"), "deleting a missing volume is not an error")
}

func TestFileBackendRefusesEscapes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	root := t.TempDir()
	b, err := New(filepath.Join(root, "volumes"))
	require.NoError(t, err)
	outside := filepath.Join(root, "precious")
	require.NoError(t, os.WriteFile(outside, []byte("keep me"), 0o600))
	require.NoError(t, os.Symlink(outside, filepath.Join(b.Dir, "link")))

	_, _, err = b.Lookup(ctx, "link")
	require.ErrorContains(t, err, "is a symlink; refusing to touch it")
	require.ErrorContains(t, b.Delete(ctx, "link"), "is a symlink; refusing to touch it")
	_, err = b.Create(ctx, "link", 1<<20)
	require.Error(t, err)
	data, err := os.ReadFile(outside)
	require.NoError(t, err)
	require.Equal(t, "keep me", string(data))

	require.NoError(t, os.Mkdir(filepath.Join(b.Dir, "adir"), 0o700))
	_, _, err = b.Lookup(ctx, "adir")
	require.ErrorContains(t, err, "not a regular file")

	for _, name := range []string{"", ".", "..", "../precious", "a/b"} {
		_, _, err := b.Lookup(ctx, name)
		require.ErrorContains(t, err, "is not a plain file name", name)
		_, err = b.Create(ctx, name, 1<<20)
		require.ErrorContains(t, err, "is not a plain file name", name)
		require.ErrorContains(t, b.Delete(ctx, name), "is not a plain file name", name)
	}
}

func TestCheckReuse(t *testing.T) {
	t.Parallel()
	const req = int64(20) << 30 // 5% is exactly 1 GiB
	fivePct := req * 5 / 100
	for _, size := range []int64{req, req + fivePct, req - fivePct} {
		require.NoError(t, volume.CheckReuse(volume.Volume{Name: "v", Size: size}, req), size)
	}
	for _, size := range []int64{req + fivePct + 1, req - fivePct - 1, 1} {
		require.ErrorContains(t, volume.CheckReuse(volume.Volume{Name: "v", Size: size}, req), "outside the ±5% a reused volume may differ", size)
	}
	require.EqualError(t, volume.CheckReuse(volume.Volume{Name: "v", Size: 10 << 30}, req),
		`volume "v" exists with 10737418240 bytes (10.00 GiB); the request is 21474836480 bytes (20 GiB), outside the ±5% a reused volume may differ; refusing to overwrite it`)
}
