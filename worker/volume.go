package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// rawWrite is a raw file a job writes into a volume whole: a seed image or
// uploaded content.
type rawWrite struct {
	// volume is the volume's name; want the size of a new one.
	volume string
	want   int64
	// fits checks an existing volume: the ±5% rule when the job named a
	// size, or room for the content when it did not.
	fits func(volume.Volume) error
	// src holds size bytes, already verified.
	src  string
	size int64
	// ours: the record says an earlier attempt of the job created the volume.
	ours bool
	// markCreated records, before the volume exists, that the job creates it.
	markCreated func(context.Context) error
	// stage is the progress stage the write reports under.
	stage string
}

// volumeState is what a job did to one volume, for completion and rollback.
type volumeState struct {
	name    string
	path    string
	size    int64
	created bool
	// writing is set once the volume's content is being replaced.
	writing bool
}

// writeRaw takes the volume's lease and writes rw.src into it: a volume in
// use is refused, an existing one is reused only when rw.fits allows, a new
// one is created, and the volume reads as the file's bytes followed by
// zeros, flushed, when it returns nil. st says what it did.
func (w *Worker) writeRaw(ctx context.Context, rep *reporter, rec kvstate.Job, rw rawWrite, lease *leaseRenewer, st *volumeState) error {
	st.name = rw.volume
	if err := w.volumeAllowed(rw.volume); err != nil {
		return err
	}
	unlock, err := w.lockVolume(ctx, rec, rw.volume, lease)
	defer unlock()
	if err != nil {
		return err
	}
	vol, exists, err := w.parts.Backend.Lookup(ctx, rw.volume)
	if err != nil {
		return err
	}
	switch {
	case exists && rw.ours:
		st.created = true
	case exists:
		if err := rw.fits(vol); err != nil {
			return err
		}
	}
	if exists {
		if uc, ok := w.parts.Backend.(volume.UseChecker); ok {
			if err := uc.CheckNotInUse(ctx, vol); err != nil {
				return err
			}
		}
	} else {
		if err := rw.markCreated(ctx); err != nil {
			return err
		}
		if vol, err = w.parts.Backend.Create(ctx, rw.volume, rw.want); err != nil {
			return fmt.Errorf("create volume %q: %w", rw.volume, err)
		}
		st.created = true
	}
	st.path, st.size = vol.Path, vol.Size
	img := image.Image{Format: messaging.ImageRaw, VirtualSize: rw.size}
	if err := img.CheckFits(vol.Size); err != nil {
		return err
	}
	st.writing = true
	progress := func(_ string, done, total int64) { rep.progress(rw.stage, done, total) }
	if err := w.parts.Converter.Convert(ctx, img, rw.src, vol, progress); err != nil {
		return fmt.Errorf("populate volume %q: %w", rw.volume, err)
	}
	if r, ok := w.parts.Backend.(volume.Refresher); ok {
		if err := r.Refresh(ctx); err != nil {
			return fmt.Errorf("refresh the volume's pool: %w", err)
		}
	}
	return nil
}

// volumeAllowed applies PROVISIONER_VOLUME_ALLOW.
func (w *Worker) volumeAllowed(name string) error {
	if w.cfg.VolumeAllow != nil && !w.cfg.VolumeAllow.MatchString(name) {
		return fmt.Errorf("volume %q is not one this worker may touch (PROVISIONER_VOLUME_ALLOW=%s)", name, w.cfg.VolumeAllow)
	}
	return nil
}

// rollback undoes what a failed or cancelled job did to a volume: a volume
// it created is removed; a reused one that was being written gets its first
// and last MiB zeroed so it never boots half-written. It returns err with
// what went wrong on the way.
func (w *Worker) rollback(ctx context.Context, st volumeState, err error) error {
	if err == nil {
		err = errors.New("the job stopped")
	}
	switch {
	case st.created:
		if derr := w.parts.Backend.Delete(ctx, st.name); derr != nil {
			w.log.WithError(derr).WithField("volume", st.name).Error("rollback: could not remove the volume this job created")
			return fmt.Errorf("%w (and removing the volume %q this job created failed: %v)", err, st.name, derr)
		}
		w.log.WithField("volume", st.name).Info("rollback: removed the volume this job created")
	case st.writing && st.path != "":
		if zerr := convert.ZeroEnds(st.path, st.size); zerr != nil {
			return fmt.Errorf("%w (and zeroing the first and last MiB of volume %q failed: %v)", err, st.name, zerr)
		}
		return fmt.Errorf("%w; the first and last MiB of volume %q were zeroed so the half-written disk does not boot", err, st.name)
	}
	return err
}

// scratchFile creates a file for a job's seed image or downloaded content
// in the cache's own state directory (swept at start, so a crash leaves
// nothing behind).
func (w *Worker) scratchFile(what, jobID string) (string, func(), error) {
	dir := filepath.Join(w.parts.Cache.Dir(), ".provisioner", "partials")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, fmt.Errorf("scratch directory: %w", err)
	}
	path := filepath.Join(dir, what+"-"+jobID)
	_ = os.Remove(path) // an earlier attempt's
	return path, func() { _ = os.Remove(path) }, nil
}
