package worker

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// imagePlan is one image job, its stages as methods in the order they run:
//
//	resolveImage   the image's checksum, the cache, the download, the inspection
//	prepareVolume  the volume's lease, then the volume found, reused or refused
//	populate       the space reserved, the volume created, the image written
//	               (or the volume cloned from the image's golden)
//	finalize       the backend's pool refreshed
//
// A cache_fetch job stops after resolveImage (prewarm); where the backend
// clones, populate is populateByClone (worker/clone.go).
// res is what the job did, for the record and for conclude's rollback.
type imagePlan struct {
	w     *Worker
	rep   *reporter
	rec   kvstate.Job
	job   messaging.Job
	lease *leaseRenewer

	ji     jobImage
	vol    volume.Volume
	exists bool
	res    result
}

// executeImage runs the image job m's plan.
func (w *Worker) executeImage(ctx context.Context, rep *reporter, rec kvstate.Job, m messaging.Job, lease *leaseRenewer) (result, error) {
	p := &imagePlan{w: w, rep: rep, rec: rec, job: m, lease: lease}
	if err := p.resolveImage(ctx); err != nil {
		return p.res, err
	}
	defer p.ji.release() // the image stays cached while the job reads it
	if m.Kind == messaging.KindCacheFetch {
		return p.res, p.prewarm(ctx)
	}
	unlock, err := p.prepareVolume(ctx)
	defer unlock()
	if err != nil {
		return p.res, err
	}
	populate := p.populate
	if c, ok := w.clones(); ok {
		byClone, err := c.byClone(ctx, p.vol, p.exists)
		if err != nil {
			return p.res, err
		}
		if byClone {
			populate = func(ctx context.Context) error { return p.populateByClone(ctx, c) }
		}
	}
	if err := populate(ctx); err != nil {
		return p.res, err
	}
	return p.res, p.finalize(ctx)
}

// resolveImage checks that the worker may read the job's image, then gets
// it into the cache (or starts downloading it) and inspects it.
func (p *imagePlan) resolveImage(ctx context.Context) error {
	w := p.w
	ref, err := messaging.ParseImageURL(p.job.ImageURL)
	if err != nil {
		return err
	}
	if ref.Endpoint != w.parts.Source.Endpoint() {
		return fmt.Errorf("image_url names endpoint %s, but this worker's object store is %s", ref.Endpoint, w.parts.Source.Endpoint())
	}
	if !w.cfg.ImageBuckets.Allows(ref) {
		return fmt.Errorf("image_url names %s, which is not an image source this worker may read (PROVISIONER_IMAGE_BUCKETS=%s); use an image from one of those, or ask the operator to allow it",
			w.cfg.ImageBuckets.Describe(ref), w.cfg.ImageBuckets)
	}
	p.ji, err = w.fetchImage(ctx, p.rep, p.job, ref)
	if err != nil {
		return err
	}
	p.res.cacheHit, p.res.imagePath, p.res.checksum = p.ji.hit, p.ji.path, p.ji.checksum
	return nil
}

// prewarm ends a cache_fetch job: the golden built where the backend
// clones, the cached image verified elsewhere.
func (p *imagePlan) prewarm(ctx context.Context) error {
	if c, ok := p.w.clones(); ok {
		return p.w.prewarmGolden(ctx, p.rep, &p.ji, c)
	}
	if err := p.ji.verify(ctx); err != nil {
		return fmt.Errorf("verify the cached image: %w", err)
	}
	return nil
}

// prepareVolume takes the volume's lease and looks the volume up: an
// existing one is reused only within the reuse rule and when not in use.
// unlock releases the lease; it is never nil.
func (p *imagePlan) prepareVolume(ctx context.Context) (unlock func(), err error) {
	w, m := p.w, p.job
	p.rep.progress(stages.Volume, 0, 0)
	if err := w.volumeAllowed(m.VolumeName); err != nil {
		return func() {}, err
	}
	held, err := w.leases.Acquire(ctx, p.rec.Hypervisor, m.VolumeName, p.rec.JobID, w.cfg.AckWait)
	if err != nil {
		return func() {}, err
	}
	p.lease.add(held)
	unlock = func() {
		p.lease.remove(held)
		// Short: a worker cut off from NATS must not wait here; an
		// unreleased lease expires after the ack wait anyway.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = held.Release(rctx)
	}
	p.vol, p.exists, err = w.parts.Backend.Lookup(ctx, m.VolumeName)
	if err != nil || !p.exists {
		return unlock, err
	}
	if p.rec.VolumeCreated {
		p.res.created = true // an earlier attempt of this job created it
	} else if err := volume.CheckReuse(p.vol, m.VolumeSizeBytes()); err != nil {
		return unlock, err
	}
	if uc, ok := w.parts.Backend.(volume.UseChecker); ok {
		if err := uc.CheckNotInUse(ctx, p.vol); err != nil {
			return unlock, err
		}
	}
	return unlock, nil
}

// populate reserves the space the image needs, creates the volume when
// there is none, and writes the image into it: streamed from a download
// still arriving into a volume this job created, from the verified cached
// file otherwise.
func (p *imagePlan) populate(ctx context.Context) error {
	w, m, img := p.w, p.job, p.ji.img
	var already int64 // a reused volume's space, freed as it is zeroed
	if p.exists {
		already = volume.AllocatedBytes(p.vol.Path)
	}
	release, err := w.reserveImage(ctx, p.rep, &p.ji, fmt.Sprintf("volume %q", m.VolumeName), already)
	if err != nil {
		return err
	}
	defer release()
	if !p.exists {
		want := m.VolumeSizeBytes()
		if err := img.CheckFits(want); err != nil {
			return err
		}
		if err := p.rep.markVolumeCreated(ctx); err != nil {
			return err
		}
		p.vol, err = w.parts.Backend.Create(ctx, m.VolumeName, want)
		if err != nil {
			return fmt.Errorf("create volume %q: %w", m.VolumeName, err)
		}
		p.res.created = true
	}
	p.res.volumePath, p.res.volumeSize = p.vol.Path, p.vol.Size
	if err := img.CheckFits(p.vol.Size); err != nil {
		return err
	}
	// A download still arriving is streamed only into a volume this job
	// created: an existing volume is overwritten only by an image whose
	// digest and structure were checked first.
	stream := p.ji.part != nil && p.res.created
	if p.ji.part != nil && !stream {
		p.ji.dl.setQuiet(false)
		if err := w.finishDownload(ctx, p.rep, &p.ji, checkStructure); err != nil {
			return err
		}
		p.ji.part = nil
	}
	trace.SpanFromContext(ctx).SetAttributes(attribute.Bool("streamed", stream))
	if stream {
		p.rep.log.Info("converting the image while it downloads; its digest is checked when the last byte arrives")
	}
	p.rep.progress(stages.Populate, 0, img.VirtualSize)
	p.res.writing = true
	err = w.populate(ctx, p.rep, &p.ji, p.vol)
	release() // written: the file system's free space counts it now
	p.res.imagePath, p.res.checksum = p.ji.path, p.ji.checksum
	return err
}

// finalize makes the written volume visible to the backend's pool.
func (p *imagePlan) finalize(ctx context.Context) error {
	p.rep.progress(stages.Finalize, 0, 0)
	if r, ok := p.w.parts.Backend.(volume.Refresher); ok {
		if err := r.Refresh(ctx); err != nil {
			return fmt.Errorf("refresh the volume's pool: %w", err)
		}
	}
	return nil
}
