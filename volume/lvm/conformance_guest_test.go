//go:build lvmguest

package lvm

import (
	"context"
	"errors"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
	"github.com/libvirt-volume-provisioner/provisioner/volume/volumetest"
)

// TestLVMGuestConformance runs the backend conformance suite on the guest's
// volume group, which its subtests share with the other guest tests (their
// LV names start with "vt-").
func TestLVMGuestConformance(t *testing.T) {
	t.Parallel()
	b := guestBackend(t)
	vg, err := b.vg(t.Context())
	require.NoError(t, err)
	require.Zero(t, guestLVSize%vg.ExtentSize, "the suite's LVs are whole extents")
	volumetest.Run(t, volumetest.Harness[*Backend]{
		New:       guestBackend,
		Size:      guestLVSize,
		SmallSize: vg.ExtentSize,
		Path:      (*Backend).lvPath,
		ExistsError: func(b *Backend, name string) string {
			return "create logical volume " + b.VG + "/" + name + ": it already exists"
		},
		InvalidNames: []string{"-lvg", "lvg/x", "lvg x", "snapshot-lvg", "pvmove0", "lvg_tmeta", "lvg+1", strings.Repeat("a", 128)},
		NameError:    "logical volume name",
		Names: func(t *testing.T, b *Backend) []string {
			return slices.Collect(maps.Keys(vgLVs(t, b)))
		},
		Read: func(t *testing.T, vol volume.Volume) []byte {
			return readDevice(t, vol.Path, vol.Size)
		},
		PutForeign: putForeignLV,
		PutUnusable: func(t *testing.T, b *Backend, name string) string {
			inactiveLV(t, b, name)
			return "exists but is not active"
		},
		Symlinks:   volumetest.SymlinkResolved,
		Holders:    []volumetest.Holder[*Backend]{{Name: "OpenDevice", Hold: holdOpen}},
		InUseError: lvInUse,
		Images:     guestImages,
	})
}

// putForeignLV makes LV name of one extent with lvcreate, as an
// administrator would, fills it with 7s, and removes it when the test ends.
func putForeignLV(t *testing.T, b *Backend, name string) []byte {
	t.Helper()
	vg, err := b.vg(t.Context())
	require.NoError(t, err)
	size := vg.ExtentSize
	require.NoError(t, b.change(t.Context(), lvmCommand("lvcreate", "--yes", "--name", name,
		"--size", strconv.FormatInt(size, 10)+"b", "--activate", "y", b.VG)...))
	t.Cleanup(func() {
		if err := b.change(context.Background(), lvremoveArgs(b.VG, name)...); err != nil {
			t.Errorf("clean up %s: %v", name, err)
		}
	})
	fillDevice(t, b.lvPath(name), size, 7)
	return readDevice(t, b.lvPath(name), size)
}

// holdOpen opens the LV's device, as a running VM holds its disk.
func holdOpen(t *testing.T, b *Backend, vol volume.Volume) volumetest.Use {
	t.Helper()
	f, err := os.Open(vol.Path)
	require.NoError(t, err)
	release := sync.OnceFunc(func() { _ = f.Close() })
	t.Cleanup(release)
	require.True(t, vgLVs(t, b)[vol.Name].Open, "lvs reports the LV open")
	refusal := "logical volume " + b.VG + "/" + vol.Name + " is open (a running VM may be using it); refusing to "
	return volumetest.Use{Release: release, Refusal: refusal + "overwrite it", RemoveRefusal: refusal + "remove it"}
}

// lvInUse takes apart the backend's *InUseError.
func lvInUse(err error) (name, action string, ok bool) {
	var e *InUseError
	if !errors.As(err, &e) {
		return "", "", false
	}
	return e.LV, e.Action, true
}
