//go:build cgo

package libvirt_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
	"github.com/libvirt-volume-provisioner/provisioner/volume/libvirt"
)

const mib = 1 << 20

// openBackend opens a Backend on a new started dir pool and returns it with
// the pool's name and directory.
func openBackend(t *testing.T) (*libvirt.Backend, string, string) {
	t.Helper()
	conn, uri := testConn(t)
	name, dir := definePool(t, conn, true)
	b, err := libvirt.Open(uri, name)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	require.Equal(t, "dir", b.PoolType())
	return b, name, dir
}

func TestCreateLookupDelete(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b, _, dir := openBackend(t)

	_, ok, err := b.Lookup(ctx, "vm-1")
	require.NoError(t, err)
	require.False(t, ok)

	const size = 10*mib + 4096
	v, err := b.Create(ctx, "vm-1", size)
	require.NoError(t, err)
	require.Equal(t, volume.Volume{Name: "vm-1", Path: filepath.Join(dir, "vm-1"), Size: size}, v)

	got, ok, err := b.Lookup(ctx, "vm-1")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, v, got)
	st, err := os.Lstat(got.Path)
	require.NoError(t, err)
	require.True(t, st.Mode().IsRegular(), "mode %s", st.Mode())
	require.Equal(t, int64(size), st.Size())
	data, err := os.ReadFile(got.Path)
	require.NoError(t, err)
	require.Equal(t, make([]byte, size), data, "a new volume reads as zeros")

	require.NoError(t, b.Refresh(ctx))
	require.NoError(t, b.Delete(ctx, "vm-1"))
	_, ok, err = b.Lookup(ctx, "vm-1")
	require.NoError(t, err)
	require.False(t, ok)
	_, err = os.Lstat(got.Path)
	require.ErrorIs(t, err, os.ErrNotExist)
	require.NoError(t, b.Delete(ctx, "vm-1"), "deleting a missing volume is not an error")
}

func TestCreateExistingFails(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b, pool, dir := openBackend(t)

	_, err := b.Create(ctx, "vm-1", mib)
	require.NoError(t, err)
	_, err = b.Create(ctx, "vm-1", 2*mib)
	require.EqualError(t, err, fmt.Sprintf("create volume %q in libvirt storage pool %q: it already exists", "vm-1", pool))
	got, ok, err := b.Lookup(ctx, "vm-1")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, int64(mib), got.Size, "the existing volume is untouched")

	// A file put in the pool's directory behind libvirt's back is found too.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "vm-2"), bytes.Repeat([]byte{7}, 4096), 0o600))
	_, err = b.Create(ctx, "vm-2", mib)
	require.EqualError(t, err, fmt.Sprintf("create volume %q in libvirt storage pool %q: it already exists", "vm-2", pool))
	got, ok, err = b.Lookup(ctx, "vm-2")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, int64(4096), got.Size)
}

func TestInvalidNames(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b, _, _ := openBackend(t)
	for _, name := range []string{"", "../x", "a/b", "-x", "snapshot1"} {
		_, _, err := b.Lookup(ctx, name)
		require.Error(t, err, "Lookup %q", name)
		_, err = b.Create(ctx, name, mib)
		require.Error(t, err, "Create %q", name)
		require.Error(t, b.Delete(ctx, name), "Delete %q", name)
	}
	_, err := b.Create(ctx, "vm-1", 0)
	require.ErrorContains(t, err, "size 0 is not positive")
}

func TestLookupRefusesWhatIsNotARawFile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	qemuImg := testenv.QemuImg(t)
	b, _, dir := openBackend(t)

	out, err := exec.Command(qemuImg, "create", "-f", "qcow2", filepath.Join(dir, "vm-qcow2"), "1M").CombinedOutput()
	require.NoError(t, err, "%s", out)
	_, _, err = b.Lookup(ctx, "vm-qcow2")
	require.ErrorContains(t, err, "has format qcow2; only raw volumes can be written")

	target := filepath.Join(t.TempDir(), "target")
	require.NoError(t, os.WriteFile(target, make([]byte, 4096), 0o600))
	require.NoError(t, os.Symlink(target, filepath.Join(dir, "vm-link")))
	_, _, err = b.Lookup(ctx, "vm-link")
	require.ErrorContains(t, err, "is a symlink; refusing to touch it")
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	conn, uri := testConn(t)

	missing := unique(t, "missing")
	_, err := libvirt.Open(uri, missing)
	require.ErrorContains(t, err, fmt.Sprintf("libvirt storage pool %q does not exist at %s", missing, uri))
	_, err = libvirt.OpenImagesPool(uri, missing)
	require.ErrorContains(t, err, fmt.Sprintf("libvirt storage pool %q does not exist at %s", missing, uri))

	inactive, _ := definePool(t, conn, false)
	_, err = libvirt.Open(uri, inactive)
	require.ErrorContains(t, err, fmt.Sprintf("libvirt storage pool %q at %s is not active", inactive, uri))

	_, err = libvirt.Open("qemu:///nonesuch", inactive)
	require.ErrorContains(t, err, "connect to libvirt at qemu:///nonesuch")
}

func TestImagesPool(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, uri := testConn(t)
	name, dir := definePool(t, conn, true)

	images, err := libvirt.OpenImagesPool(uri, name)
	require.NoError(t, err)
	defer images.Close()
	require.Equal(t, dir, images.Dir())
	require.Equal(t, name, images.Name())

	const file = "0123abcd-ubuntu.qcow2"
	require.NotContains(t, poolVolumes(t, conn, name), file)
	require.NoError(t, os.WriteFile(filepath.Join(images.Dir(), file), make([]byte, 64<<10), 0o640))
	require.NoError(t, images.Refresh(ctx))
	require.Contains(t, poolVolumes(t, conn, name), file)

	require.NoError(t, os.Remove(filepath.Join(images.Dir(), file)))
	require.NoError(t, images.Refresh(ctx))
	require.NotContains(t, poolVolumes(t, conn, name), file)
}

func TestCheckNotInUseRunningDomain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, _ := testConn(t)
	b, pool, _ := openBackend(t)

	direct, err := b.Create(ctx, "vm-1", mib)
	require.NoError(t, err)
	linked, err := b.Create(ctx, "vm-2", mib)
	require.NoError(t, err)
	byName, err := b.Create(ctx, "vm-3", mib)
	require.NoError(t, err)
	free, err := b.Create(ctx, "vm-4", mib)
	require.NoError(t, err)
	link := filepath.Join(worldDir(t), "disk-link")
	require.NoError(t, os.Symlink(linked.Path, link))

	for _, v := range []volume.Volume{direct, linked, byName, free} {
		require.NoError(t, b.CheckNotInUse(ctx, v), "no domain runs yet")
	}
	dom := unique(t, "dom")
	d := startDomain(t, conn, dom, fileDisk(direct.Path, "vda")+fileDisk(link, "vdb")+volumeDisk(pool, byName.Name, "vdc"))
	active, err := d.IsActive()
	require.NoError(t, err)
	require.True(t, active)

	for _, v := range []volume.Volume{direct, linked, byName} {
		err := b.CheckNotInUse(ctx, v)
		require.EqualError(t, err, fmt.Sprintf("volume %q (%s) is attached to running domain %q; refusing to overwrite it", v.Name, v.Path, dom))
	}
	require.NoError(t, b.CheckNotInUse(ctx, free), "a volume no domain has is not in use")

	destroyDomain(t, d)
	for _, v := range []volume.Volume{direct, linked, byName, free} {
		require.NoError(t, b.CheckNotInUse(ctx, v), "the domain is gone")
	}
}

// provision does what the worker does with an existing volume: look it up,
// check the size, refuse it in use, and only then write data into it.
func provision(ctx context.Context, b *libvirt.Backend, name string, data []byte) error {
	vol, ok, err := b.Lookup(ctx, name)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("volume %q does not exist", name)
	}
	if err := volume.CheckReuse(vol, int64(len(data))); err != nil {
		return err
	}
	if err := b.CheckNotInUse(ctx, vol); err != nil {
		return err
	}
	f, err := os.OpenFile(vol.Path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func TestRefusedVolumeKeepsItsContent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, _ := testConn(t)
	b, pool, _ := openBackend(t)

	vol, err := b.Create(ctx, "vm-root", 2*mib)
	require.NoError(t, err)
	old := bytes.Repeat([]byte("the VM's own data "), 2*mib/18)
	f, err := os.OpenFile(vol.Path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(old, 0)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	before := fileSum(t, vol.Path)

	dom := unique(t, "dom")
	d := startDomain(t, conn, dom, volumeDisk(pool, vol.Name, "vda"))
	image := bytes.Repeat([]byte{0xAB}, 2*mib)
	err = provision(ctx, b, vol.Name, image)
	require.EqualError(t, err, fmt.Sprintf("volume %q (%s) is attached to running domain %q; refusing to overwrite it", vol.Name, vol.Path, dom))
	require.Equal(t, before, fileSum(t, vol.Path), "nothing was written")
	got, ok, err := b.Lookup(ctx, vol.Name)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, vol, got)

	destroyDomain(t, d)
	require.Equal(t, before, fileSum(t, vol.Path), "the domain did not write either")
	require.NoError(t, provision(ctx, b, vol.Name, image))
	require.NotEqual(t, before, fileSum(t, vol.Path), "once the domain is gone the volume is written")
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	return sha256.Sum256(data)
}
