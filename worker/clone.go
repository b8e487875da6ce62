package worker

import (
	"context"
	"errors"
	"fmt"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/imagecache"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// GoldenCache is the part of the image cache that keeps each image's golden
// (imagecache.Cache).
type GoldenCache interface {
	LockGolden(ctx context.Context, key string) (func(), error)
	Golden(ctx context.Context, key string) (volume.Golden, bool, error)
	AttachGolden(ctx context.Context, g volume.Golden) (kvstate.Golden, error)
	VerifyGolden(ctx context.Context, g volume.Golden) error
}

// cloneParts are the backend's clones and the cache's goldens.
type cloneParts struct {
	backend volume.Cloner
	cache   GoldenCache
}

// clones returns the clone parts when the backend can clone here and the
// cache keeps goldens.
func (w *Worker) clones() (cloneParts, bool) {
	cl, ok := w.parts.Backend.(volume.Cloner)
	if !ok {
		return cloneParts{}, false
	}
	if ok, _ := cl.CloneSupport(); !ok {
		return cloneParts{}, false
	}
	gc, ok := w.parts.Cache.(GoldenCache)
	return cloneParts{backend: cl, cache: gc}, ok
}

// reclonable is implemented by Cloners that replace only some existing
// volumes by a fresh clone (the lvm backend: the thin LVs of its pool; a
// thick LV is converted into, as without clones).
type reclonable interface {
	Reclonable(ctx context.Context, vol volume.Volume) (bool, error)
}

// byClone reports whether the job's volume is made by clone: a new one
// always, an existing one unless the backend converts into it.
func (c cloneParts) byClone(ctx context.Context, vol volume.Volume, exists bool) (bool, error) {
	r, ok := c.backend.(reclonable)
	if !exists || !ok {
		return true, nil
	}
	return r.Reclonable(ctx, vol)
}

// populateByClone is the plan's populate stage by cloning: the job's volume
// becomes a clone of the image's golden, made first when there is none
// (the first job of an image converts it once into the golden, every later
// one only clones). An existing volume is replaced whole by a fresh clone;
// a new one is created by the clone.
func (p *imagePlan) populateByClone(ctx context.Context, c cloneParts) error {
	w, rep, m, ji, res := p.w, p.rep, p.job, &p.ji, &p.res
	want := m.VolumeSizeBytes()
	if p.exists {
		want = p.vol.Size
	}
	if err := ji.img.CheckFits(want); err != nil {
		return err
	}
	unlock, err := c.cache.LockGolden(ctx, ji.key)
	if err != nil {
		return err
	}
	defer unlock()
	g, made, err := w.golden(ctx, rep, m, ji, c)
	if err != nil {
		return err
	}
	res.imagePath, res.checksum = ji.path, ji.checksum
	trace.SpanFromContext(ctx).SetAttributes(attribute.Bool("cloned", true), attribute.Bool("golden_made", made))
	rep.progress(stages.Populate, 0, ji.img.VirtualSize)
	var vol volume.Volume
	if p.exists {
		// Reclone renames a whole clone over the volume: the old content
		// stays until then, so a failure leaves it as it was.
		vol, err = c.backend.Reclone(ctx, g, p.vol)
	} else {
		if err := rep.markVolumeCreated(ctx); err != nil {
			return err
		}
		vol, err = c.backend.Clone(ctx, g, m.VolumeName, want)
		res.created = err == nil
	}
	if err != nil {
		return fmt.Errorf("clone volume %q from the image's golden: %w", m.VolumeName, err)
	}
	p.vol = vol
	res.volumePath, res.volumeSize, res.cloned = vol.Path, vol.Size, true
	rep.progress(stages.Populate, ji.img.VirtualSize, ji.img.VirtualSize)
	rep.log.WithField("golden", g.Path).WithField("golden_made", made).Info("volume cloned from the image's golden")
	return nil
}

// golden returns the image's golden, making it when there is none (made).
// A golden found is trusted as sealed (read-only, immutable where possible,
// unchanged since: its inode's ctime) unless the job asks for a full
// verification: then the cached image's digest and the golden's are both
// checked first, and a golden that fails is made again.
func (w *Worker) golden(ctx context.Context, rep *reporter, m messaging.Job, ji *jobImage, c cloneParts) (g volume.Golden, made bool, err error) {
	g, ok, err := c.cache.Golden(ctx, ji.key)
	if err != nil {
		return g, false, err
	}
	if ok && m.Verify == messaging.VerifyFull {
		rep.progress(stages.Verify, 0, 0)
		if err := ji.verify(ctx); err != nil {
			return g, false, fmt.Errorf("verify the cached image: %w", err)
		}
		if err := c.cache.VerifyGolden(ctx, g); errors.Is(err, imagecache.ErrGoldenCorrupt) {
			rep.log.WithError(err).Warn("the image's golden failed its verification; making it again")
			ok = false
		} else if err != nil {
			return g, false, fmt.Errorf("verify the image's golden: %w", err)
		}
	}
	if ok {
		return g, false, nil
	}
	g, err = w.makeGolden(ctx, rep, ji, c)
	return g, err == nil, err
}

// makeGolden converts the image into a new golden (streaming a download
// still arriving: the golden is the job's own), and seals it and records it
// on the cache entry only once the image verified.
func (w *Worker) makeGolden(ctx context.Context, rep *reporter, ji *jobImage, c cloneParts) (g volume.Golden, err error) {
	release, err := w.reserveImage(ctx, rep, ji, "the image's golden", 0)
	if err != nil {
		return g, err
	}
	defer release()
	prep, err := c.backend.PrepareGolden(ctx, ji.key, ji.img.VirtualSize)
	if err != nil {
		return g, fmt.Errorf("make the image's golden: %w", err)
	}
	defer func() {
		if err != nil {
			_ = c.backend.RemoveGolden(context.WithoutCancel(ctx), ji.key)
		}
	}()
	stream := ji.part != nil
	if stream {
		rep.log.Info("converting the image into its golden while it downloads; it is kept only once its digest verified")
	}
	rep.progress(stages.Populate, 0, ji.img.VirtualSize)
	h := w.goldenHasher(c, prep.Size)
	if err := w.populateHashed(ctx, rep, ji, prep, h); err != nil {
		return g, err
	}
	ji.part = nil // committed and verified
	g, err = w.sealGolden(ctx, rep, c, ji.key, prep, h)
	if err != nil {
		return g, fmt.Errorf("seal the image's golden: %w", err)
	}
	if _, err := c.cache.AttachGolden(ctx, g); err != nil {
		return g, err
	}
	rep.log.WithField("golden", g.Path).WithField("immutable", g.Immutable).Info("made the image's golden")
	return g, nil
}

// prewarmGolden is a cache fetch job's last stage where volumes are clones:
// it makes the image's golden too, so the next job of the image only
// clones. An image that has one is verified as any cache fetch's.
func (w *Worker) prewarmGolden(ctx context.Context, rep *reporter, ji *jobImage, c cloneParts) error {
	unlock, err := c.cache.LockGolden(ctx, ji.key)
	if err != nil {
		return err
	}
	defer unlock()
	if _, ok, err := c.cache.Golden(ctx, ji.key); err != nil {
		return err
	} else if ok {
		if err := ji.verify(ctx); err != nil {
			return fmt.Errorf("verify the cached image: %w", err)
		}
		return nil
	}
	_, err = w.makeGolden(ctx, rep, ji, c)
	return err
}
