package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/mux"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// Errors of an upload's body.
var (
	errUploadTooLarge = errors.New("the upload is larger than the cap")
	errUploadDigest   = errors.New("the upload does not match " + rest.HeaderContentSHA256)
)

// contentRoute is the template of the upload route.
const contentRoute = "/api/v1/volumes/{hypervisor}/{volume_name}/content"

// isContentPath reports whether path is an upload's (the guard leaves its
// body, which is not JSON and may exceed the JSON cap, to the handler).
func isContentPath(path string) bool {
	rest, ok := strings.CutPrefix(path, "/api/v1/volumes/")
	return ok && strings.HasSuffix(rest, "/content") && strings.Count(rest, "/") == 2
}

// putContent streams the body into the host's content bucket, then queues
// a content job that has the host's worker write it into the volume. The
// body is capped (MaxContentBytes; a declared Content-Length over it is 413
// before anything is read, and a body without one is counted as it
// arrives); an interrupted body or one that does not match
// X-Content-SHA256 stores nothing and queues no job.
func (s *Server) putContent(w http.ResponseWriter, r *http.Request) {
	m, ok := s.contentJob(w, r)
	if !ok || !s.connected(w) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.NATSTimeout)
	defer cancel()
	host, ok := s.resolveHost(ctx, w, r, m.Hypervisor)
	if !ok || !allowHost(w, r, host) || !allowSubmission(w, r, m, messaging.ImageRef{}) {
		return
	}
	m.Hypervisor = host
	sub, ok := s.begin(ctx, w, r, m, func(prior, key string) { s.replayContent(ctx, w, r, m, prior, key) })
	if !ok {
		return
	}
	defer sub.end()
	bucket, err := s.state.Uploads.Bucket(ctx, host)
	if err != nil {
		s.failNATS(w, r, "open the content bucket", err)
		return
	}
	sub.onUndo(func(ctx context.Context) { s.removeContent(ctx, host, m.JobID) })
	if !s.storeBody(w, r, bucket, &m) {
		return
	}
	m.Normalize()
	if err := m.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, catInvalid, err.Error())
		return
	}
	ctx, cancel = context.WithTimeout(r.Context(), s.cfg.NATSTimeout)
	defer cancel()
	sub.enqueue(ctx, m)
}

// contentJob reads the upload's path, query and headers into its job
// (without the content's size and digest, known once the body is stored);
// it answers 400 or 413 itself.
func (s *Server) contentJob(w http.ResponseWriter, r *http.Request) (messaging.Job, bool) {
	vars := mux.Vars(r)
	m := messaging.Job{Kind: messaging.KindContent, JobID: uuid.NewString(), Hypervisor: vars["hypervisor"], VolumeName: vars["volume_name"],
		Caller: identity(r).Name, SubmittedAt: time.Now().UTC(), CorrelationID: r.URL.Query().Get("correlation_id")}
	m.Normalize()
	if err := messaging.ValidateVolumeName(m.VolumeName); err != nil {
		writeError(w, http.StatusBadRequest, catInvalid, err.Error())
		return m, false
	}
	if v := r.URL.Query().Get("volume_size_gb"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 || n > messaging.MaxVolumeSizeGB {
			writeError(w, http.StatusBadRequest, catInvalid, fmt.Sprintf("volume_size_gb: must be between 1 and %d (GiB), not %q", messaging.MaxVolumeSizeGB, v))
			return m, false
		}
		m.VolumeSizeGB = n
	}
	digest := strings.ToLower(r.Header.Get(rest.HeaderContentSHA256))
	if digest != "" && !messaging.ValidSHA256(digest) {
		writeError(w, http.StatusBadRequest, catInvalid, rest.HeaderContentSHA256+": must be a SHA-256 in hex (64 characters)")
		return m, false
	}
	if r.ContentLength > s.cfg.MaxContentBytes {
		writeError(w, http.StatusRequestEntityTooLarge, catInvalid, fmt.Sprintf("the upload is %d bytes, more than the %d allowed (PROVISIONER_CONTENT_MAX_BYTES)", r.ContentLength, s.cfg.MaxContentBytes))
		return m, false
	}
	// What the idempotency key is checked against: the declared body.
	m.Content = &messaging.Content{Size: r.ContentLength, SHA256: digest}
	if m.VolumeSizeGB > 0 && r.ContentLength > m.VolumeSizeBytes() {
		writeError(w, http.StatusBadRequest, catInvalid, fmt.Sprintf("volume_size_gb: %d GiB is smaller than the %d bytes of content", m.VolumeSizeGB, r.ContentLength))
		return m, false
	}
	return m, true
}

// storeBody puts the request's body into bucket as m's object, counting and
// hashing it, and fills in m.Content; it answers the request itself (413,
// 400) when the body is too large, ends early or does not match its
// declared digest, and then leaves nothing stored.
func (s *Server) storeBody(w http.ResponseWriter, r *http.Request, bucket kvstate.UploadBucket, m *messaging.Job) bool {
	// A large body takes longer than the server's read timeout.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(s.cfg.ContentReadTimeout))
	_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.ContentReadTimeout + time.Minute))
	body := &countingReader{r: r.Body, max: s.cfg.MaxContentBytes, sum: sha256.New()}
	object := messaging.ContentObject(m.JobID)
	// Not the request's context: a client that goes away cancels it, and
	// the Object Store then could not purge the chunks already stored. The
	// body's read error ends the upload instead.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.cfg.ContentReadTimeout)
	defer cancel()
	err := bucket.Put(ctx, object, body)
	got := hex.EncodeToString(body.sum.Sum(nil))
	declared := m.Content
	switch {
	case errors.Is(err, errUploadTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, catInvalid, fmt.Sprintf("the upload is larger than the %d bytes allowed (PROVISIONER_CONTENT_MAX_BYTES); nothing was stored", s.cfg.MaxContentBytes))
		return false
	case err != nil && body.err != nil:
		writeError(w, http.StatusBadRequest, catInvalid, "the upload ended early ("+body.err.Error()+"); nothing was stored")
		return false
	case err != nil:
		s.failNATS(w, r, "store the upload", err)
		return false
	case r.ContentLength >= 0 && body.n != r.ContentLength:
		writeError(w, http.StatusBadRequest, catInvalid, fmt.Sprintf("the upload has %d bytes, not the %d of its Content-Length; nothing was stored", body.n, r.ContentLength))
		return false
	case declared.SHA256 != "" && declared.SHA256 != got:
		writeError(w, http.StatusBadRequest, catInvalid, fmt.Sprintf("%s: %v (its SHA-256 is %s, the header says %s); nothing was stored", rest.HeaderContentSHA256, errUploadDigest, got, declared.SHA256))
		return false
	}
	m.Content = &messaging.Content{Object: object, Size: body.n, SHA256: got}
	return true
}

// countingReader counts and hashes what it reads and fails past max.
type countingReader struct {
	r   io.Reader
	max int64
	n   int64
	sum hash.Hash
	// err is the body's own read error (not the cap).
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n > c.max {
		return 0, errUploadTooLarge
	}
	c.sum.Write(p[:n])
	if err != nil && !errors.Is(err, io.EOF) {
		c.err = err
	}
	return n, err
}

// removeContent deletes a job's upload from host's content bucket, if it
// is there.
func (s *Server) removeContent(ctx context.Context, host, jobID string) {
	if err := s.state.Uploads.Remove(ctx, host, messaging.ContentObject(jobID)); err != nil {
		s.log.WithError(err).WithField("job_id", jobID).Warn("remove an upload from the content bucket")
	}
}

// settleContent removes an ended content job's upload.
func (s *Server) settleContent(ctx context.Context, rec kvstate.Job) {
	if rec.Kind == messaging.KindContent && rec.Status.Terminal() {
		s.removeContent(ctx, rec.Hypervisor, rec.JobID)
	}
}

// replayContent answers an upload retried with an Idempotency-Key whose
// job was accepted: 202 with that job, without storing the body again. An
// earlier upload that never got a record (cut short) gives its key up, so
// the next retry uploads anew.
func (s *Server) replayContent(ctx context.Context, w http.ResponseWriter, r *http.Request, m messaging.Job, prior, key string) {
	if _, _, err := s.state.Jobs.Get(ctx, m.Hypervisor, prior); err != nil {
		if errors.Is(err, kvstate.ErrJobNotFound) {
			s.forgetIdempotencyKey(ctx, r, key)
			writeError(w, http.StatusServiceUnavailable, catUnavailable, "the earlier upload with this Idempotency-Key did not finish; send it again")
			return
		}
		s.failNATS(w, r, "read job", err)
		return
	}
	w.Header().Set("Idempotent-Replayed", "true")
	w.Header().Set("Location", "/api/v1/jobs/"+prior)
	writeJSON(w, http.StatusAccepted, rest.Accepted{JobID: prior})
}
