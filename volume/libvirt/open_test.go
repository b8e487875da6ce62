//go:build cgo

package libvirt_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/volume/libvirt"
)

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
	ctx := t.Context()
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
