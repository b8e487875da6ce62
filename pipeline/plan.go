package pipeline

import (
	"context"
	"errors"
	"fmt"

	"github.com/sirupsen/logrus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// Plan is one image job (provision or cache_fetch), its stages as methods
// in the order Run calls them:
//
//	ResolveImage   the image's checksum, the cache, the download, the inspection
//	PrepareVolume  the volume's lock, then the volume found, reused or refused
//	Populate       the space reserved, the volume created, the image written
//	               (or, where the backend clones, PopulateByClone: the volume
//	               cloned from the image's golden)
//	Finalize       the backend's pool refreshed
//
// A cache_fetch job stops after ResolveImage (Prewarm). The broker is not
// the plan's: the worker gives it the job, a Reporter for its record and a
// Lock for its volume lease, and settles what Run returns.
type Plan struct {
	Parts Parts
	// Space is the space the host's running plans hold; one per worker
	// (nil: the plan counts only its own).
	Space *Space
	// Report is where the plan reports; Lock takes the volume's lease,
	// so that no other job writes the volume until unlock (both required).
	Report Reporter
	Lock   func(ctx context.Context, volume string) (unlock func(), err error)
	// Job is the job's message; VolumeCreated says the job's record shows
	// an earlier attempt created the volume (it is the job's own).
	Job           messaging.Job
	VolumeCreated bool
	// ImageBuckets, when not empty, are the only image sources the plan
	// reads; VolumeAllowed, when set, refuses a volume name.
	ImageBuckets  messaging.ImageSources
	VolumeAllowed func(name string) error

	ji     jobImage
	vol    volume.Volume
	exists bool
	res    Result
}

// Result is what a plan did: for the job's record, and for the rollback of
// a plan that failed.
type Result struct {
	CacheHit   bool
	ImagePath  string
	Checksum   string
	VolumePath string
	VolumeSize int64
	// Created: the volume is the job's (made by this attempt or an earlier
	// one); a failed job removes it.
	Created bool
	// Cloned: the volume is a clone of the image's golden.
	Cloned bool
	// Writing is set once the volume's content is being replaced; a
	// failed job zeroes the ends of a reused volume it was writing.
	Writing bool
}

// Reporter is where a plan reports: the job's record, progress events,
// counters and log (the worker's reporter).
type Reporter interface {
	// Progress makes stage the current one, done of total bytes.
	Progress(stage string, done, total int64)
	// CountOnly counts a stage's bytes without making it current (a
	// download still arriving while the conversion reports).
	CountOnly(stage string, done int64)
	// SetCache records whether the image came from the cache.
	SetCache(hit bool, path, checksum string)
	// RecordImage records the cached file once a download has committed.
	RecordImage(path, checksum string)
	// MarkVolumeCreated records, before the volume exists, that the job
	// creates it; the volume is created only once that is stored.
	MarkVolumeCreated(ctx context.Context) error
	Log() *logrus.Entry
}

// Run runs the plan's stages in order. What it returns says what the plan
// did, also when it fails.
func (p *Plan) Run(ctx context.Context) (Result, error) {
	if p.Report == nil || p.Lock == nil {
		return p.res, errors.New("a plan needs a Reporter and a volume Lock")
	}
	if p.Space == nil {
		p.Space = &Space{}
	}
	if err := p.ResolveImage(ctx); err != nil {
		return p.res, err
	}
	defer p.ji.release() // the image stays cached while the job reads it
	if p.Job.Kind == messaging.KindCacheFetch {
		return p.res, p.Prewarm(ctx)
	}
	unlock, err := p.PrepareVolume(ctx)
	defer unlock()
	if err != nil {
		return p.res, err
	}
	populate := p.Populate
	if c, ok := p.clones(); ok {
		byClone, err := c.byClone(ctx, p.vol, p.exists)
		if err != nil {
			return p.res, err
		}
		if byClone {
			populate = p.PopulateByClone
		}
	}
	if err := populate(ctx); err != nil {
		return p.res, err
	}
	return p.res, p.Finalize(ctx)
}

// ResolveImage checks that the plan may read the job's image, then gets it
// into the cache (or starts downloading it) and inspects it.
func (p *Plan) ResolveImage(ctx context.Context) error {
	ref, err := messaging.ParseImageURL(p.Job.ImageURL)
	if err != nil {
		return err
	}
	if ref.Endpoint != p.Parts.Source.Endpoint() {
		return fmt.Errorf("image_url names endpoint %s, but this worker's object store is %s", ref.Endpoint, p.Parts.Source.Endpoint())
	}
	if !p.ImageBuckets.Allows(ref) {
		return fmt.Errorf("image_url names %s, which is not an image source this worker may read (PROVISIONER_IMAGE_BUCKETS=%s); use an image from one of those, or ask the operator to allow it",
			p.ImageBuckets.Describe(ref), p.ImageBuckets)
	}
	p.ji, err = p.fetchImage(ctx, ref)
	if err != nil {
		return err
	}
	p.res.CacheHit, p.res.ImagePath, p.res.Checksum = p.ji.hit, p.ji.path, p.ji.checksum
	return nil
}

// Prewarm ends a cache_fetch job: the golden built where the backend
// clones, the cached image verified elsewhere.
func (p *Plan) Prewarm(ctx context.Context) error {
	if c, ok := p.clones(); ok {
		return p.prewarmGolden(ctx, c)
	}
	if err := p.ji.verify(ctx); err != nil {
		return fmt.Errorf("verify the cached image: %w", err)
	}
	return nil
}

// PrepareVolume takes the volume's lock and looks the volume up: an
// existing one is reused only within the reuse rule and when not in use.
// unlock releases the lock; it is never nil.
func (p *Plan) PrepareVolume(ctx context.Context) (unlock func(), err error) {
	m := p.Job
	p.Report.Progress(stages.Volume, 0, 0)
	if p.VolumeAllowed != nil {
		if err := p.VolumeAllowed(m.VolumeName); err != nil {
			return func() {}, err
		}
	}
	unlock, err = p.Lock(ctx, m.VolumeName)
	if err != nil {
		return func() {}, err
	}
	p.vol, p.exists, err = p.Parts.Backend.Lookup(ctx, m.VolumeName)
	if err != nil || !p.exists {
		return unlock, err
	}
	if p.VolumeCreated {
		p.res.Created = true // an earlier attempt of this job created it
	} else if err := volume.CheckReuse(p.vol, m.VolumeSizeBytes()); err != nil {
		return unlock, err
	}
	if uc, ok := p.Parts.Backend.(volume.UseChecker); ok {
		if err := uc.CheckNotInUse(ctx, p.vol); err != nil {
			return unlock, err
		}
	}
	return unlock, nil
}

// Populate reserves the space the image needs, creates the volume when
// there is none, and writes the image into it: streamed from a download
// still arriving into a volume this job created, from the verified cached
// file otherwise.
func (p *Plan) Populate(ctx context.Context) error {
	m, img := p.Job, p.ji.img
	var already int64 // a reused volume's space, freed as it is zeroed
	if p.exists {
		already = volume.AllocatedBytes(p.vol.Path)
	}
	release, err := p.reserveImage(ctx, fmt.Sprintf("volume %q", m.VolumeName), already)
	if err != nil {
		return err
	}
	defer release()
	if !p.exists {
		want := m.VolumeSizeBytes()
		if err := img.CheckFits(want); err != nil {
			return err
		}
		if err := p.Report.MarkVolumeCreated(ctx); err != nil {
			return err
		}
		p.vol, err = p.Parts.Backend.Create(ctx, m.VolumeName, want)
		if err != nil {
			return fmt.Errorf("create volume %q: %w", m.VolumeName, err)
		}
		p.res.Created = true
	}
	p.res.VolumePath, p.res.VolumeSize = p.vol.Path, p.vol.Size
	if err := img.CheckFits(p.vol.Size); err != nil {
		return err
	}
	// A download still arriving is streamed only into a volume this job
	// created: an existing volume is overwritten only by an image whose
	// digest and structure were checked first.
	stream := p.ji.part != nil && p.res.Created
	if p.ji.part != nil && !stream {
		p.ji.dl.setQuiet(false)
		if err := p.finishDownload(ctx, &p.ji, checkStructure); err != nil {
			return err
		}
		p.ji.part = nil
	}
	trace.SpanFromContext(ctx).SetAttributes(attribute.Bool("streamed", stream))
	if stream {
		p.Report.Log().Info("converting the image while it downloads; its digest is checked when the last byte arrives")
	}
	p.Report.Progress(stages.Populate, 0, img.VirtualSize)
	p.res.Writing = true
	err = p.write(ctx, p.vol, nil)
	release() // written: the file system's free space counts it now
	p.res.ImagePath, p.res.Checksum = p.ji.path, p.ji.checksum
	return err
}

// Finalize makes the written volume visible to the backend's pool.
func (p *Plan) Finalize(ctx context.Context) error {
	p.Report.Progress(stages.Finalize, 0, 0)
	if r, ok := p.Parts.Backend.(volume.Refresher); ok {
		if err := r.Refresh(ctx); err != nil {
			return fmt.Errorf("refresh the volume's pool: %w", err)
		}
	}
	return nil
}
