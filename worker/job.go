package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline"
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
	if reason, term := w.refusal(cur, attempt, verr); reason != "" {
		w.fail(kctx, log, host, jobID, reason)
		_ = msg.TermWithReason(term)
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
	rec, rev, ok := w.markRunning(kctx, log, msg, cur, rev, attempt, traceID)
	if !ok {
		return
	}
	cancel()
	outcome := w.run(sctx, log, msg, w.jobs.Attempt(rec, rev), m)
	span.SetAttributes(attribute.String("outcome", outcome))
	if outcome == string(kvstate.StatusFailed) {
		span.SetStatus(codes.Error, "job failed")
	}
}

// refusal is why a delivered job must fail without running (a malformed
// message, too long pending, too many deliveries), and the reason its
// message is terminated with; "" when it may run.
func (w *Worker) refusal(cur kvstate.Job, attempt int, verr error) (reason, term string) {
	if verr != nil {
		return "invalid job message: " + verr.Error(), "malformed"
	}
	if age := time.Since(cur.CreatedAt); w.cfg.MaxPendingAge > 0 && cur.Status == kvstate.StatusPending && age > w.cfg.MaxPendingAge {
		return fmt.Sprintf("the job waited %s for a worker, longer than the maximum pending age of %s (PROVISIONER_MAX_PENDING_AGE); submit it again",
			age.Round(time.Second), w.cfg.MaxPendingAge), "pending too long"
	}
	if attempt >= w.cfg.MaxDeliver {
		return fmt.Sprintf("gave up after %d deliveries: the job never finished (its worker stopped or lost contact while running it)", attempt), "max deliveries"
	}
	return "", ""
}

// markRunning moves the record to running for this attempt. It is false
// when the attempt must not run, the message then settled: the job ended
// meanwhile (term), an earlier attempt is alive (nak until its heartbeat
// would expire), or the record cannot be written (nak).
func (w *Worker) markRunning(ctx context.Context, log *logrus.Entry, msg jetstream.Msg, cur kvstate.Job, rev uint64, attempt int, traceID string) (kvstate.Job, uint64, bool) {
	host, jobID := cur.Hypervisor, cur.JobID
	now := time.Now().UTC()
	attemptID := uuid.NewString()
	rec, rev, err := w.jobs.UpdateFrom(ctx, cur, rev, func(j *kvstate.Job) error {
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
		return kvstate.Job{}, 0, false
	}
	if errors.Is(err, errAttemptAlive) {
		log.Info("an earlier attempt of this job started meanwhile; leaving the job to it")
		_ = msg.NakWithDelay(w.attemptAliveWithin())
		return kvstate.Job{}, 0, false
	}
	if err != nil {
		log.WithError(err).Warn("cannot mark job running; will retry")
		_ = msg.NakWithDelay(nakDelay)
		return kvstate.Job{}, 0, false
	}
	return rec, rev, true
}

// jobRecord is the job's record and its revision: the stored one (the API
// wrote it for a REST submission), or rec stored now (a job published
// straight to NATS).
func (w *Worker) jobRecord(ctx context.Context, rec kvstate.Job) (kvstate.Job, uint64, error) {
	cur, rev, err := w.jobs.Get(ctx, rec.Hypervisor, rec.JobID)
	if !errors.Is(err, kvstate.ErrJobNotFound) {
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

// run executes a claimed attempt to its end and settles it (conclude),
// returning how it ended.
func (w *Worker) run(ctx context.Context, log *logrus.Entry, msg jetstream.Msg, att *kvstate.Attempt, m messaging.Job) string {
	rec := att.Record()
	w.active.Add(1)
	w.metrics.active.Inc()
	defer func() {
		w.active.Add(-1)
		w.metrics.active.Dec()
	}()
	e := &ending{msg: msg, att: att, job: m, started: time.Now()}
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
	e.log = log.WithFields(logrus.Fields{"attempt": rec.Attempt, "caller": rec.Caller})
	e.rep = newReporter(w, jobCtx, e.log, att)
	var lease leaseRenewer
	wg.Go(func() { w.keepAlive(jobCtx, stop, msg, att, &lease, e.rep.written) })
	wg.Go(func() { w.watchCancel(jobCtx, stop, host, jobID) })
	e.log.WithFields(logrus.Fields{"kind": m.Kind, "volume": m.VolumeName, "image_url": m.ImageURL}).Info("job started")

	e.res, e.err = w.execute(jobCtx, e.rep, rec, m, &lease)
	e.err = filledUp(e.err)
	e.cause = context.Cause(jobCtx)
	stop(nil)
	e.rep.endStage(e.err)
	e.rep.close()

	bg, cancel := context.WithTimeout(context.Background(), kvTimeout)
	defer cancel()
	if e.cause == nil && errors.Is(e.err, kvstate.ErrSuperseded) {
		e.cause = w.whySuperseded(bg, host, jobID)
	}
	o := classify(e.err, e.cause)
	if o == outcomeCompleted {
		o = w.complete(e)
	}
	return w.conclude(bg, o, e).String()
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

// result is what a job did: its image plan's result, and what it did to
// its cloud-init seed volume.
type result struct {
	pipeline.Result
	seed volumeState
}

// execute runs the job's stages: the image into the volume, the cloud-init
// seed into the seed volume (after the image; a job without image writes
// only the seed), or uploaded content into the volume. res.Created and
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
