package pipeline

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/imagecache"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// jobImage is the image a job converts: a cached file, or (on a miss with a
// streaming converter) a download still arriving.
type jobImage struct {
	img      image.Image
	hit      bool
	path     string // the cached file; "" while part has not committed
	checksum string
	key      string
	// part is the download a miss streams from; nil once committed.
	part *imagecache.Partial
	// verify checks a hit's digest, concurrently with the conversion.
	verify func(context.Context) error
	// dl quiets the download's progress once the conversion reports its own.
	dl *streamProgress
	// release ends the job's use of the image (idempotent).
	release func()
}

// fetchImage gets the job's image into the cache (or starts downloading it)
// and inspects it. On success ji.release must be called when the job is
// done with the image.
func (p *Plan) fetchImage(ctx context.Context, ref messaging.ImageRef) (ji jobImage, err error) {
	_, streams := p.Parts.Converter.(StreamConverter)
	if !streams || p.Job.Kind == messaging.KindCacheFetch {
		return p.fetchWhole(ctx, ref)
	}
	dl := &streamProgress{rep: p.Report}
	f, err := p.Parts.Cache.Acquire(ctx, p.Parts.Source, ref, imagecache.AcquireOptions{Progress: dl.progress, Hit: imagecache.CheckLater, Miss: imagecache.StreamDownload})
	if err != nil {
		return ji, fmt.Errorf("fetch image: %w", err)
	}
	ji = jobImage{hit: f.Hit, key: f.Key, dl: dl, verify: f.Verify, release: f.Release}
	if f.Hit {
		ji.path, ji.checksum, ji.key = f.Entry.Path, f.Entry.Checksum, f.Entry.Key
		p.Report.SetCache(true, f.Entry.Path, f.Entry.Checksum)
		return ji, p.inspectCached(ctx, &ji, p.Job.ImageType, skipStructureCheck)
	}
	// A miss; the cached file is recorded once the download commits.
	p.Report.SetCache(false, "", "")
	ji.part = f.Partial
	img, stream, err := image.InspectStream(ctx, f.Partial, p.Job.ImageType)
	if err == nil && stream {
		ji.img = img
		dl.setQuiet(true)
		p.Report.Progress(stages.Inspect, 0, 0)
		return ji, nil
	}
	// Not a qcow2 image, or a bad header: the whole file decides.
	if werr := p.finishDownload(ctx, &ji, skipStructureCheck); werr != nil {
		f.Release()
		return ji, werr
	}
	ji.part = nil // downloaded and verified: converted from the file
	if err != nil {
		return ji, p.refuse(ctx, f.Release, ji.key, err)
	}
	return ji, p.inspectCached(ctx, &ji, p.Job.ImageType, checkStructure)
}

// structureCheck is whether a newly cached image's structure is checked
// (qemu-img check) before it is used.
type structureCheck int

const (
	skipStructureCheck structureCheck = iota
	checkStructure
)

// inspectCached inspects ji's cached file and, with checkStructure, checks
// its structure; a refused image is removed from the cache.
func (p *Plan) inspectCached(ctx context.Context, ji *jobImage, declaredType string, check structureCheck) error {
	p.Report.Progress(stages.Inspect, 0, 0)
	var err error
	ji.img, err = image.Inspect(ji.path, declaredType)
	if err == nil && check == checkStructure && p.Parts.Checker != nil {
		err = p.Parts.Checker.Check(ctx, ji.img, ji.path)
	}
	if err != nil {
		return p.refuse(ctx, ji.release, ji.key, err)
	}
	return nil
}

// fetchWhole is fetchImage without streaming: the image is downloaded,
// verified and checked before the job goes on.
func (p *Plan) fetchWhole(ctx context.Context, ref messaging.ImageRef) (ji jobImage, err error) {
	f, err := p.Parts.Cache.Acquire(ctx, p.Parts.Source, ref, imagecache.AcquireOptions{Progress: p.Report.Progress, Hit: imagecache.CheckLater, Miss: imagecache.WaitForDownload})
	if err != nil {
		return ji, fmt.Errorf("fetch image: %w", err)
	}
	hit, entry := f.Hit, f.Entry
	ji = jobImage{hit: hit, path: entry.Path, checksum: entry.Checksum, key: entry.Key, verify: f.Verify, release: f.Release}
	p.Report.SetCache(hit, entry.Path, entry.Checksum)
	// A cached image was checked when it was downloaded; its digest is
	// verified on every hit.
	check := checkStructure
	if hit {
		check = skipStructureCheck
	}
	return ji, p.inspectCached(ctx, &ji, p.Job.ImageType, check)
}

// refuse removes an unusable image from the cache (after release, as
// Remove refuses an image in use) and says so.
func (p *Plan) refuse(ctx context.Context, release func(), key string, err error) error {
	release()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeTimeout)
	defer cancel()
	if rerr := p.Parts.Cache.Remove(rctx, key); rerr != nil {
		return fmt.Errorf("image refused: %w (removing it from the cache failed: %v)", err, rerr)
	}
	return fmt.Errorf("image refused, removed from the cache, nothing written: %w", err)
}

// finishDownload waits for ji's download to commit (its digest verified)
// and records the cached file on the job (the miss was counted when it was
// found); with checkStructure, the new image's structure is checked too
// (qemu-img check), and a refused image is removed from the cache.
func (p *Plan) finishDownload(ctx context.Context, ji *jobImage, check structureCheck) error {
	e, err := ji.part.Wait(ctx)
	if err != nil {
		return fmt.Errorf("fetch image: %w", err)
	}
	ji.path, ji.checksum, ji.key = e.Path, e.Checksum, e.Key
	p.Report.RecordImage(e.Path, e.Checksum)
	if check == checkStructure && p.Parts.Checker != nil {
		if err := p.Parts.Checker.Check(ctx, ji.img, e.Path); err != nil {
			return p.refuse(ctx, ji.release, e.Key, err)
		}
	}
	return nil
}

// streamProgress passes a download's progress to the job's reporter, except
// while the job goes on with the download still arriving: then the job's own
// stages are reported and the download's bytes are only counted.
type streamProgress struct {
	rep Reporter

	mu    sync.Mutex
	quiet bool
}

func (s *streamProgress) progress(stage string, done, total int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.quiet && stage == stages.Download {
		s.rep.CountOnly(stage, done)
		return
	}
	s.rep.Progress(stage, done, total)
}

// setQuiet switches between reporting and counting only.
func (s *streamProgress) setQuiet(q bool) {
	s.mu.Lock()
	s.quiet = q
	s.mu.Unlock()
}

// removeTimeout bounds removing a refused image from the cache, also when
// the job's context has ended.
const removeTimeout = 10 * time.Second
