package pipeline

import (
	"context"
	"errors"
	"fmt"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/imagecache"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// cloneParts are the backend's clones and the cache's goldens.
type cloneParts struct {
	backend volume.Cloner
	cache   GoldenCache
}

// clones returns the clone parts when the backend can clone here and the
// cache keeps goldens.
func (p *Plan) clones() (cloneParts, bool) {
	cl, ok := p.Parts.Backend.(volume.Cloner)
	if !ok {
		return cloneParts{}, false
	}
	if ok, _ := cl.CloneSupport(); !ok {
		return cloneParts{}, false
	}
	gc, ok := p.Parts.Cache.(GoldenCache)
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

// PopulateByClone is the plan's populate stage by cloning: the job's volume
// becomes a clone of the image's golden, made first when there is none
// (the first job of an image converts it once into the golden, every later
// one only clones). An existing volume is replaced whole by a fresh clone;
// a new one is created by the clone.
func (p *Plan) PopulateByClone(ctx context.Context) error {
	c, ok := p.clones()
	if !ok {
		return errors.New("the volume cannot be cloned here: the backend cannot clone on this host, or the cache keeps no goldens")
	}
	m, ji, res := p.Job, &p.ji, &p.res
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
	g, made, err := p.golden(ctx, c)
	if err != nil {
		return err
	}
	res.ImagePath, res.Checksum = ji.path, ji.checksum
	trace.SpanFromContext(ctx).SetAttributes(attribute.Bool("cloned", true), attribute.Bool("golden_made", made))
	p.Report.Progress(stages.Populate, 0, ji.img.VirtualSize)
	var vol volume.Volume
	if p.exists {
		// Reclone renames a whole clone over the volume: the old content
		// stays until then, so a failure leaves it as it was.
		vol, err = c.backend.Reclone(ctx, g, p.vol)
	} else {
		if err := p.Report.MarkVolumeCreated(ctx); err != nil {
			return err
		}
		vol, err = c.backend.Clone(ctx, g, m.VolumeName, want)
		res.Created = err == nil
	}
	if err != nil {
		return fmt.Errorf("clone volume %q from the image's golden: %w", m.VolumeName, err)
	}
	p.vol = vol
	res.VolumePath, res.VolumeSize, res.Cloned = vol.Path, vol.Size, true
	p.Report.Progress(stages.Populate, ji.img.VirtualSize, ji.img.VirtualSize)
	p.Report.Log().WithField("golden", g.Path).WithField("golden_made", made).Info("volume cloned from the image's golden")
	return nil
}

// golden returns the image's golden, making it when there is none (made).
// A golden found is trusted as sealed (read-only, immutable where possible,
// unchanged since: its inode's ctime) unless the job asks for a full
// verification: then the cached image's digest and the golden's are both
// checked first, and a golden that fails is made again.
func (p *Plan) golden(ctx context.Context, c cloneParts) (g volume.Golden, made bool, err error) {
	ji := &p.ji
	g, ok, err := c.cache.Golden(ctx, ji.key)
	if err != nil {
		return g, false, err
	}
	if ok && p.Job.Verify == messaging.VerifyFull {
		p.Report.Progress(stages.Verify, 0, 0)
		if err := ji.verify(ctx); err != nil {
			return g, false, fmt.Errorf("verify the cached image: %w", err)
		}
		if err := c.cache.VerifyGolden(ctx, g); errors.Is(err, imagecache.ErrGoldenCorrupt) {
			p.Report.Log().WithError(err).Warn("the image's golden failed its verification; making it again")
			ok = false
		} else if err != nil {
			return g, false, fmt.Errorf("verify the image's golden: %w", err)
		}
	}
	if ok {
		return g, false, nil
	}
	g, err = p.makeGolden(ctx, c)
	return g, err == nil, err
}

// makeGolden converts the image into a new golden (streaming a download
// still arriving: the golden is the job's own), and seals it and records it
// on the cache entry only once the image verified.
func (p *Plan) makeGolden(ctx context.Context, c cloneParts) (g volume.Golden, err error) {
	ji := &p.ji
	release, err := p.reserveImage(ctx, "the image's golden", 0)
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
		p.Report.Log().Info("converting the image into its golden while it downloads; it is kept only once its digest verified")
	}
	p.Report.Progress(stages.Populate, 0, ji.img.VirtualSize)
	h := p.goldenHasher(c, prep.Size)
	if err := p.write(ctx, prep, h); err != nil {
		return g, err
	}
	ji.part = nil // committed and verified
	g, err = p.sealGolden(ctx, c, ji.key, prep, h)
	if err != nil {
		return g, fmt.Errorf("seal the image's golden: %w", err)
	}
	if _, err := c.cache.AttachGolden(ctx, g); err != nil {
		return g, err
	}
	p.Report.Log().WithField("golden", g.Path).WithField("immutable", g.Immutable).Info("made the image's golden")
	return g, nil
}

// prewarmGolden is a cache fetch job's last stage where volumes are clones:
// it makes the image's golden too, so the next job of the image only
// clones. An image that has one is verified as any cache fetch's.
func (p *Plan) prewarmGolden(ctx context.Context, c cloneParts) error {
	ji := &p.ji
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
	_, err = p.makeGolden(ctx, c)
	return err
}

// goldenHasher returns a hasher for a golden of size bytes when the
// converter can hash what it writes (convert.DigestConverter) and the
// backend can seal with that digest (volume.DigestSealer); nil otherwise,
// and the golden is read back when sealed.
func (p *Plan) goldenHasher(c cloneParts, size int64) *volume.GoldenHasher {
	if _, ok := p.Parts.Converter.(convert.DigestConverter); !ok {
		return nil
	}
	if _, ok := c.backend.(volume.DigestSealer); !ok {
		return nil
	}
	return volume.NewGoldenHasher(size)
}

// sealGolden seals the prepared golden of key with the digest h computed
// while it was written, or, without one, has the backend read it back.
func (p *Plan) sealGolden(ctx context.Context, c cloneParts, key string, prep volume.Volume, h *volume.GoldenHasher) (volume.Golden, error) {
	ds, ok := c.backend.(volume.DigestSealer)
	if h == nil || !ok {
		return c.backend.SealGolden(ctx, key, prep)
	}
	digest, err := h.Sum()
	if err != nil {
		p.Report.Log().WithError(err).Warn("the golden was not hashed while it was written; reading it back to hash it")
		return c.backend.SealGolden(ctx, key, prep)
	}
	return ds.SealGoldenDigest(ctx, key, prep, digest)
}
