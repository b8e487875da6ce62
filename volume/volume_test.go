package volume_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

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

func TestRefusalsMatchTheirSentinels(t *testing.T) {
	t.Parallel()
	var err error = &volume.InUseError{Volume: "vm-1", Reason: `volume "vm-1" is attached to running domain "web"`, Action: "overwrite"}
	require.EqualError(t, err, `volume "vm-1" is attached to running domain "web"; refusing to overwrite it`)
	require.ErrorIs(t, err, volume.ErrInUse)
	require.ErrorIs(t, volume.CheckReuse(volume.Volume{Name: "v", Size: 1}, 1<<30), volume.ErrSizeMismatch)
}
