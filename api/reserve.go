package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// HeaderIdempotencyKey makes a submission safe to retry: the same key (per
// caller) with the same body returns the same job.
const HeaderIdempotencyKey = rest.HeaderIdempotencyKey

// reservationTTL bounds how long a volume stays reserved for a job that
// never starts; a job that ended frees it at once.
const reservationTTL = 24 * time.Hour

// idempotencyRecord is stored under a hash of the caller and the key.
type idempotencyRecord struct {
	JobID       string    `json:"job_id"`
	RequestHash string    `json:"request_hash"`
	CreatedAt   time.Time `json:"created_at"`
}

// requestHash identifies what a submission asks for.
func requestHash(m messaging.Job) string {
	data, _ := json.Marshal(struct {
		Kind, Hypervisor, ImageURL, ImageType, VolumeName, CorrelationID string
		VolumeSizeGB                                                     int64
		Verify                                                           string               `json:",omitempty"`
		CloudInit                                                        *messaging.CloudInit `json:",omitempty"`
		Content                                                          *messaging.Content   `json:",omitempty"`
	}{m.Kind, m.Hypervisor, m.ImageURL, m.ImageType, m.VolumeName, m.CorrelationID, m.VolumeSizeGB, m.Verify, m.CloudInit, m.Content})
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func validIdempotencyKey(k string) bool {
	if len(k) > 255 {
		return false
	}
	for _, c := range k {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// idempotent records key for m's job. prior is the job of the same request
// accepted earlier under key ("" if none: the key is now m's); ok is false
// when it answered with an error. release forgets the key again.
func (s *Server) idempotent(ctx context.Context, w http.ResponseWriter, r *http.Request, key string, m messaging.Job) (prior string, release func(context.Context), ok bool) {
	if !validIdempotencyKey(key) {
		writeError(w, http.StatusBadRequest, catInvalid, "Idempotency-Key must be 1 to 255 printable ASCII characters")
		return "", nil, false
	}
	sum := sha256.Sum256([]byte(identity(r).Name + "\n" + key))
	kvKey := hex.EncodeToString(sum[:])
	want := idempotencyRecord{JobID: m.JobID, RequestHash: requestHash(m), CreatedAt: time.Now().UTC()}
	data, _ := json.Marshal(want)
	rev, err := s.idem.Create(ctx, kvKey, data)
	if err == nil {
		return "", func(ctx context.Context) { _ = s.idem.Delete(ctx, kvKey, jetstream.LastRevision(rev)) }, true
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		s.failNATS(w, r, "record idempotency key", err)
		return "", nil, false
	}
	e, err := s.idem.Get(ctx, kvKey)
	if err != nil {
		s.failNATS(w, r, "read idempotency key", err)
		return "", nil, false
	}
	var got idempotencyRecord
	if err := json.Unmarshal(e.Value(), &got); err != nil {
		s.failNATS(w, r, "read idempotency key", err)
		return "", nil, false
	}
	if got.RequestHash != want.RequestHash {
		writeError(w, http.StatusUnprocessableEntity, catInvalid,
			fmt.Sprintf("Idempotency-Key %q was already used for a different request (job %s)", key, got.JobID))
		return "", nil, false
	}
	return got.JobID, nil, true
}

// reserveVolume takes the volume's lease for m's job, so two jobs never
// write one volume: a pending or running job on the same volume makes it a
// 409 naming that job.
func (s *Server) reserveVolume(ctx context.Context, w http.ResponseWriter, r *http.Request, host string, m messaging.Job) (func(context.Context), bool) {
	leases := kvstate.Leases{KV: s.volumes, Active: kvstate.JobActive(s.jobs, host)}
	held, err := leases.Acquire(ctx, host, m.VolumeName, m.JobID, reservationTTL)
	var busy *kvstate.LeaseHeldError
	if errors.As(err, &busy) {
		status := "active"
		if j, _, err := s.jobs.Get(ctx, host, busy.JobID); err == nil {
			status = string(j.Status)
		}
		writeError(w, http.StatusConflict, catConflict,
			fmt.Sprintf("volume %q on hypervisor %q already has job %s (%s); wait for it or cancel it", m.VolumeName, host, busy.JobID, status))
		return nil, false
	}
	if err != nil {
		s.failNATS(w, r, "reserve volume", err)
		return nil, false
	}
	return func(ctx context.Context) { _ = held.Release(ctx) }, true
}

// releaseVolume frees the volume's lease if jobID holds it (a pending job
// that was cancelled).
func (s *Server) releaseVolume(ctx context.Context, host, volume, jobID string) {
	if volume == "" {
		return
	}
	key := messaging.VolumeKey(host, volume)
	e, err := s.volumes.Get(ctx, key)
	if err != nil {
		return
	}
	var l kvstate.Lease
	if json.Unmarshal(e.Value(), &l) == nil && l.JobID == jobID {
		_ = s.volumes.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
	}
}

// forgetIdempotencyKey deletes the caller's key, so its next use starts a
// new submission.
func (s *Server) forgetIdempotencyKey(ctx context.Context, r *http.Request, key string) {
	sum := sha256.Sum256([]byte(identity(r).Name + "\n" + key))
	_ = s.idem.Delete(ctx, hex.EncodeToString(sum[:]))
}
