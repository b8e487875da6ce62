//go:build lvmguest

// Tests of what is particular to thick LVs, in the guest VM of
// tests/lvmguest/run.sh; the conformance suite (conformance_guest_test.go)
// checks what every backend does.

package lvm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

func TestLVMGuestMissingVG(t *testing.T) {
	t.Parallel()
	guestBackend(t)
	b, err := New("lvg-no-such-vg")
	require.NoError(t, err)
	err = b.CheckVolumeGroup(t.Context())
	require.ErrorContains(t, err, `Volume group "lvg-no-such-vg" not found`, "lvm's stderr is in the error")
	_, _, err = b.Lookup(t.Context(), "x")
	require.ErrorContains(t, err, "look up logical volume lvg-no-such-vg/x")
}

// TestLVMGuestReports: lvs reports a new LV as the backend reads it; the
// reports the host-side unit tests parse are logged, for reference.
func TestLVMGuestReports(t *testing.T) {
	t.Parallel()
	b := guestBackend(t)
	ctx := t.Context()
	createLV(t, b, "lvg-create", guestLVSize)
	lv, ok := vgLVs(t, b)["lvg-create"]
	require.True(t, ok, "lvs lists the new LV")
	require.Equal(t, int64(guestLVSize), lv.Size)
	require.True(t, lv.Active)
	require.False(t, lv.Open)

	out, err := b.run(ctx, lvsArgs(b.VG, "lvg-create")...)
	require.NoError(t, err)
	t.Logf("lvs report:\n%s", out)
	out, err = b.run(ctx, vgsArgs(b.VG)...)
	require.NoError(t, err)
	t.Logf("vgs report:\n%s", out)
}

// TestLVMGuestCheckGoneLV: the in-use check of an LV that no longer exists
// is an error, not "free".
func TestLVMGuestCheckGoneLV(t *testing.T) {
	t.Parallel()
	b := guestBackend(t)
	require.ErrorContains(t, b.CheckNotInUse(t.Context(), volume.Volume{Name: "lvg-absent"}), "no longer exists")
}

func TestLVMGuestNoSpace(t *testing.T) {
	t.Parallel()
	b := guestBackend(t)
	ctx := t.Context()
	vg, err := b.vg(ctx)
	require.NoError(t, err)
	big := (vg.Size/vg.ExtentSize + 1) * vg.ExtentSize
	_, err = b.Create(ctx, "lvg-big", big)
	require.Error(t, err)
	require.Regexp(t, fmt.Sprintf(`^volume group %q has \d+ bytes free; volume "lvg-big" needs %d$`, b.VG, big), err.Error())
	_, ok, err := b.Lookup(ctx, "lvg-big")
	require.NoError(t, err)
	require.False(t, ok, "nothing was created")

	_, err = b.Create(ctx, "lvg-odd", guestLVSize+512)
	require.ErrorContains(t, err, fmt.Sprintf("is not a multiple of volume group %q's extent size (%d bytes)", b.VG, vg.ExtentSize))
	_, ok, err = b.Lookup(ctx, "lvg-odd")
	require.NoError(t, err)
	require.False(t, ok, "nothing was created")
}

// TestLVMGuestInactiveLV: an inactive LV has no device, so nothing holds
// it; the suite checks that Lookup refuses it.
func TestLVMGuestInactiveLV(t *testing.T) {
	t.Parallel()
	b := guestBackend(t)
	inactiveLV(t, b, "lvg-inactive")
	require.NoError(t, b.CheckNotInUse(t.Context(), volume.Volume{Name: "lvg-inactive"}))
	// Cleanup removes it while inactive.
}

// TestLVMGuestNewLVOverGarbage shows that a new thick LV holds what an
// earlier LV on the same extents left, and that the converter still leaves
// zeros after the image. It does not run in parallel, so no other test takes
// the extents the first LV frees.
func TestLVMGuestNewLVOverGarbage(t *testing.T) {
	b := guestBackend(t)
	ctx := t.Context()
	qcow2, raw := guestImages(t)

	old, err := b.Create(ctx, "lvg-old", guestLVSize)
	require.NoError(t, err)
	where := segments(t, b, "lvg-old")
	fillDevice(t, old.Path, old.Size, 0xAB)
	require.NoError(t, b.Delete(ctx, "lvg-old"))

	vol := createLV(t, b, "lvg-new", guestLVSize)
	require.Equal(t, where, segments(t, b, "lvg-new"), "the new LV has the old one's extents")
	before := readDevice(t, vol.Path, vol.Size)
	require.Equal(t, bytes.Repeat([]byte{0xAB}, len(before)), before, "a new LV reads as what the old one left")

	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	require.NoError(t, convert.QemuImg{}.Convert(ctx, img, qcow2, vol, nil))
	requireLVHolds(t, vol.Path, raw, vol.Size)
}

// segments is where LV name lies on its PVs (seg_pe_ranges).
func segments(t *testing.T, b *Backend, name string) string {
	t.Helper()
	out, err := b.run(t.Context(), "lvs", "--reportformat", "json", "-o", "seg_pe_ranges", b.VG+"/"+name)
	require.NoError(t, err)
	var rep struct {
		Report []struct {
			LV []struct {
				Ranges string `json:"seg_pe_ranges"`
			} `json:"lv"`
		} `json:"report"`
	}
	require.NoError(t, json.Unmarshal(out, &rep), "%s", out)
	var r []string
	for _, x := range rep.Report {
		for _, lv := range x.LV {
			r = append(r, lv.Ranges)
		}
	}
	require.NotEmpty(t, r)
	return strings.Join(r, ",")
}
