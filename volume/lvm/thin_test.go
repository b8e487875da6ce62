package lvm

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// thinPoolReport is what lvm2 2.03.16 (Debian 12) printed in the guest of
// tests/lvmguest/run.sh for a thin pool, a golden and a snapshot of it,
// with thinFields.
const thinPoolReport = `  {
      "report": [
          {
              "lv": [
                  {"lv_name":".golden-ab12", "vg_name":"vg0", "lv_size":"20971520", "lv_path":"/dev/vg0/.golden-ab12", "lv_attr":"Vri-a-tz--", "lv_device_open":"0", "lv_uuid":"SN6Glc-16U8-537I-5RgL-6iy0-gc5d-pTcKxl", "pool_lv":"pool", "lv_tags":"", "data_percent":"40.00", "metadata_percent":"", "lv_metadata_size":""},
                  {"lv_name":".clone-0a1b", "vg_name":"vg0", "lv_size":"33554432", "lv_path":"/dev/vg0/.clone-0a1b", "lv_attr":"Vwi-a-tz--", "lv_device_open":"0", "lv_uuid":"2ZHTWe-71Wq-HWcZ-D7gA-5RmB-uKr4-wId0Ut", "pool_lv":"pool", "lv_tags":"provisioner.volume=vm-1,other", "data_percent":"25.00", "metadata_percent":"", "lv_metadata_size":""},
                  {"lv_name":"pool", "vg_name":"vg0", "lv_size":"335544320", "lv_path":"", "lv_attr":"twi-aotz--", "lv_device_open":"1", "lv_uuid":"s0aXdU-aF6Z-YeI3-lKe3-1JDs-1WKK-KGPMbv", "pool_lv":"", "lv_tags":"", "data_percent":"90.00", "metadata_percent":"10.84", "lv_metadata_size":"4194304"}
              ]
          }
      ]
  }
`

// fakeLVM is an lvm that prints report whatever it is asked.
func fakeLVM(t *testing.T, report string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "report.json"), []byte(report), 0o600))
	bin := filepath.Join(dir, "lvm")
	require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\ncat "+filepath.Join(dir, "report.json")+"\n"), 0o700))
	return bin
}

func TestParseThinPool(t *testing.T) {
	t.Parallel()
	vg, pool, err := ParseThinPool("vg0/pool")
	require.NoError(t, err)
	require.Equal(t, []string{"vg0", "pool"}, []string{vg, pool})
	for _, bad := range []string{"", "vg0", "vg0/", "/pool", "vg0/a/b", "-vg/pool", "vg0/-pool", "vg 0/pool"} {
		_, _, err := ParseThinPool(bad)
		require.Error(t, err, "%q", bad)
	}
}

func TestThinLVsReport(t *testing.T) {
	t.Parallel()
	b := &Backend{VG: "vg0", LVM: fakeLVM(t, thinPoolReport), Pool: "pool", thinChecked: true}
	lvs, err := b.thinLVs(t.Context(), "")
	require.NoError(t, err)
	require.Len(t, lvs, 3)
	g := lvs[0]
	require.True(t, g.thin())
	require.True(t, g.readOnly())
	require.Equal(t, "pool", g.Pool)
	require.InDelta(t, 0.4, g.DataUsed, 1e-9)
	c := lvs[1]
	require.False(t, c.readOnly())
	v, ok := c.tag(lvVolumeTag)
	require.True(t, ok)
	require.Equal(t, "vm-1", v)
	require.True(t, lvs[2].pool())

	u, err := b.ThinPoolUsage(t.Context())
	require.NoError(t, err)
	require.Equal(t, ThinPoolUsage{Pool: "vg0/pool", DataBytes: 335544320, MetadataBytes: 4194304, DataUsed: 0.9, MetadataUsed: 0.1084}, u)

	keys, err := b.GoldenKeys(t.Context())
	require.NoError(t, err)
	require.Equal(t, []string{"ab12"}, keys, "goldens, not the other LVs")
}

func TestThinPoolRoom(t *testing.T) {
	t.Parallel()
	b := &Backend{VG: "vg0", LVM: fakeLVM(t, thinPoolReport), Pool: "pool", thinChecked: true}
	ctx := t.Context()
	require.NoError(t, b.checkPoolRoom(ctx, 0, "a snapshot"), "90% used, 95% allowed")
	require.NoError(t, b.checkPoolRoom(ctx, 16<<20, "a golden"))
	err := b.checkPoolRoom(ctx, 20<<20, "the image's golden")
	require.ErrorIs(t, err, ErrThinPoolFull)
	require.EqualError(t, err, "the thin pool has no room for this job: thin pool vg0/pool holds 301989888 of its 335544320 bytes of data (90.0%); "+
		"the image's golden needs up to 20971520 more, which would take it past the 95% it may fill (PROVISIONER_LVM_THINPOOL_MAX_USED); "+
		"extend the pool (lvextend -L +<size> vg0/pool) or remove volumes or cached images")
	b.PoolMaxUsed = 0.9
	require.ErrorIs(t, b.checkPoolRoom(ctx, 1<<20, "a golden"), ErrThinPoolFull)
	b.PoolMaxUsed = 0.1
	err = b.checkPoolRoom(ctx, 0, "a snapshot")
	require.ErrorContains(t, err, "thin pool vg0/pool has used 10.8% of its metadata, and may use 10%")

	_, err = b.PrepareGolden(ctx, "ab12", 20<<20)
	require.ErrorIs(t, err, ErrThinPoolFull, "refused before anything is created")
}

func TestThinRefusedWithoutPool(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	b := &Backend{VG: "vg0", LVM: "/nonexistent/lvm"}
	ok, reason := b.CloneSupport()
	require.False(t, ok)
	require.Contains(t, reason, "PROVISIONER_LVM_THINPOOL")
	_, err := b.PrepareGolden(ctx, "ab12", 4<<20)
	require.ErrorIs(t, err, volume.ErrCloneUnsupported)
	_, err = b.Clone(ctx, volume.Golden{Key: "ab12"}, "vm-1", 4<<20)
	require.ErrorIs(t, err, volume.ErrCloneUnsupported)
	require.ErrorIs(t, b.RemoveGolden(ctx, "ab12"), volume.ErrCloneUnsupported)
	reclonable, err := b.Reclonable(ctx, volume.Volume{Name: "vm-1"})
	require.NoError(t, err)
	require.False(t, reclonable)
	b.Pool = "pool"
	ok, _ = b.CloneSupport()
	require.False(t, ok, "not until CheckThinPool found it")
}

func TestThinGoldenUnchangedNeedsItsLV(t *testing.T) {
	t.Parallel()
	b := &Backend{VG: "vg0", LVM: fakeLVM(t, thinPoolReport), Pool: "pool", thinChecked: true}
	rec := kvstate.Golden{Path: "/dev/vg0/.golden-ab12", Size: 20971520, LVUUID: "SN6Glc-16U8-537I-5RgL-6iy0-gc5d-pTcKxl"}
	same, err := b.GoldenUnchanged(t.Context(), rec)
	require.NoError(t, err)
	require.True(t, same)
	for _, changed := range []kvstate.Golden{
		{Path: rec.Path, Size: rec.Size, LVUUID: "another"},
		{Path: rec.Path, Size: rec.Size + 4<<20, LVUUID: rec.LVUUID},
		{Path: "/dev/vg0/.clone-0a1b", Size: 33554432, LVUUID: "2ZHTWe-71Wq-HWcZ-D7gA-5RmB-uKr4-wId0Ut"},
		{Path: "/dev/vg1/.golden-ab12", Size: rec.Size, LVUUID: rec.LVUUID},
	} {
		same, err := b.GoldenUnchanged(t.Context(), changed)
		require.NoError(t, err)
		require.False(t, same, "%+v", changed)
	}
}
