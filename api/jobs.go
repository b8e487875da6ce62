package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/mux"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
	"github.com/libvirt-volume-provisioner/provisioner/telemetry"
)

// decodeBody reads a capped JSON body strictly into dst; it answers the
// request itself and returns false on any problem.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, dst any) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, catInvalid, fmt.Sprintf("request body is larger than %d bytes", s.cfg.MaxBodyBytes))
			return false
		}
		writeError(w, http.StatusBadRequest, catInvalid, "could not read the request body: "+err.Error())
		return false
	}
	if len(bytes.TrimSpace(body)) == 0 {
		writeError(w, http.StatusBadRequest, catInvalid, "request body is empty; send a JSON object")
		return false
	}
	if err := messaging.DecodeStrict(body, dst); err != nil {
		if errors.Is(err, messaging.ErrTrailingData) {
			err = errors.New("request body has data after the JSON object")
		}
		writeError(w, http.StatusBadRequest, catInvalid, err.Error())
		return false
	}
	return true
}

func joinMissing(missing []string) string {
	switch len(missing) {
	case 1:
		return missing[0] + " is required"
	default:
		return strings.Join(missing[:len(missing)-1], ", ") + " and " + missing[len(missing)-1] + " are required"
	}
}

func (s *Server) createJob(w http.ResponseWriter, r *http.Request) {
	var req rest.JobRequest
	if !s.decodeBody(w, r, &req) {
		return
	}
	// With cloud_init and no image only the seed is written: no size then.
	seedOnly := req.CloudInit != nil && req.ImageURL == ""
	var missing []string
	if req.ImageURL == "" && !seedOnly {
		missing = append(missing, "image_url")
	}
	if req.VolumeName == "" {
		missing = append(missing, "volume_name")
	}
	if req.VolumeSizeGB == nil && !seedOnly {
		missing = append(missing, "volume_size_gb")
	}
	if len(missing) > 0 {
		writeError(w, http.StatusBadRequest, catInvalid, joinMissing(missing))
		return
	}
	m := messaging.Job{Kind: messaging.KindProvision, ImageURL: req.ImageURL, VolumeName: req.VolumeName,
		ImageType: req.ImageType, CorrelationID: req.CorrelationID, Hypervisor: req.Hypervisor,
		Verify: req.Verify, CloudInit: req.CloudInit}
	if req.VolumeSizeGB != nil {
		m.VolumeSizeGB = *req.VolumeSizeGB
	}
	s.submit(w, r, m)
}

func (s *Server) fetchCache(w http.ResponseWriter, r *http.Request) {
	var req rest.FetchRequest
	if !s.decodeBody(w, r, &req) {
		return
	}
	if req.ImageURL == "" {
		writeError(w, http.StatusBadRequest, catInvalid, "image_url is required")
		return
	}
	m := messaging.Job{Kind: messaging.KindCacheFetch, ImageURL: req.ImageURL, CorrelationID: req.CorrelationID, Hypervisor: req.Hypervisor}
	s.submit(w, r, m)
}

// submit validates a job, records it as pending and publishes it.
func (s *Server) submit(w http.ResponseWriter, r *http.Request, m messaging.Job) {
	m.JobID = uuid.NewString()
	m.Caller = identity(r).Name
	m.SubmittedAt = time.Now().UTC()
	m.Normalize()
	if err := m.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, catInvalid, err.Error())
		return
	}
	ref, ok := s.imageAllowed(w, m)
	if !ok {
		return
	}
	if !s.connected(w) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.NATSTimeout)
	defer cancel()
	host, ok := s.resolveHost(ctx, w, r, m.Hypervisor)
	if !ok || !allowHost(w, r, host) || !allowSubmission(w, r, m, ref) {
		return
	}
	m.Hypervisor = host
	// undo takes back what this request reserved when it cannot finish.
	var undo []func(context.Context)
	defer func() {
		if len(undo) == 0 {
			return
		}
		uctx, ucancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.cfg.NATSTimeout)
		defer ucancel()
		for _, u := range undo {
			u(uctx)
		}
	}()
	if key := r.Header.Get(HeaderIdempotencyKey); key != "" {
		prior, release, ok := s.idempotent(ctx, w, r, key, m)
		if !ok {
			return
		}
		if prior != "" {
			s.replay(ctx, w, r, m, prior)
			return
		}
		undo = append(undo, release)
	}
	if !s.reserveVolumes(ctx, w, r, m, &undo) {
		return
	}
	s.enqueue(ctx, w, r, m, &undo)
}

// reserveVolumes reserves the job's volume and seed volume (409 when
// another job has one), adding their release to undo.
func (s *Server) reserveVolumes(ctx context.Context, w http.ResponseWriter, r *http.Request, m messaging.Job, undo *[]func(context.Context)) bool {
	if m.Kind == messaging.KindCacheFetch {
		return true
	}
	for _, vol := range []string{m.VolumeName, m.SeedVolume()} {
		if vol == "" {
			continue
		}
		v := m
		v.VolumeName = vol
		release, ok := s.reserveVolume(ctx, w, r, m.Hypervisor, v)
		if !ok {
			return false
		}
		*undo = append(*undo, release)
	}
	return true
}

// enqueue records m's job as pending and publishes it, answering the
// request; what undo holds is taken back when nothing was queued.
func (s *Server) enqueue(ctx context.Context, w http.ResponseWriter, r *http.Request, m messaging.Job, undo *[]func(context.Context)) {
	rec := kvstate.NewJob(m, m.Hypervisor, m.SubmittedAt)
	rec.TraceID, _, _ = telemetry.IDs(ctx)
	rev, err := s.jobs.Create(ctx, rec)
	if err != nil {
		s.failNATS(w, r, "record job", err)
		return
	}
	err = s.queue(ctx, m)
	if err != nil {
		switch queued, known := s.queued(m.Hypervisor, m.JobID); {
		case queued:
			// The publish landed but its answer was lost (an election).
			err = nil
		case !known || !refused(err):
			// It may have landed, or still land (a publish in flight
			// when its answer timed out is not yet on the leader): keep
			// the record, the reservation and the Idempotency-Key, so a
			// retry with the key finishes this submission (replay)
			// instead of starting a second job on the same volume.
			*undo = nil
			s.failNATS(w, r, "queue job (it may have been queued: retry with the same Idempotency-Key)", err)
			return
		}
	}
	if err != nil {
		// Nothing was queued: take the record back so no phantom job stays pending.
		// Only the record as created: a record a worker has moved on
		// means the message landed after all, and its job is under way.
		delCtx, delCancel := context.WithTimeout(context.Background(), s.cfg.NATSTimeout)
		derr := s.jobs.KV.Delete(delCtx, messaging.JobKey(m.Hypervisor, m.JobID), jetstream.LastRevision(rev))
		delCancel()
		if derr == nil || !kvstate.IsRevisionMismatch(derr) {
			s.failNATS(w, r, "queue job", err)
			return
		}
	}
	*undo = nil
	s.accepted(ctx, w, r, m)
}

// imageAllowed checks a job's image against the configured endpoints and
// buckets; it answers 400 itself when the image is not allowed. A job
// without image (a seed only) passes.
func (s *Server) imageAllowed(w http.ResponseWriter, m messaging.Job) (messaging.ImageRef, bool) {
	if m.ImageURL == "" {
		return messaging.ImageRef{}, true
	}
	ref, _ := messaging.ParseImageURL(m.ImageURL)
	switch {
	case len(s.cfg.ImageEndpoints) > 0 && !slices.Contains(s.cfg.ImageEndpoints, ref.Endpoint):
		writeError(w, http.StatusBadRequest, catInvalid, fmt.Sprintf("image_url: endpoint %s is not a configured object store (allowed: %s)", ref.Endpoint, strings.Join(s.cfg.ImageEndpoints, ", ")))
		return ref, false
	case len(s.cfg.ImageEndpoints) == 0 && messaging.RestrictedHost(ref.Host()):
		writeError(w, http.StatusBadRequest, catInvalid, fmt.Sprintf("image_url: endpoint %s is a loopback, link-local or metadata address; an operator must configure it in PROVISIONER_IMAGE_ENDPOINTS to allow it", ref.Endpoint))
		return ref, false
	}
	if !s.cfg.ImageBuckets.Allows(ref) {
		writeError(w, http.StatusBadRequest, catInvalid, fmt.Sprintf("image_url: %s is not an allowed image source (allowed: %s)", s.cfg.ImageBuckets.Describe(ref), s.cfg.ImageBuckets))
		return ref, false
	}
	return ref, true
}

// accepted answers a submission whose job is queued.
func (s *Server) accepted(ctx context.Context, w http.ResponseWriter, r *http.Request, m messaging.Job) {
	s.metrics.jobs.WithLabelValues("started").Inc()
	s.log.WithFields(telemetry.LogFields(ctx)).WithFields(map[string]any{"job_id": m.JobID, "host": m.Hypervisor, "kind": m.Kind, "volume": m.VolumeName,
		"request_id": requestID(r), "caller": m.Caller}).Info("job accepted")
	w.Header().Set("Location", "/api/v1/jobs/"+m.JobID)
	writeJSON(w, http.StatusAccepted, rest.Accepted{JobID: m.JobID})
}

// queue publishes m's job message (its job id as the message id, so a
// repeat within the stream's duplicate window is dropped).
func (s *Server) queue(ctx context.Context, m messaging.Job) error {
	host := m.Hypervisor
	data, _ := json.Marshal(m)
	msg := nats.NewMsg(s.subjects.Job(host, m.JobID))
	msg.Data = data
	msg.Header.Set(messaging.HeaderJobVersion, fmt.Sprint(m.Version))
	pctx, span := s.tracer.Start(ctx, "publish "+s.subjects.Prefix+".jobs."+host, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", msg.Subject),
			attribute.String("job_id", m.JobID), attribute.String("host", host), attribute.String("volume", m.VolumeName), attribute.String("kind", m.Kind)))
	telemetry.Propagator.Inject(pctx, messaging.HeaderCarrier(msg.Header))
	_, err := s.js.PublishMsg(pctx, msg, jetstream.WithMsgID(m.JobID))
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
	return err
}

// queued reports whether host's job has a message in the job stream, and
// known false when the stream's leader did not answer. It asks the leader:
// a direct get may be answered by a replica that has not seen the message
// yet.
func (s *Server) queued(host, jobID string) (queued, known bool) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.NATSTimeout)
	defer cancel()
	req, _ := json.Marshal(map[string]string{"last_by_subj": s.subjects.Job(host, jobID)})
	msg, err := s.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+messaging.JobStream, req)
	if err != nil {
		return false, false
	}
	var resp struct {
		Error *struct {
			Code int `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal(msg.Data, &resp) != nil {
		return false, false
	}
	if resp.Error == nil {
		return true, true
	}
	return false, resp.Error.Code == http.StatusNotFound
}

// replay answers a submission whose Idempotency-Key names the earlier job
// prior, finishing that submission if it was cut short (an API replica
// stopped between recording the key and queueing the job): a job with no
// record is submitted now under prior's id, and a pending one is queued
// again (a message still queued makes this a no-op).
func (s *Server) replay(ctx context.Context, w http.ResponseWriter, r *http.Request, m messaging.Job, prior string) {
	w.Header().Set("Idempotent-Replayed", "true")
	m.JobID = prior
	rec, _, err := s.jobs.Get(ctx, m.Hypervisor, prior)
	switch {
	case errors.Is(err, kvstate.ErrJobNotFound):
		if m.Kind == messaging.KindProvision {
			if _, ok := s.reserveVolume(ctx, w, r, m.Hypervisor, m); !ok {
				return
			}
		}
		rec = kvstate.NewJob(m, m.Hypervisor, m.SubmittedAt)
		rec.TraceID, _, _ = telemetry.IDs(ctx)
		if _, err := s.jobs.Create(ctx, rec); err != nil && !errors.Is(err, kvstate.ErrExists) {
			s.failNATS(w, r, "record job", err)
			return
		}
		fallthrough
	case err == nil && rec.Status == kvstate.StatusPending:
		if err := s.queue(ctx, m); err != nil && !alreadyQueued(err) {
			s.failNATS(w, r, "queue job", err)
			return
		}
		s.log.WithFields(map[string]any{"job_id": prior, "host": m.Hypervisor}).Info("idempotent retry: the earlier submission's job is queued")
	case err != nil:
		s.failNATS(w, r, "read job", err)
		return
	}
	w.Header().Set("Location", "/api/v1/jobs/"+prior)
	writeJSON(w, http.StatusAccepted, rest.Accepted{JobID: prior})
}

// refused reports a publish that certainly stored nothing: the stream
// answered with an error, or nothing listened on the subject (nats.go
// reports that as ErrNoStreamResponse once its retries are spent).
func refused(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse)
}

// alreadyQueued reports the job stream's refusal of a second message for
// one job subject (a message of the job is still queued).
func alreadyQueued(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && strings.Contains(apiErr.Description, "maximum messages per subject")
}

// resolveHost picks the request's hypervisor or the configured default and
// checks it registered; it answers the request itself when it cannot.
func (s *Server) resolveHost(ctx context.Context, w http.ResponseWriter, r *http.Request, requested string) (string, bool) {
	host := requested
	if host == "" {
		host = s.cfg.DefaultHypervisor
	}
	if host != "" && !messaging.ValidHost(host) {
		writeError(w, http.StatusBadRequest, catInvalid, fmt.Sprintf("hypervisor %q is not a host name (lower-case letters, digits and dashes)", host))
		return "", false
	}
	if host != "" {
		_, err := s.hosts.Get(ctx, host)
		if err == nil {
			return host, true
		}
		if !errors.Is(err, kvstate.ErrHostNotFound) {
			s.failNATS(w, r, "read host registry", err)
			return "", false
		}
	}
	hosts, err := s.hosts.List(ctx)
	if err != nil {
		s.failNATS(w, r, "read host registry", err)
		return "", false
	}
	names := make([]string, 0, len(hosts))
	for _, h := range hosts {
		names = append(names, h.Name)
	}
	known := "none has registered yet (start a worker)"
	if len(names) > 0 {
		known = strings.Join(names, ", ")
	}
	if host == "" {
		writeError(w, http.StatusBadRequest, catInvalid, "hypervisor is required (no default is configured); known hypervisors: "+known)
	} else {
		writeError(w, http.StatusBadRequest, catInvalid, fmt.Sprintf("unknown hypervisor %q; known hypervisors: %s", host, known))
	}
	return "", false
}

// jobIDFromPath validates the {job_id} path variable; it answers the
// request itself when it is not a UUID.
func jobIDFromPath(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := mux.Vars(r)["job_id"]
	if u, err := uuid.Parse(id); err != nil || len(id) != 36 || u.String() != strings.ToLower(id) {
		writeError(w, http.StatusBadRequest, catInvalid, fmt.Sprintf("job_id %q is not a UUID", id))
		return "", false
	}
	return strings.ToLower(id), true
}

// findJob finds a job on any host: its record in KV, or else its message
// still waiting in the job stream (published straight to NATS), whose record
// it then creates so the job can be read and cancelled.
func (s *Server) findJob(ctx context.Context, jobID string) (kvstate.Job, error) {
	raw, err := s.recordStream.GetLastMsgForSubject(ctx, "$KV."+messaging.JobBucket+".*."+jobID)
	if err == nil {
		op := raw.Header.Get("KV-Operation")
		if op != "DEL" && op != "PURGE" {
			return kvstate.DecodeJob(raw.Data)
		}
	} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return kvstate.Job{}, err
	}
	raw, err = s.jobStream.GetLastMsgForSubject(ctx, s.subjects.AnyHostJob(jobID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return kvstate.Job{}, kvstate.ErrJobNotFound
	}
	if err != nil {
		return kvstate.Job{}, err
	}
	host, _, err := s.subjects.ParseJob(raw.Subject)
	if err != nil {
		return kvstate.Job{}, kvstate.ErrJobNotFound
	}
	rec, _, _ := kvstate.FromMessage(raw.Data, host, jobID, raw.Time)
	if _, err := s.jobs.Create(ctx, rec); err != nil && !errors.Is(err, kvstate.ErrExists) {
		return kvstate.Job{}, err
	}
	rec, _, err = s.jobs.Get(ctx, host, jobID)
	return rec, err
}

// jobOf finds the job named by the request's path, answering the request
// itself (400, 404, 403, 503) when it cannot be used: a job on a host, or
// for a volume (or a cache fetch of an image), outside the caller's scope is
// 403. Reads, cancels and event streams all go through it.
func (s *Server) jobOf(w http.ResponseWriter, r *http.Request) (kvstate.Job, bool) {
	jobID, ok := jobIDFromPath(w, r)
	if !ok || !s.connected(w) {
		return kvstate.Job{}, false
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.NATSTimeout)
	defer cancel()
	rec, err := s.findJob(ctx, jobID)
	// Neither a record nor a message: any not-found error.
	if errors.Is(err, kvstate.ErrNotFound) {
		writeError(w, http.StatusNotFound, catNotFound, "job not found")
		return rec, false
	}
	if err != nil {
		s.failNATS(w, r, "read job", err)
		return rec, false
	}
	if !allowHost(w, r, rec.Hypervisor) {
		return rec, false
	}
	if err := identity(r).AllowJob(rec.JobID, rec.Kind, rec.VolumeName, rec.ImageURL); err != nil {
		writeError(w, http.StatusForbidden, catForbidden, err.Error())
		return rec, false
	}
	return rec, true
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request) {
	if rec, ok := s.jobOf(w, r); ok {
		writeJSON(w, http.StatusOK, rec)
	}
}

func (s *Server) cancelJob(w http.ResponseWriter, r *http.Request) {
	rec, ok := s.jobOf(w, r)
	if !ok {
		return
	}
	jobID := rec.JobID
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.NATSTimeout)
	defer cancel()
	updated, _, err := s.jobs.Update(ctx, rec.Hypervisor, jobID, func(j *kvstate.Job) error {
		if j.Status.Terminal() {
			return &kvstate.TransitionError{From: j.Status, To: kvstate.StatusCancelled}
		}
		now := time.Now().UTC()
		j.Status = kvstate.StatusCancelled
		j.FinishedAt = &now
		return nil
	})
	var te *kvstate.TransitionError
	if errors.As(err, &te) {
		writeError(w, http.StatusBadRequest, catCancel, fmt.Sprintf("cannot cancel job in '%s' status", te.From))
		return
	}
	if err != nil {
		s.failNATS(w, r, "cancel job", err)
		return
	}
	s.hintJobChanged(updated.Hypervisor, jobID)
	if rec.Status == kvstate.StatusPending {
		s.dropQueued(ctx, updated.Hypervisor, jobID)
		s.releaseVolume(ctx, updated.Hypervisor, updated.VolumeName, jobID)
		s.releaseVolume(ctx, updated.Hypervisor, updated.SeedVolume, jobID)
		s.settleContent(ctx, updated)
	}
	s.log.WithFields(telemetry.LogFields(ctx)).WithFields(map[string]any{"job_id": jobID, "host": updated.Hypervisor, "request_id": requestID(r), "caller": identity(r).Name}).Info("job cancelled")
	writeJSON(w, http.StatusOK, rest.Cancelled{Status: string(kvstate.StatusCancelled), JobID: jobID})
}

// dropQueued removes a cancelled job's message from the queue, best effort:
// a worker that already holds it sees the cancelled record and acks it.
func (s *Server) dropQueued(ctx context.Context, host, jobID string) {
	raw, err := s.jobStream.GetLastMsgForSubject(ctx, s.subjects.Job(host, jobID))
	if err != nil {
		return
	}
	_ = s.jobStream.DeleteMsg(ctx, raw.Sequence)
}
