package worker

import (
	"context"
	"fmt"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"

	"github.com/libvirt-volume-provisioner/provisioner/cloudinit"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// SeedVolumeBytes is the size of a new seed volume: room for any seed the
// job message's caps allow, a whole number of LVM's default 4 MiB extents.
const SeedVolumeBytes = 4 << 20

// writeSeed builds the job's NoCloud seed image and writes it into the seed
// volume, created or reused (±5% of SeedVolumeBytes) like any volume. A
// reprovision writes a new seed over the old one.
func (w *Worker) writeSeed(ctx context.Context, rep *reporter, rec kvstate.Job, m messaging.Job, lease *leaseRenewer, st *volumeState) error {
	rep.progress(stages.Seed, 0, 0)
	path, remove, err := w.scratchFile("seed", rec.JobID)
	if err != nil {
		return err
	}
	defer remove()
	size, err := cloudinit.WriteSeed(path, m.CloudInit.Documents(rec.JobID))
	if err != nil {
		return fmt.Errorf("build the cloud-init seed: %w", err)
	}
	want := max(int64(SeedVolumeBytes), messaging.ContentVolumeBytes(size))
	rw := rawWrite{volume: m.SeedVolume(), want: want, src: path, size: size, ours: rec.SeedCreated,
		fits: func(v volume.Volume) error {
			if err := volume.CheckReuse(v, want); err != nil {
				return fmt.Errorf("seed volume: %w", err)
			}
			return nil
		},
		markCreated: rep.markSeedCreated, stage: stages.Seed}
	if err := w.writeRaw(ctx, rep, rec, rw, lease, st); err != nil {
		return fmt.Errorf("seed volume %q: %w", rw.volume, err)
	}
	return nil
}
