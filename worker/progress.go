package worker

import (
	"context"
	"sync"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"

	"github.com/sirupsen/logrus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/telemetry"
)

// stageEnds are the overall percentages at which each stage ends. A stage
// starts where the job's percentage stands when it begins, so a stage that
// is skipped (a cache hit skips the download) or does no measured work
// (inspecting, creating the volume) moves nothing: the percentage rises only
// with the bytes a sized stage processes, and a record never shows a
// percentage its bytes do not account for.
var provisionStages = map[string]int{
	stages.Checksum:   1,
	stages.CacheCheck: 1,
	stages.Download:   45,
	stages.Verify:     50,
	stages.Inspect:    50,
	stages.Volume:     51,
	stages.Populate:   98,
	stages.Finalize:   99,
	stages.Seed:       99,
}

var fetchStages = map[string]int{
	stages.Checksum:   1,
	stages.CacheCheck: 1,
	stages.Download:   90,
	stages.Verify:     98,
	stages.Inspect:    99,
}

// stagePercent is the overall percentage of a stage that began at base and
// ends at end, done of total bytes into it; an unsized stage stays at base.
func stagePercent(base, end int, done, total int64) int {
	if total <= 0 || end <= base {
		return base
	}
	return base + int(int64(end-base)*min(max(done, 0), total)/total)
}

// reporter turns stage progress into an overall percentage that never goes
// backwards within an attempt (and reaches 100 only on completion), and
// publishes it as an event at most once per interval and on every stage
// change. The record gets the same progress from a writer of its own: the
// job never waits on it, and stages that pass while a write is under way
// are folded into the next write (the record, and so the API's SSE stream,
// shows the latest state; the events show every stage).
type reporter struct {
	w       *Worker
	ctx     context.Context // the job's, parent of the stage spans
	log     *logrus.Entry
	host    string
	jobID   string
	att     *kvstate.Attempt
	number  int // the attempt's number
	stages  map[string]int
	started time.Time
	// unwritten is the change the record has not been given yet; wake
	// tells the writer there is one, and done that it has stopped.
	unwritten *recordChange
	wake      chan struct{}
	done      chan struct{}

	mu  sync.Mutex
	cur kvstate.Progress
	// sized is the last progress with a known total, kept for the final record.
	sized     kvstate.Progress
	lastStage string
	// base is the overall percentage when the current stage began.
	base     int
	lastSent time.Time
	// span is the current stage's span, started at stageStart.
	span       trace.Span
	stageStart time.Time
	// counted is, per stage, the bytes already added to the byte counters.
	counted map[string]int64
}

// recordChange is what the reporter has yet to write to the record.
type recordChange struct {
	progress *kvstate.Progress
	cache    *cacheFields
}

// cacheFields are the record's fields about the cached image.
type cacheFields struct {
	hit            *bool // nil: unchanged
	path, checksum string
}

// newReporter starts the reporter of att's attempt; close stops it.
func newReporter(w *Worker, ctx context.Context, log *logrus.Entry, att *kvstate.Attempt) *reporter {
	rec := att.Record()
	names := provisionStages
	if rec.Kind == messaging.KindCacheFetch {
		names = fetchStages
	}
	r := &reporter{w: w, ctx: ctx, log: log, host: rec.Hypervisor, jobID: rec.JobID, att: att, number: rec.Attempt, stages: names, started: time.Now(),
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	go r.writeRecord()
	return r
}

// writeRecord gives the record each change the reporter queues: changes
// queued while a write is under way go together in the next one. It ends
// with the job's context; what it did not write by then, the job's last
// write takes along (fold).
func (r *reporter) writeRecord() {
	defer close(r.done)
	for {
		select {
		case <-r.wake:
		case <-r.ctx.Done():
			return
		}
		r.mu.Lock()
		c := r.unwritten
		r.unwritten = nil
		r.mu.Unlock()
		if c == nil {
			continue
		}
		r.write(c)
	}
}

// write gives the record change c.
func (r *reporter) write(c *recordChange) {
	// The job's context: a stopped job (fenced, cancelled) does not
	// wait on a record update.
	ctx, cancel := context.WithTimeout(r.ctx, kvTimeout)
	defer cancel()
	_, _ = r.att.Update(ctx, func(j *kvstate.Job) error {
		c.applyTo(j)
		return nil
	})
}

func (c *recordChange) applyTo(j *kvstate.Job) {
	if c.progress != nil {
		j.Progress = c.progress
	}
	if c.cache != nil {
		if c.cache.hit != nil {
			j.CacheHit = c.cache.hit
		}
		j.ImagePath, j.Checksum = c.cache.path, c.cache.checksum
	}
}

// fold applies to j what the record writer has not written; called by the
// attempt's last write, once the writer has stopped (close).
func (r *reporter) fold(j *kvstate.Job) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.unwritten != nil {
		r.unwritten.applyTo(j)
	}
}

// queue adds to the change the record is yet to get. r.mu held.
func (r *reporter) queue(apply func(*recordChange)) {
	if r.unwritten == nil {
		r.unwritten = &recordChange{}
	}
	apply(r.unwritten)
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// close waits for the record writer, which stops with the job's context.
func (r *reporter) close() { <-r.done }

// startStage ends the previous stage's span and starts one for stage.
// Called with r.mu held.
func (r *reporter) startStage(stage string) {
	r.endStageLocked(nil)
	_, r.span = r.w.tracer.Start(r.ctx, "stage "+stage, trace.WithAttributes(
		attribute.String("stage", stage), attribute.String("job_id", r.jobID), attribute.String("host", r.host)))
	r.log.WithFields(telemetry.LogFields(trace.ContextWithSpan(r.ctx, r.span))).WithField("stage", stage).Info("stage started")
}

func (r *reporter) endStageLocked(err error) {
	if r.span == nil {
		return
	}
	r.span.SetAttributes(attribute.Int64("bytes_processed", r.cur.BytesProcessed), attribute.Int64("bytes_total", r.cur.BytesTotal))
	if err != nil {
		r.span.RecordError(err)
		r.span.SetStatus(codes.Error, err.Error())
	}
	r.span.End()
	r.w.metrics.stageDuration.WithLabelValues(r.lastStage).Observe(time.Since(r.stageStart).Seconds())
	r.span = nil
}

// endStage ends the current stage's span, recording err on it.
func (r *reporter) endStage(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.endStageLocked(err)
}

// stage is the current stage.
// written reports whether the job has written all of the volume's data:
// its populate stage reported every byte, or it went on to finalize.
func (r *reporter) written() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur.Stage == stages.Finalize ||
		r.cur.Stage == stages.Populate && r.cur.BytesTotal > 0 && r.cur.BytesProcessed >= r.cur.BytesTotal
}

func (r *reporter) stage() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastStage
}

func (r *reporter) progress(stage string, done, total int64) {
	r.mu.Lock()
	if stage != r.lastStage {
		r.base = r.cur.Percent
	}
	end, ok := r.stages[stage]
	if !ok {
		end = r.base
	}
	pct := max(stagePercent(r.base, end, done, total), r.cur.Percent)
	r.countTo(stage, done)
	r.cur = kvstate.Progress{Stage: stage, Percent: pct, BytesProcessed: done, BytesTotal: total}
	if total > 0 {
		r.sized = r.cur
	}
	if pct >= 2 {
		elapsed := time.Since(r.started)
		eta := int64(elapsed.Seconds() * float64(100-pct) / float64(pct))
		r.cur.ETASec = &eta
	}
	changed := stage != r.lastStage
	due := time.Since(r.lastSent) >= r.w.cfg.ProgressInterval
	if !changed && !due {
		r.mu.Unlock()
		return
	}
	if changed {
		r.startStage(stage)
		r.stageStart = time.Now()
	}
	r.lastStage, r.lastSent = stage, time.Now()
	p := r.cur
	r.queue(func(c *recordChange) { c.progress = &p })
	r.mu.Unlock()
	r.w.publishProgress(r.host, r.jobID, r.number, p)
}

// final is the progress of a completed job.
func (r *reporter) final() *kvstate.Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	return &kvstate.Progress{Stage: stages.Finalize, Percent: 100, BytesProcessed: r.sized.BytesTotal, BytesTotal: r.sized.BytesTotal}
}

// setCache records whether the image came from the cache.
func (r *reporter) setCache(hit bool, path, checksum string) {
	trace.SpanFromContext(r.ctx).SetAttributes(attribute.Bool("cache_hit", hit), attribute.String("image_path", path))
	if hit {
		r.w.metrics.cache.WithLabelValues("hit").Inc()
	} else {
		r.w.metrics.cache.WithLabelValues("miss").Inc()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queue(func(c *recordChange) { c.cache = &cacheFields{hit: &hit, path: path, checksum: checksum} })
}

// recordImage records the cached file a job reads once the download it
// waited for or streamed from has committed (setCache counted the miss).
func (r *reporter) recordImage(path, checksum string) {
	trace.SpanFromContext(r.ctx).SetAttributes(attribute.String("image_path", path))
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queue(func(c *recordChange) {
		hit := (*bool)(nil)
		if c.cache != nil {
			hit = c.cache.hit
		}
		c.cache = &cacheFields{hit: hit, path: path, checksum: checksum}
	})
}

// markVolumeCreated records, before the volume exists, that this job creates
// it, so a later attempt after a crash knows the volume is its own. It
// waits for the write: the volume is created only once it is stored.
func (r *reporter) markVolumeCreated(ctx context.Context) error {
	_, err := r.att.Update(ctx, func(j *kvstate.Job) error {
		j.VolumeCreated = true
		return nil
	})
	return err
}

// markSeedCreated is markVolumeCreated for the job's seed volume.
func (r *reporter) markSeedCreated(ctx context.Context) error {
	_, err := r.att.Update(ctx, func(j *kvstate.Job) error {
		j.SeedCreated = true
		return nil
	})
	return err
}

// countOnly counts a stage's bytes without making it the current stage
// (a download still arriving while the conversion reports).
func (r *reporter) countOnly(stage string, done int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.countTo(stage, done)
}

// countTo brings stage's byte counter to done bytes; a stage reported again
// (or its progress going back) is not counted twice. r.mu must be held.
func (r *reporter) countTo(stage string, done int64) {
	if r.counted == nil {
		r.counted = map[string]int64{}
	}
	n := done - r.counted[stage]
	if n <= 0 {
		return
	}
	r.counted[stage] = done
	switch stage {
	case stages.Download:
		r.w.metrics.downloaded.Add(float64(n))
	case stages.Populate:
		r.w.metrics.populated.Add(float64(n))
	}
}
