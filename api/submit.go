package api

import (
	"context"
	"errors"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
	"github.com/libvirt-volume-provisioner/provisioner/telemetry"
)

// submission is a request's job on its way into the queue: the steps every
// submission takes (POST /api/v1/jobs, POST /api/v1/cache/fetch and an
// upload). What it reserves on the way (its Idempotency-Key, its volumes,
// an upload) is taken back when it ends without its job queued.
type submission struct {
	s    *Server
	w    http.ResponseWriter
	r    *http.Request
	undo []func(context.Context)
}

// begin starts the submission of m's job: it claims the request's
// Idempotency-Key and reserves the job's volumes. A key that names an
// earlier job has replay answer the request instead. ok is false when the
// request was answered (an error, or the replay); nothing stays reserved
// then. The caller defers end on a submission begun.
func (s *Server) begin(ctx context.Context, w http.ResponseWriter, r *http.Request, m messaging.Job, replay func(prior, key string)) (sub *submission, ok bool) {
	sub = &submission{s: s, w: w, r: r}
	if key := r.Header.Get(HeaderIdempotencyKey); key != "" {
		prior, ok := sub.claimKey(ctx, key, m)
		if !ok {
			return nil, false
		}
		if prior != "" {
			replay(prior, key)
			return nil, false
		}
	}
	if !sub.reserveVolumes(ctx, m) {
		sub.end()
		return nil, false
	}
	return sub, true
}

// onUndo adds f to what end takes back.
func (sub *submission) onUndo(f func(context.Context)) { sub.undo = append(sub.undo, f) }

// keep drops what end would take back: the job is queued, or may be.
func (sub *submission) keep() { sub.undo = nil }

// end takes back what the submission reserved, unless kept, last taken
// first, each with a time of its own (one slow step does not leave the
// others undone). It outlives the request's cancellation (a client that
// went away leaves nothing reserved).
func (sub *submission) end() {
	for i := len(sub.undo) - 1; i >= 0; i-- {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(sub.r.Context()), sub.s.cfg.NATSTimeout)
		sub.undo[i](ctx)
		cancel()
	}
	sub.undo = nil
}

// claimKey records the Idempotency-Key key for m's job (released on undo).
// prior is the job of the same request accepted earlier under key ("" if
// none: the key is m's now); ok is false when it answered with an error.
func (sub *submission) claimKey(ctx context.Context, key string, m messaging.Job) (prior string, ok bool) {
	s, w, r := sub.s, sub.w, sub.r
	if !validIdempotencyKey(key) {
		writeError(w, http.StatusBadRequest, catInvalid, "Idempotency-Key must be 1 to 255 printable ASCII characters")
		return "", false
	}
	claim, err := s.state.Idempotency.Claim(ctx, identity(r).Name, key, idempotencyRecord(m))
	if err != nil {
		s.failNATS(w, r, "record idempotency key", err)
		return "", false
	}
	if claim.New() {
		sub.onUndo(func(ctx context.Context) { _ = claim.Release(ctx) })
		return "", true
	}
	if claim.Prior.RequestHash != requestHash(m) {
		writeError(w, http.StatusUnprocessableEntity, catInvalid, keyReused(key, claim.Prior.JobID))
		return "", false
	}
	return claim.Prior.JobID, true
}

// reserveVolumes reserves the job's volume and seed volume (409 when
// another job has one), releasing them on undo.
func (sub *submission) reserveVolumes(ctx context.Context, m messaging.Job) bool {
	if m.Kind == messaging.KindCacheFetch {
		return true
	}
	for _, vol := range []string{m.VolumeName, m.SeedVolume()} {
		if vol == "" {
			continue
		}
		v := m
		v.VolumeName = vol
		release, ok := sub.s.reserveVolume(ctx, sub.w, sub.r, m.Hypervisor, v)
		if !ok {
			return false
		}
		sub.onUndo(release)
	}
	return true
}

// enqueue records m's job as pending and publishes it, answering the
// request; what the submission reserved is taken back (by end) when
// nothing was queued.
func (sub *submission) enqueue(ctx context.Context, m messaging.Job) {
	s, w, r := sub.s, sub.w, sub.r
	rec := kvstate.NewJob(m, m.Hypervisor, m.SubmittedAt)
	rec.TraceID, _, _ = telemetry.IDs(ctx)
	rev, err := s.state.Jobs.Create(ctx, rec)
	if err != nil {
		if kvstate.MayHaveStored(err) {
			// The record may still land (a write whose answer an election
			// lost): keep the Idempotency-Key and the reservation with
			// it, so a retry with the key finishes this submission
			// (replay) instead of meeting this job pending on its own
			// volume.
			sub.keep()
			s.failNATS(w, r, "record job (it may have been recorded: retry with the same Idempotency-Key)", err)
			return
		}
		s.failNATS(w, r, "record job", err)
		return
	}
	if err := s.queue(ctx, m); err != nil && !sub.queuedAfterAll(m, rev, err) {
		return
	}
	sub.keep()
	s.accepted(ctx, w, r, m)
}

// queuedAfterAll settles a publish of m's job (recorded at revision rev)
// that failed with err: true when the job is queued after all; otherwise
// it answers the request itself. A publish that certainly stored nothing
// takes the record back; one that may still land keeps the record and
// every reservation.
func (sub *submission) queuedAfterAll(m messaging.Job, rev uint64, err error) bool {
	s, w, r := sub.s, sub.w, sub.r
	qctx, qcancel := context.WithTimeout(context.Background(), s.cfg.NATSTimeout)
	queued, qerr := s.state.Queue.Queued(qctx, m.Hypervisor, m.JobID)
	qcancel()
	switch {
	case queued:
		// The publish landed but its answer was lost (an election).
		return true
	case qerr != nil || !errors.Is(err, kvstate.ErrPublishRefused):
		// It may have landed, or still land (a publish in flight when
		// its answer timed out is not yet on the leader): keep the
		// record, the reservation and the Idempotency-Key, so a retry
		// with the key finishes this submission (replay) instead of
		// starting a second job on the same volume.
		sub.keep()
		s.failNATS(w, r, "queue job (it may have been queued: retry with the same Idempotency-Key)", err)
		return false
	}
	// Nothing was queued: take the record back so no phantom job stays
	// pending. Only the record as created: a record a worker has moved
	// on means the message landed after all, and its job is under way.
	dctx, dcancel := context.WithTimeout(context.Background(), s.cfg.NATSTimeout)
	terr := s.state.Jobs.TakeBack(dctx, m.Hypervisor, m.JobID, rev)
	dcancel()
	if errors.Is(terr, kvstate.ErrJobChanged) {
		return true
	}
	s.failNATS(w, r, "queue job", err)
	return false
}

// accepted answers a submission whose job is queued.
func (s *Server) accepted(ctx context.Context, w http.ResponseWriter, r *http.Request, m messaging.Job) {
	s.metrics.jobs.WithLabelValues("started").Inc()
	s.log.WithFields(telemetry.LogFields(ctx)).WithFields(map[string]any{"job_id": m.JobID, "host": m.Hypervisor, "kind": m.Kind, "volume": m.VolumeName,
		"request_id": requestID(r), "caller": m.Caller}).Info("job accepted")
	w.Header().Set("Location", "/api/v1/jobs/"+m.JobID)
	writeJSON(w, http.StatusAccepted, rest.Accepted{JobID: m.JobID})
}

// queue publishes m's job message under a producer span (see
// kvstate.JobQueue.Publish).
func (s *Server) queue(ctx context.Context, m messaging.Job) error {
	host := m.Hypervisor
	pctx, span := s.tracer.Start(ctx, "publish "+s.subjects.Prefix+".jobs."+host, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", s.subjects.Job(host, m.JobID)),
			attribute.String("job_id", m.JobID), attribute.String("host", host), attribute.String("volume", m.VolumeName), attribute.String("kind", m.Kind)))
	err := s.state.Queue.Publish(pctx, m)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
	return err
}
