package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/mux"

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
	sub, ok := s.begin(ctx, w, r, m, func(prior, _ string) { s.replay(ctx, w, r, m, prior) })
	if !ok {
		return
	}
	defer sub.end()
	sub.enqueue(ctx, m)
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

// replay answers a submission whose Idempotency-Key names the earlier job
// prior, finishing that submission if it was cut short (an API replica
// stopped between recording the key and queueing the job): a job with no
// record is submitted now under prior's id, and a pending one is queued
// again (a message still queued makes this a no-op).
func (s *Server) replay(ctx context.Context, w http.ResponseWriter, r *http.Request, m messaging.Job, prior string) {
	w.Header().Set("Idempotent-Replayed", "true")
	m.JobID = prior
	rec, _, err := s.state.Jobs.Get(ctx, m.Hypervisor, prior)
	switch {
	case errors.Is(err, kvstate.ErrJobNotFound):
		if m.Kind == messaging.KindProvision {
			if _, ok := s.reserveVolume(ctx, w, r, m.Hypervisor, m); !ok {
				return
			}
		}
		rec = kvstate.NewJob(m, m.Hypervisor, m.SubmittedAt)
		rec.TraceID, _, _ = telemetry.IDs(ctx)
		if _, err := s.state.Jobs.Create(ctx, rec); err != nil && !errors.Is(err, kvstate.ErrExists) {
			s.failNATS(w, r, "record job", err)
			return
		}
		fallthrough
	case err == nil && rec.Status == kvstate.StatusPending:
		if err := s.queue(ctx, m); err != nil && !errors.Is(err, kvstate.ErrAlreadyQueued) {
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
		_, err := s.state.Hosts.Get(ctx, host)
		if err == nil {
			return host, true
		}
		if !errors.Is(err, kvstate.ErrHostNotFound) {
			s.failNATS(w, r, "read host registry", err)
			return "", false
		}
	}
	hosts, err := s.state.Hosts.List(ctx)
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
	rec, err := s.state.Jobs.FindByID(ctx, jobID)
	if !errors.Is(err, kvstate.ErrJobNotFound) {
		return rec, err
	}
	queued, err := s.state.Queue.Find(ctx, jobID)
	if err != nil {
		return kvstate.Job{}, err
	}
	rec, _, _ = kvstate.FromMessage(queued.Data, queued.Host, jobID, queued.Time)
	if _, err := s.state.Jobs.Create(ctx, rec); err != nil && !errors.Is(err, kvstate.ErrExists) {
		return kvstate.Job{}, err
	}
	rec, _, err = s.state.Jobs.Get(ctx, queued.Host, jobID)
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
	// Neither a record (ErrJobNotFound) nor a message (ErrQueuedJobNotFound).
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
	updated, _, err := s.state.Jobs.Update(ctx, rec.Hypervisor, jobID, func(j *kvstate.Job) error {
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
	_ = s.state.Queue.Drop(ctx, host, jobID)
}
