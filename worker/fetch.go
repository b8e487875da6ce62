package worker

import (
	"context"
	"fmt"
	"sync"

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
func (w *Worker) fetchImage(ctx context.Context, rep *reporter, m messaging.Job, ref messaging.ImageRef) (ji jobImage, err error) {
	_, streams := w.parts.Converter.(StreamConverter)
	if !streams || m.Kind == messaging.KindCacheFetch {
		return w.fetchWhole(ctx, rep, m, ref)
	}
	dl := &streamProgress{rep: rep}
	f, err := w.parts.Cache.Acquire(ctx, w.parts.Source, ref, imagecache.AcquireOptions{Progress: dl.progress, Hit: imagecache.CheckLater, Miss: imagecache.StreamDownload})
	if err != nil {
		return ji, fmt.Errorf("fetch image: %w", err)
	}
	ji = jobImage{hit: f.Hit, key: f.Key, dl: dl, verify: f.Verify, release: f.Release}
	if f.Hit {
		ji.path, ji.checksum, ji.key = f.Entry.Path, f.Entry.Checksum, f.Entry.Key
		rep.setCache(true, f.Entry.Path, f.Entry.Checksum)
		return ji, w.inspectCached(ctx, rep, &ji, m.ImageType, skipStructureCheck)
	}
	// A miss; the cached file is recorded once the download commits.
	rep.setCache(false, "", "")
	ji.part = f.Partial
	img, stream, err := image.InspectStream(ctx, f.Partial, m.ImageType)
	if err == nil && stream {
		ji.img = img
		dl.setQuiet(true)
		rep.progress(stages.Inspect, 0, 0)
		return ji, nil
	}
	// Not a qcow2 image, or a bad header: the whole file decides.
	if werr := w.finishDownload(ctx, rep, &ji, skipStructureCheck); werr != nil {
		f.Release()
		return ji, werr
	}
	ji.part = nil // downloaded and verified: converted from the file
	if err != nil {
		return ji, w.refuse(ctx, f.Release, ji.key, err)
	}
	return ji, w.inspectCached(ctx, rep, &ji, m.ImageType, checkStructure)
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
func (w *Worker) inspectCached(ctx context.Context, rep *reporter, ji *jobImage, declaredType string, check structureCheck) error {
	rep.progress(stages.Inspect, 0, 0)
	var err error
	ji.img, err = image.Inspect(ji.path, declaredType)
	if err == nil && check == checkStructure && w.parts.Checker != nil {
		err = w.parts.Checker.Check(ctx, ji.img, ji.path)
	}
	if err != nil {
		return w.refuse(ctx, ji.release, ji.key, err)
	}
	return nil
}

// fetchWhole is fetchImage without streaming: the image is downloaded,
// verified and checked before the job goes on.
func (w *Worker) fetchWhole(ctx context.Context, rep *reporter, m messaging.Job, ref messaging.ImageRef) (ji jobImage, err error) {
	f, err := w.parts.Cache.Acquire(ctx, w.parts.Source, ref, imagecache.AcquireOptions{Progress: rep.progress, Hit: imagecache.CheckLater, Miss: imagecache.WaitForDownload})
	if err != nil {
		return ji, fmt.Errorf("fetch image: %w", err)
	}
	hit, entry := f.Hit, f.Entry
	ji = jobImage{hit: hit, path: entry.Path, checksum: entry.Checksum, key: entry.Key, verify: f.Verify, release: f.Release}
	rep.setCache(hit, entry.Path, entry.Checksum)
	// A cached image was checked when it was downloaded; its digest is
	// verified on every hit.
	check := checkStructure
	if hit {
		check = skipStructureCheck
	}
	return ji, w.inspectCached(ctx, rep, &ji, m.ImageType, check)
}

// refuse removes an unusable image from the cache (after release, as
// Remove refuses an image in use) and says so.
func (w *Worker) refuse(ctx context.Context, release func(), key string, err error) error {
	release()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), kvTimeout)
	defer cancel()
	if rerr := w.parts.Cache.Remove(rctx, key); rerr != nil {
		return fmt.Errorf("image refused: %w (removing it from the cache failed: %v)", err, rerr)
	}
	return fmt.Errorf("image refused, removed from the cache, nothing written: %w", err)
}

// finishDownload waits for ji's download to commit (its digest verified)
// and records the cached file on the job (the miss was counted when it was
// found); with checkStructure, the new image's structure is checked too
// (qemu-img check), and a refused image is removed from the cache.
func (w *Worker) finishDownload(ctx context.Context, rep *reporter, ji *jobImage, check structureCheck) error {
	e, err := ji.part.Wait(ctx)
	if err != nil {
		return fmt.Errorf("fetch image: %w", err)
	}
	ji.path, ji.checksum, ji.key = e.Path, e.Checksum, e.Key
	rep.recordImage(e.Path, e.Checksum)
	if check == checkStructure && w.parts.Checker != nil {
		if err := w.parts.Checker.Check(ctx, ji.img, e.Path); err != nil {
			return w.refuse(ctx, ji.release, e.Key, err)
		}
	}
	return nil
}

// streamProgress passes a download's progress to the job's reporter, except
// while the job goes on with the download still arriving: then the job's own
// stages are reported and the download's bytes are only counted.
type streamProgress struct {
	rep *reporter

	mu    sync.Mutex
	quiet bool
}

func (s *streamProgress) progress(stage string, done, total int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.quiet && stage == stages.Download {
		s.rep.countOnly(stage, done)
		return
	}
	s.rep.progress(stage, done, total)
}

// setQuiet switches between reporting and counting only.
func (s *streamProgress) setQuiet(q bool) {
	s.mu.Lock()
	s.quiet = q
	s.mu.Unlock()
}
