package worker

import (
	"context"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline"
	"github.com/libvirt-volume-provisioner/provisioner/telemetry"
)

// stageEnds are the overall percentages at which each stage ends. A stage
// starts where the job's percentage stands when it begins, so a stage that
// is skipped (a cache hit skips the download) or does no measured work
// (inspecting, creating the volume) moves nothing: the percentage rises only
// with the bytes a sized stage processes, and a record never shows a
// percentage its bytes do not account for.
var provisionStages = map[string]int{
	pipeline.StageChecksum:   1,
	pipeline.StageCacheCheck: 1,
	pipeline.StageDownload:   45,
	pipeline.StageVerify:     50,
	pipeline.StageInspect:    50,
	pipeline.StageVolume:     51,
	pipeline.StagePopulate:   98,
	pipeline.StageFinalize:   99,
	pipeline.StageSeed:       99,
}

var fetchStages = map[string]int{
	pipeline.StageChecksum:   1,
	pipeline.StageCacheCheck: 1,
	pipeline.StageDownload:   90,
	pipeline.StageVerify:     98,
	pipeline.StageInspect:    99,
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
// writes it to the record and as an event: at most once per interval, and
// on every stage change.
type reporter struct {
	w       *Worker
	ctx     context.Context // the job's, parent of the stage spans
	log     *logrus.Entry
	host    string
	jobID   string
	attempt string // the record's AttemptID
	stages  map[string]int
	started time.Time

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

func newReporter(w *Worker, ctx context.Context, log *logrus.Entry, rec kvstate.Job) *reporter {
	stages := provisionStages
	if rec.Kind == messaging.KindCacheFetch {
		stages = fetchStages
	}
	return &reporter{w: w, ctx: ctx, log: log, host: rec.Hypervisor, jobID: rec.JobID, attempt: rec.AttemptID, stages: stages, started: time.Now()}
}

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
	return r.cur.Stage == pipeline.StageFinalize ||
		r.cur.Stage == pipeline.StagePopulate && r.cur.BytesTotal > 0 && r.cur.BytesProcessed >= r.cur.BytesTotal
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
	r.mu.Unlock()

	// The job's context: a stopped job (fenced, cancelled) does not wait
	// on a record update, and neither does the converter reporting to it.
	ctx, cancel := context.WithTimeout(r.ctx, kvTimeout)
	defer cancel()
	rec, _, err := r.w.jobs.UpdateAttempt(ctx, r.host, r.jobID, r.attempt, func(j *kvstate.Job) error {
		j.Progress = &p
		return nil
	})
	if err == nil {
		r.w.publishEvent(r.host, r.jobID, rec)
	}
}

// final is the progress of a completed job.
func (r *reporter) final() *kvstate.Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	return &kvstate.Progress{Stage: pipeline.StageFinalize, Percent: 100, BytesProcessed: r.sized.BytesTotal, BytesTotal: r.sized.BytesTotal}
}

// setCache records whether the image came from the cache.
func (r *reporter) setCache(ctx context.Context, hit bool, path, checksum string) {
	trace.SpanFromContext(r.ctx).SetAttributes(attribute.Bool("cache_hit", hit), attribute.String("image_path", path))
	if hit {
		r.w.metrics.cache.WithLabelValues("hit").Inc()
	} else {
		r.w.metrics.cache.WithLabelValues("miss").Inc()
	}
	_, _, _ = r.w.jobs.UpdateAttempt(ctx, r.host, r.jobID, r.attempt, func(j *kvstate.Job) error {
		j.CacheHit = &hit
		j.ImagePath = path
		j.Checksum = checksum
		return nil
	})
}

// recordImage records the cached file a job reads once the download it
// waited for or streamed from has committed (setCache counted the miss).
func (r *reporter) recordImage(ctx context.Context, path, checksum string) {
	trace.SpanFromContext(r.ctx).SetAttributes(attribute.String("image_path", path))
	_, _, _ = r.w.jobs.UpdateAttempt(ctx, r.host, r.jobID, r.attempt, func(j *kvstate.Job) error {
		j.ImagePath = path
		j.Checksum = checksum
		return nil
	})
}

// markVolumeCreated records, before the volume exists, that this job creates
// it, so a later attempt after a crash knows the volume is its own.
func (r *reporter) markVolumeCreated(ctx context.Context) error {
	_, _, err := r.w.jobs.UpdateAttempt(ctx, r.host, r.jobID, r.attempt, func(j *kvstate.Job) error {
		j.VolumeCreated = true
		return nil
	})
	return err
}

// markSeedCreated is markVolumeCreated for the job's seed volume.
func (r *reporter) markSeedCreated(ctx context.Context) error {
	_, _, err := r.w.jobs.UpdateAttempt(ctx, r.host, r.jobID, r.attempt, func(j *kvstate.Job) error {
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
	case pipeline.StageDownload:
		r.w.metrics.downloaded.Add(float64(n))
	case pipeline.StagePopulate:
		r.w.metrics.populated.Add(float64(n))
	}
}
