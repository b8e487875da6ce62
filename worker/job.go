package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/imagecache"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/telemetry"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// Causes that stop a running job.
var (
	errCancelled = errors.New("job cancelled")
	errFenced    = errors.New("lost contact with NATS: in-progress acks failed for too long, so the job may be redelivered elsewhere; stopped writing")
	errShutdown  = errors.New("worker shutting down; the job will be redelivered")
	errRunTime   = errors.New("ran longer than the maximum run time")
)

// nakDelay is how long a job stopped by shutdown waits before redelivery.
const nakDelay = 2 * time.Second

// kvTimeout bounds one KV operation of the worker.
const kvTimeout = 10 * time.Second

// handle runs one delivered job message to its end.
func (w *Worker) handle(ctx context.Context, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		w.log.WithError(err).Error("message without metadata; terminating it")
		_ = msg.Term()
		return
	}
	host, jobID, err := w.subjects.ParseJob(msg.Subject())
	if err != nil || host != w.cfg.Host {
		w.log.WithField("subject", msg.Subject()).Error("message on a subject this worker does not serve; terminating it")
		_ = msg.TermWithReason("bad subject")
		return
	}
	w.waiting.Store(int64(meta.NumPending))
	log := w.log.WithFields(logrus.Fields{"job_id": jobID, "host": host, "delivery": meta.NumDelivered})
	kctx, cancel := context.WithTimeout(ctx, kvTimeout)
	defer cancel()

	rec, m, verr := kvstate.FromMessage(msg.Data(), host, jobID, meta.Timestamp)
	cur, rev, err := w.jobRecord(kctx, rec)
	if err != nil {
		if verr != nil {
			log.WithError(verr).Error("malformed job message whose record cannot be written; terminating it")
			_ = msg.TermWithReason("malformed")
			return
		}
		log.WithError(err).Warn("cannot read or write job record; will retry")
		_ = msg.NakWithDelay(nakDelay)
		return
	}
	if cur.Status.Terminal() {
		log.WithField("status", cur.Status).Info("job already ended; acknowledging without running")
		if cur.Status == kvstate.StatusFailed && verr != nil {
			w.metrics.jobs.WithLabelValues(string(kvstate.StatusFailed)).Inc()
		}
		_ = msg.Term()
		w.settle(host, jobID)
		return
	}
	// Delivery counts start again when a consumer is created again (its
	// node died); the record counts the attempts that started.
	attempt := max(int(meta.NumDelivered), cur.Attempt+1)
	if w.deferToRunningAttempt(log, msg, cur) {
		return
	}
	if !w.claimLocal(jobID, attempt) {
		log.Info("another delivery of this job is being handled here; leaving the job to it")
		return
	}
	defer w.releaseLocal(jobID, attempt)
	if verr != nil {
		w.fail(kctx, log, host, jobID, "invalid job message: "+verr.Error())
		_ = msg.TermWithReason("malformed")
		w.settle(host, jobID)
		return
	}
	if age := time.Since(cur.CreatedAt); w.cfg.MaxPendingAge > 0 && cur.Status == kvstate.StatusPending && age > w.cfg.MaxPendingAge {
		w.fail(kctx, log, host, jobID, fmt.Sprintf("the job waited %s for a worker, longer than the maximum pending age of %s (PROVISIONER_MAX_PENDING_AGE); submit it again",
			age.Round(time.Second), w.cfg.MaxPendingAge))
		_ = msg.TermWithReason("pending too long")
		w.settle(host, jobID)
		return
	}
	if attempt >= w.cfg.MaxDeliver {
		w.fail(kctx, log, host, jobID, fmt.Sprintf("gave up after %d deliveries: the job never finished (its worker stopped or lost contact while running it)", attempt))
		_ = msg.TermWithReason("max deliveries")
		w.settle(host, jobID)
		return
	}
	// The job's span continues the trace of the request that queued it.
	pctx := telemetry.Propagator.Extract(ctx, messaging.HeaderCarrier(msg.Headers()))
	sctx, span := w.tracer.Start(pctx, "job "+m.Kind, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("job_id", jobID), attribute.String("host", host), attribute.String("volume", m.VolumeName),
			attribute.String("image_url", m.ImageURL), attribute.Int("attempt", attempt)))
	defer span.End()
	log = log.WithFields(telemetry.LogFields(sctx))
	traceID, _, _ := telemetry.IDs(sctx)
	now := time.Now().UTC()
	attemptID := uuid.NewString()
	rec, rev, err = w.jobs.UpdateFrom(kctx, cur, rev, func(j *kvstate.Job) error {
		if j.AttemptAlive(time.Now().UTC(), w.attemptAliveWithin()) {
			return errAttemptAlive
		}
		j.Status = kvstate.StatusRunning
		j.Attempt = attempt
		j.AttemptID = attemptID
		j.StartedAt = &now
		j.HeartbeatAt = &now
		j.Error = ""
		j.Progress = &kvstate.Progress{Stage: stages.Checksum}
		if j.TraceID == "" {
			j.TraceID = traceID
		}
		return nil
	})
	var te *kvstate.TransitionError
	if errors.As(err, &te) {
		log.WithField("status", te.From).Info("job ended before it started; acknowledging without running")
		_ = msg.Term()
		w.settle(host, jobID)
		return
	}
	if errors.Is(err, errAttemptAlive) {
		log.Info("an earlier attempt of this job started meanwhile; leaving the job to it")
		_ = msg.NakWithDelay(w.attemptAliveWithin())
		return
	}
	if err != nil {
		log.WithError(err).Warn("cannot mark job running; will retry")
		_ = msg.NakWithDelay(nakDelay)
		return
	}
	cancel()
	outcome := w.run(sctx, log, msg, w.jobs.Attempt(rec, rev), m)
	span.SetAttributes(attribute.String("outcome", outcome))
	if outcome == string(kvstate.StatusFailed) {
		span.SetStatus(codes.Error, "job failed")
	}
}

// jobRecord is the job's record and its revision: the stored one (the API
// wrote it for a REST submission), or rec stored now (a job published
// straight to NATS).
func (w *Worker) jobRecord(ctx context.Context, rec kvstate.Job) (kvstate.Job, uint64, error) {
	cur, rev, err := w.jobs.Get(ctx, rec.Hypervisor, rec.JobID)
	if !errors.Is(err, kvstate.ErrNotFound) {
		return cur, rev, err
	}
	rev, err = w.jobs.Create(ctx, rec)
	if errors.Is(err, kvstate.ErrExists) {
		return w.jobs.Get(ctx, rec.Hypervisor, rec.JobID)
	}
	return rec, rev, err
}

// errAttemptAlive: the record is running under another attempt whose
// heartbeat is fresh.
var errAttemptAlive = errors.New("another attempt of the job is running")

// attemptAliveWithin is how long a running attempt's heartbeat counts as
// alive. A running attempt heartbeats every sixth of the ack wait and stops
// writing when nothing was confirmed for half of it (keepAlive), so it is
// stopped by two thirds of the ack wait after its last heartbeat; a
// redelivery comes a whole ack wait after it.
func (w *Worker) attemptAliveWithin() time.Duration { return w.cfg.AckWait * 3 / 4 }

// deferToRunningAttempt reports whether this delivery must not start
// because an earlier attempt of the job is still running: in this process
// (the delivery is dropped without an ack; the running attempt's
// in-progress acks keep the message pending, and its ack or term settles
// it) or elsewhere with a fresh heartbeat (the delivery is nak'ed until the
// heartbeat would expire). A delivery of a job whose attempt is running is
// never started, so its effect cannot happen twice at once.
func (w *Worker) deferToRunningAttempt(log *logrus.Entry, msg jetstream.Msg, cur kvstate.Job) bool {
	if cur.Status != kvstate.StatusRunning {
		return false
	}
	log = log.WithField("running_attempt", cur.Attempt)
	if w.runningLocal(cur.JobID) {
		log.Info("delivery of a job whose earlier attempt is running here; leaving the job to that attempt")
		return true
	}
	within := w.attemptAliveWithin()
	if !cur.AttemptAlive(time.Now().UTC(), within) {
		return false
	}
	wait := within - time.Since(*cur.HeartbeatAt)
	log.WithField("retry_in", wait.Round(time.Millisecond).String()).Info("delivery of a job whose earlier attempt is alive elsewhere (fresh heartbeat); retrying when it would have expired")
	_ = msg.NakWithDelay(max(wait, nakDelay))
	return true
}

// claimLocal records that this process runs attempt of jobID; false if it
// already runs another attempt of it.
func (w *Worker) claimLocal(jobID string, attempt int) bool {
	w.runMu.Lock()
	defer w.runMu.Unlock()
	if w.running == nil {
		w.running = map[string]int{}
	}
	if _, ok := w.running[jobID]; ok {
		return false
	}
	w.running[jobID] = attempt
	return true
}

func (w *Worker) releaseLocal(jobID string, attempt int) {
	w.runMu.Lock()
	defer w.runMu.Unlock()
	if w.running[jobID] == attempt {
		delete(w.running, jobID)
	}
}

func (w *Worker) runningLocal(jobID string) bool {
	w.runMu.Lock()
	defer w.runMu.Unlock()
	_, ok := w.running[jobID]
	return ok
}

// fail writes a failed record before the job runs (unless it already
// ended).
func (w *Worker) fail(ctx context.Context, log *logrus.Entry, host, jobID, reason string) {
	w.recordFailure(ctx, log, host, jobID, reason, w.jobs.Update)
}

// failAttempt writes a failed record for the running attempt, unless the
// job ended or another attempt owns the record.
func (w *Worker) failAttempt(ctx context.Context, log *logrus.Entry, att *kvstate.Attempt, rep *reporter, reason string) {
	rec := att.Record()
	w.recordFailure(ctx, log, rec.Hypervisor, rec.JobID, reason, func(ctx context.Context, _, _ string, fn func(*kvstate.Job) error) (kvstate.Job, uint64, error) {
		j, err := att.Update(ctx, func(j *kvstate.Job) error {
			rep.fold(j)
			return fn(j)
		})
		return j, 0, err
	})
}

type updateFunc func(ctx context.Context, host, jobID string, fn func(*kvstate.Job) error) (kvstate.Job, uint64, error)

func (w *Worker) recordFailure(ctx context.Context, log *logrus.Entry, host, jobID, reason string, update updateFunc) {
	rec, _, err := update(ctx, host, jobID, func(j *kvstate.Job) error {
		now := time.Now().UTC()
		j.Status = kvstate.StatusFailed
		j.Error = reason
		j.FinishedAt = &now
		return nil
	})
	if err != nil {
		log.WithError(err).Warn("could not record failure")
		return
	}
	w.metrics.jobs.WithLabelValues(string(kvstate.StatusFailed)).Inc()
	log.WithField("error", reason).Error("job failed")
	w.publishEvent(host, jobID, rec)
}

// run executes a running job with its keep-alive and cancel watcher.
func (w *Worker) run(ctx context.Context, log *logrus.Entry, msg jetstream.Msg, att *kvstate.Attempt, m messaging.Job) string {
	rec := att.Record()
	w.active.Add(1)
	w.metrics.active.Inc()
	defer func() {
		w.active.Add(-1)
		w.metrics.active.Dec()
	}()
	started := time.Now()
	host, jobID := rec.Hypervisor, rec.JobID
	// The job outlives ctx (shutdown) only until it is stopped cleanly below.
	jobCtx, stop := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stop(nil)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		select {
		case <-ctx.Done():
			stop(errShutdown)
		case <-jobCtx.Done():
		}
	})
	if w.cfg.MaxRunTime > 0 {
		t := time.AfterFunc(w.cfg.MaxRunTime, func() { stop(errRunTime) })
		defer t.Stop()
	}
	log = log.WithFields(logrus.Fields{"attempt": rec.Attempt, "caller": rec.Caller})
	rep := newReporter(w, jobCtx, log, att)
	var lease leaseRenewer
	wg.Go(func() { w.keepAlive(jobCtx, stop, msg, att, &lease, rep.written) })
	wg.Go(func() { w.watchCancel(jobCtx, stop, host, jobID) })
	log.WithFields(logrus.Fields{"kind": m.Kind, "volume": m.VolumeName, "image_url": m.ImageURL}).Info("job started")

	res, err := w.execute(jobCtx, rep, rec, m, &lease)
	err = filledUp(err)
	cause := context.Cause(jobCtx)
	stop(nil)
	rep.endStage(err)
	rep.close()

	bg, cancel := context.WithTimeout(context.Background(), kvTimeout)
	defer cancel()
	if cause == nil && errors.Is(err, kvstate.ErrSuperseded) {
		cause = w.whySuperseded(bg, host, jobID)
	}
	if errors.Is(cause, errFenced) {
		log.WithError(cause).Error("job stopped")
		return "fenced"
	}
	if errors.Is(cause, errShutdown) {
		// Stopped cleanly: the next delivery need not wait for this
		// attempt's heartbeat to expire.
		_, _ = att.Update(bg, func(j *kvstate.Job) error {
			rep.fold(j)
			j.HeartbeatAt = nil
			return nil
		})
		log.Info("job interrupted by shutdown; it will be redelivered")
		_ = msg.NakWithDelay(nakDelay)
		return "interrupted"
	}
	if err == nil && cause == nil {
		final, uerr := w.recordCompletion(log, att, func(j *kvstate.Job) {
			now := time.Now().UTC()
			j.Status = kvstate.StatusCompleted
			j.FinishedAt = &now
			j.Progress = rep.final()
			j.CacheHit = &res.cacheHit
			j.ImagePath = res.imagePath
			j.VolumePath = res.volumePath
			j.Checksum = res.checksum
			j.Cloned = res.cloned
			j.SeedVolumePath = res.seed.path
		})
		var te *kvstate.TransitionError
		if errors.Is(uerr, kvstate.ErrSuperseded) {
			// Another attempt owns the record (the volume is its now): no
			// ack, no rollback.
			log.WithError(uerr).Error("job stopped: another attempt took the job over")
			return "fenced"
		} else if errors.As(uerr, &te) {
			cause = errCancelled // cancelled at the last moment: undo below
		}
		if cause == nil && uerr != nil {
			log.WithError(uerr).Warn("could not record completion; the job will be redelivered")
			_ = msg.NakWithDelay(nakDelay)
			return "interrupted"
		} else if cause == nil {
			_ = msg.DoubleAck(bg)
			w.settle(host, jobID)
			w.metrics.jobs.WithLabelValues(string(kvstate.StatusCompleted)).Inc()
			w.metrics.duration.WithLabelValues("completed").Observe(time.Since(started).Seconds())
			w.publishEvent(host, jobID, final)
			log.WithFields(logrus.Fields{"cache_hit": res.cacheHit, "volume_path": res.volumePath, "seconds": time.Since(started).Seconds(), "stage": stages.Finalize}).Info("job completed")
			return string(kvstate.StatusCompleted)
		}
	}
	if errors.Is(cause, errRunTime) {
		err = fmt.Errorf("the job %w of %s (PROVISIONER_MAX_RUN_TIME) in stage %s", errRunTime, w.cfg.MaxRunTime, rep.stage())
	}
	if !res.created && res.writing && res.volumePath != "" {
		// A reused volume failed mid-write: make sure it never boots as if
		// it were whole.
		if zerr := convert.ZeroEnds(res.volumePath, res.volumeSize); zerr != nil {
			err = fmt.Errorf("%w (and zeroing the volume's first and last MiB failed: %v)", err, zerr)
		} else if err != nil {
			err = fmt.Errorf("%w; the volume's first and last MiB were zeroed so the half-written disk does not boot", err)
		}
	}
	if res.created {
		if derr := w.parts.Backend.Delete(bg, m.VolumeName); derr != nil {
			log.WithError(derr).Error("rollback: could not remove the volume this job created")
			if err != nil {
				err = fmt.Errorf("%w (and removing the volume this job created failed: %v)", err, derr)
			}
		} else {
			log.WithField("volume", m.VolumeName).Info("rollback: removed the volume this job created")
		}
	}
	if res.seed.created || res.seed.writing {
		err = w.rollback(bg, res.seed, err)
	}
	if errors.Is(cause, errCancelled) {
		_ = msg.Term()
		w.settle(host, jobID)
		w.metrics.jobs.WithLabelValues(string(kvstate.StatusCancelled)).Inc()
		w.metrics.duration.WithLabelValues("cancelled").Observe(time.Since(started).Seconds())
		if cur, _, err := w.jobs.Get(bg, host, jobID); err == nil {
			w.publishEvent(host, jobID, cur)
		}
		log.Info("job cancelled")
		return string(kvstate.StatusCancelled)
	}
	w.metrics.duration.WithLabelValues("failed").Observe(time.Since(started).Seconds())
	w.failAttempt(bg, log.WithField("stage", rep.stage()), att, rep, err.Error())
	_ = msg.TermWithReason("failed")
	w.settle(host, jobID)
	return string(kvstate.StatusFailed)
}

// completionPersist is how long a worker keeps trying to record that a job
// completed while NATS does not answer. The volume is written: giving up
// would have the job run again. Meanwhile a redelivery to this worker is
// left to this attempt (runningLocal).
const completionPersist = 10 * time.Minute

// recordCompletion writes the running attempt's completed record, retrying
// transient errors (an election, a node down) for up to completionPersist.
func (w *Worker) recordCompletion(log *logrus.Entry, att *kvstate.Attempt, fn func(*kvstate.Job)) (kvstate.Job, error) {
	rec := att.Record()
	deadline := time.Now().Add(completionPersist)
	for wait := time.Second; ; wait = min(2*wait, 15*time.Second) {
		ctx, cancel := context.WithTimeout(context.Background(), kvTimeout)
		final, err := att.Update(ctx, func(j *kvstate.Job) error {
			fn(j)
			return nil
		})
		cancel()
		var te *kvstate.TransitionError
		if errors.As(err, &te) && te.From == kvstate.StatusCompleted && w.ownCompletion(context.Background(), rec) {
			// An earlier try landed but its answer was lost.
			return w.currentRecord(context.Background(), rec), nil
		}
		if !kvstate.Transient(err) || time.Now().Add(wait).After(deadline) {
			return final, err
		}
		log.WithError(err).WithField("retry_in", wait.String()).Warn("cannot record the job's completion yet (NATS is not answering); retrying")
		time.Sleep(wait)
	}
}

// ownCompletion reports whether the record was completed by the attempt
// rec names.
func (w *Worker) ownCompletion(ctx context.Context, rec kvstate.Job) bool {
	cur, _, err := w.jobs.Get(ctx, rec.Hypervisor, rec.JobID)
	return err == nil && cur.Status == kvstate.StatusCompleted && cur.AttemptID == rec.AttemptID
}

// currentRecord is the stored record, or rec when it cannot be read.
func (w *Worker) currentRecord(ctx context.Context, rec kvstate.Job) kvstate.Job {
	if cur, _, err := w.jobs.Get(ctx, rec.Hypervisor, rec.JobID); err == nil {
		return cur
	}
	return rec
}

// whySuperseded is the cause of an attempt stopped by ErrSuperseded: the
// job was cancelled (roll back as for a cancel), or another attempt owns the
// record (fenced: touch nothing).
func (w *Worker) whySuperseded(ctx context.Context, host, jobID string) error {
	if cur, _, err := w.jobs.Get(ctx, host, jobID); err == nil && cur.Status == kvstate.StatusCancelled {
		return errCancelled
	}
	return errFenced
}

// leaseRenewer holds the volume leases the job has taken (its volume, its
// seed volume), so the keep-alive timer renews them.
type leaseRenewer struct {
	mu     sync.Mutex
	leases []*kvstate.HeldLease
}

func (l *leaseRenewer) add(h *kvstate.HeldLease) {
	l.mu.Lock()
	l.leases = append(l.leases, h)
	l.mu.Unlock()
}

func (l *leaseRenewer) remove(h *kvstate.HeldLease) {
	l.mu.Lock()
	l.leases = slices.DeleteFunc(l.leases, func(x *kvstate.HeldLease) bool { return x == h })
	l.mu.Unlock()
}

func (l *leaseRenewer) renew(ctx context.Context, ttl time.Duration) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, h := range l.leases {
		if err := h.Renew(ctx, ttl); err != nil {
			return err
		}
	}
	return nil
}

// keepAlive sends in-progress acks from a timer (not from progress: some
// stages are silent for minutes) and renews the volume lease, every sixth of
// the ack wait. A renewal counts only once the server has confirmed it (a
// flush round trip; a disconnected client would buffer the ack silently).
// When nothing was confirmed for half the ack wait, it stops the job, so
// the job stops writing well before the server could redeliver it to
// another worker.
func (w *Worker) keepAlive(ctx context.Context, stop context.CancelCauseFunc, msg jetstream.Msg, att *kvstate.Attempt, lease *leaseRenewer, written func() bool) {
	every := w.cfg.AckWait / 6
	t := time.NewTicker(every)
	defer t.Stop()
	var lastOK atomic.Int64
	lastOK.Store(time.Now().UnixNano())
	// One renewal at a time, run aside: a call stuck in a reconnecting
	// client must not keep the timer from fencing.
	inflight := make(chan struct{}, 1)
	warned := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if since := time.Since(time.Unix(0, lastOK.Load())); since > w.cfg.AckWait/2 {
			if !written() {
				w.log.WithField("unconfirmed", since.Round(time.Millisecond).String()).Error("in-progress acks unconfirmed for half the ack wait: stopping the job before it can be redelivered")
				stop(errFenced)
				return
			}
			// The volume is written and this attempt writes it no more:
			// stopping now would only have the job run again. Its
			// completion is a compare-and-set on its attempt id, which a
			// later attempt that started meanwhile makes fail.
			if !warned {
				w.log.WithField("unconfirmed", since.Round(time.Millisecond).String()).Warn("in-progress acks unconfirmed for half the ack wait, but the volume is written: recording the completion")
				warned = true
			}
		}
		select {
		case inflight <- struct{}{}:
		default:
			continue // the previous renewal is still waiting
		}
		go func() {
			defer func() { <-inflight }()
			rctx, cancel := context.WithTimeout(ctx, every)
			defer cancel()
			err := msg.InProgress()
			if err == nil {
				err = w.nc.FlushWithContext(rctx)
			}
			if err == nil {
				err = lease.renew(rctx, w.cfg.AckWait)
			}
			if err == nil {
				err = w.attemptHeartbeat(rctx, att)
			}
			if errors.Is(err, kvstate.ErrSuperseded) || errors.Is(err, kvstate.ErrLeaseLost) {
				w.log.WithError(err).Error("another attempt took the job over: stopping this one")
				stop(errFenced)
				return
			}
			if err == nil {
				lastOK.Store(time.Now().UnixNano())
			} else if ctx.Err() == nil {
				w.log.WithError(err).Warn("in-progress ack failed")
			}
		}()
	}
}

// attemptHeartbeat records that the running attempt is alive. A record that
// ended meanwhile (a cancel) is not an error here: watchCancel stops the job.
func (w *Worker) attemptHeartbeat(ctx context.Context, att *kvstate.Attempt) error {
	rec := att.Record()
	_, err := att.Update(ctx, func(j *kvstate.Job) error {
		now := time.Now().UTC()
		j.HeartbeatAt = &now
		return nil
	})
	var te *kvstate.TransitionError
	if errors.As(err, &te) {
		return nil
	}
	if errors.Is(err, kvstate.ErrSuperseded) {
		if cause := w.whySuperseded(ctx, rec.Hypervisor, rec.JobID); !errors.Is(cause, errFenced) {
			return nil
		}
	}
	return err
}

type result struct {
	cacheHit   bool
	imagePath  string
	volumePath string
	volumeSize int64
	checksum   string
	created    bool
	// cloned: the volume is a clone of the image's golden.
	cloned bool
	// writing is set once the volume's content is being replaced.
	writing bool
	// seed is what the job did to its cloud-init seed volume.
	seed volumeState
}

// execute runs the job's stages: the image into the volume, the cloud-init
// seed into the seed volume (after the image; a job without image writes
// only the seed), or uploaded content into the volume. res.created and
// res.seed tell the caller what to roll back.
func (w *Worker) execute(ctx context.Context, rep *reporter, rec kvstate.Job, m messaging.Job, lease *leaseRenewer) (res result, err error) {
	if m.Kind == messaging.KindContent {
		return w.executeContent(ctx, rep, rec, m, lease)
	}
	if m.CloudInit != nil {
		// Refused before anything is written.
		if err := w.volumeAllowed(m.SeedVolume()); err != nil {
			return res, err
		}
	}
	if m.ImageURL != "" {
		if res, err = w.executeImage(ctx, rep, rec, m, lease); err != nil || m.CloudInit == nil {
			return res, err
		}
	}
	err = w.writeSeed(ctx, rep, rec, m, lease, &res.seed)
	if err == nil && m.ImageURL == "" {
		rep.progress(stages.Finalize, 0, 0)
	}
	return res, err
}

// executeImage fills the job's volume from its image (or, for a cache
// fetch, only caches the image).
func (w *Worker) executeImage(ctx context.Context, rep *reporter, rec kvstate.Job, m messaging.Job, lease *leaseRenewer) (res result, err error) {
	ref, err := messaging.ParseImageURL(m.ImageURL)
	if err != nil {
		return res, err
	}
	if ref.Endpoint != w.parts.Source.Endpoint() {
		return res, fmt.Errorf("image_url names endpoint %s, but this worker's object store is %s", ref.Endpoint, w.parts.Source.Endpoint())
	}
	if !w.cfg.ImageBuckets.Allows(ref) {
		return res, fmt.Errorf("image_url names %s, which is not an image source this worker may read (PROVISIONER_IMAGE_BUCKETS=%s); use an image from one of those, or ask the operator to allow it",
			w.cfg.ImageBuckets.Describe(ref), w.cfg.ImageBuckets)
	}
	ji, err := w.fetchImage(ctx, rep, m, ref)
	if err != nil {
		return res, err
	}
	defer ji.release() // the image stays cached while the job reads it
	res.cacheHit, res.imagePath, res.checksum = ji.hit, ji.path, ji.checksum
	img := ji.img
	if m.Kind == messaging.KindCacheFetch {
		if c, ok := w.clones(); ok {
			return res, w.prewarmGolden(ctx, rep, &ji, c)
		}
		if err := ji.verify(ctx); err != nil {
			return res, fmt.Errorf("verify the cached image: %w", err)
		}
		return res, nil
	}

	rep.progress(stages.Volume, 0, 0)
	if err := w.volumeAllowed(m.VolumeName); err != nil {
		return res, err
	}
	held, err := w.leases.Acquire(ctx, rec.Hypervisor, m.VolumeName, rec.JobID, w.cfg.AckWait)
	if err != nil {
		return res, err
	}
	lease.add(held)
	defer func() {
		lease.remove(held)
		// Short: a worker cut off from NATS must not wait here; an
		// unreleased lease expires after the ack wait anyway.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = held.Release(rctx)
	}()

	want := m.VolumeSizeBytes()
	vol, exists, err := w.parts.Backend.Lookup(ctx, m.VolumeName)
	if err != nil {
		return res, err
	}
	if exists {
		if rec.VolumeCreated {
			res.created = true // an earlier attempt of this job created it
		} else if err := volume.CheckReuse(vol, want); err != nil {
			return res, err
		}
		if uc, ok := w.parts.Backend.(volume.UseChecker); ok {
			if err := uc.CheckNotInUse(ctx, vol); err != nil {
				return res, err
			}
		}
	}
	if c, ok := w.clones(); ok {
		if byClone, err := c.byClone(ctx, vol, exists); err != nil {
			return res, err
		} else if byClone {
			return w.provisionByClone(ctx, rep, rec, m, &ji, c, vol, exists, res)
		}
	}
	var already int64 // a reused volume's space, freed as it is zeroed
	if exists {
		already = volume.AllocatedBytes(vol.Path)
	}
	release, err := w.reserveImage(ctx, rep, &ji, fmt.Sprintf("volume %q", m.VolumeName), already)
	if err != nil {
		return res, err
	}
	defer release()
	if !exists {
		if err := img.CheckFits(want); err != nil {
			return res, err
		}
		if err := rep.markVolumeCreated(ctx); err != nil {
			return res, err
		}
		vol, err = w.parts.Backend.Create(ctx, m.VolumeName, want)
		if err != nil {
			return res, fmt.Errorf("create volume %q: %w", m.VolumeName, err)
		}
		res.created = true
	}
	res.volumePath, res.volumeSize = vol.Path, vol.Size
	if err := img.CheckFits(vol.Size); err != nil {
		return res, err
	}
	// A download still arriving is streamed only into a volume this job
	// created: an existing volume is overwritten only by an image whose
	// digest and structure were checked first.
	stream := ji.part != nil && res.created
	if ji.part != nil && !stream {
		ji.dl.setQuiet(false)
		if err := w.finishDownload(ctx, rep, &ji, true); err != nil {
			return res, err
		}
		ji.part = nil
	}
	trace.SpanFromContext(ctx).SetAttributes(attribute.Bool("streamed", stream))
	if stream {
		rep.log.Info("converting the image while it downloads; its digest is checked when the last byte arrives")
	}
	rep.progress(stages.Populate, 0, img.VirtualSize)
	res.writing = true
	err = w.populate(ctx, rep, &ji, vol, stream)
	release() // written: the file system's free space counts it now
	res.imagePath, res.checksum = ji.path, ji.checksum
	if err != nil {
		return res, err
	}
	rep.progress(stages.Finalize, 0, 0)
	if r, ok := w.parts.Backend.(volume.Refresher); ok {
		if err := r.Refresh(ctx); err != nil {
			return res, fmt.Errorf("refresh the volume's pool: %w", err)
		}
	}
	return res, nil
}

// populate converts ji's image into vol, reading the download while it
// arrives when stream is set. What the conversion reads is verified while
// it runs: a cache hit's digest, or a streamed download's digest and
// structure (the conversion stops at once when either fails); it returns nil
// only if both succeed.
func (w *Worker) populate(ctx context.Context, rep *reporter, ji *jobImage, vol volume.Volume, stream bool) error {
	return w.populateHashed(ctx, rep, ji, vol, stream, nil)
}

// populateHashed is populate telling h (when not nil) everything the
// conversion writes, where the converter can (convert.DigestConverter);
// h.Sum then says whether it could.
func (w *Worker) populateHashed(ctx context.Context, rep *reporter, ji *jobImage, vol volume.Volume, stream bool, h *volume.GoldenHasher) error {
	img := ji.img
	conv := w.parts.Converter
	if dc, ok := conv.(convert.DigestConverter); ok && h != nil {
		conv = dc.WithDigest(h)
	}
	convCtx, stopConv := context.WithCancelCause(ctx)
	defer stopConv(nil)
	verified := make(chan error, 1)
	go func() {
		var err error
		if stream {
			err = w.finishDownload(ctx, rep, ji, true)
		} else if err = ji.verify(ctx); err != nil {
			err = fmt.Errorf("verify the cached image: %w", err)
		}
		if err != nil {
			stopConv(err)
		}
		verified <- err
	}()
	var err error
	if stream {
		err = conv.(StreamConverter).ConvertStream(convCtx, img, ji.part, vol, rep.progress)
	} else {
		err = conv.Convert(convCtx, img, ji.path, vol, rep.progress)
	}
	aborted := false
	// A read past the end of a download that ended short (a truncated
	// image) is not the conversion failing on its own: the download's
	// verdict, still being reached, says why.
	if stream && err != nil && !errors.Is(err, imagecache.ErrStreamRestarted) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		select {
		case <-ji.part.Done(): // the download ended: its outcome comes first
		default:
			// The conversion failed on its own: the download is not needed,
			// and its abort is not the error to report.
			ji.part.Abort()
			aborted = true
		}
	}
	if verr := <-verified; verr != nil && !aborted {
		return verr
	}
	if errors.Is(err, imagecache.ErrStreamRestarted) || (stream && err == nil && ji.part.Restarted()) {
		// The download started over mid-way (perhaps on another version
		// of the object); it is whole and verified now: convert again
		// from the cached file.
		if h != nil {
			h.Reset()
		}
		err = conv.Convert(ctx, img, ji.path, vol, rep.progress)
	}
	if err != nil {
		if cause := context.Cause(ctx); cause != nil {
			return cause
		}
		return fmt.Errorf("populate volume %q: %w", vol.Name, err)
	}
	return nil
}

// publishProgress publishes a running attempt's progress as an event.
func (w *Worker) publishProgress(host, jobID string, attempt int, p kvstate.Progress) {
	w.publishEvent(host, jobID, kvstate.Job{Status: kvstate.StatusRunning, Attempt: attempt, Progress: &p})
}

func (w *Worker) publishEvent(host, jobID string, j kvstate.Job) {
	ev := messaging.Event{JobID: jobID, Host: host, Status: string(j.Status), Attempt: j.Attempt, Error: j.Error, Time: time.Now().UTC()}
	if j.Progress != nil {
		ev.Stage, ev.Percent, ev.Bytes, ev.Total, ev.ETASec = j.Progress.Stage, j.Progress.Percent, j.Progress.BytesProcessed, j.Progress.BytesTotal, j.Progress.ETASec
	}
	data, _ := json.Marshal(ev)
	_ = w.nc.Publish(w.subjects.Event(host, jobID), data)
}
