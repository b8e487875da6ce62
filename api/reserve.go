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

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// HeaderIdempotencyKey makes a submission safe to retry: the same key (per
// caller) with the same body returns the same job.
const HeaderIdempotencyKey = rest.HeaderIdempotencyKey

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

// idempotencyRecord is what an Idempotency-Key records for m's job.
func idempotencyRecord(m messaging.Job) kvstate.IdempotencyRecord {
	return kvstate.IdempotencyRecord{JobID: m.JobID, RequestHash: requestHash(m), CreatedAt: time.Now().UTC()}
}

// keyReused is the 422 message of a key used before for another request.
func keyReused(key, jobID string) string {
	return fmt.Sprintf("Idempotency-Key %q was already used for a different request (job %s)", key, jobID)
}

// reserveVolume takes the volume's lease for m's job, so two jobs never
// write one volume: a pending or running job on the same volume makes it a
// 409 naming that job.
func (s *Server) reserveVolume(ctx context.Context, w http.ResponseWriter, r *http.Request, host string, m messaging.Job) (func(context.Context), bool) {
	held, err := s.state.Reservations.Reserve(ctx, host, m.VolumeName, m.JobID)
	var busy *kvstate.LeaseHeldError
	if errors.As(err, &busy) {
		status := "active"
		if j, _, err := s.state.Jobs.Get(ctx, host, busy.JobID); err == nil {
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
	_ = s.state.Reservations.Cancel(ctx, host, volume, jobID)
}

// forgetIdempotencyKey deletes the caller's key, so its next use starts a
// new submission.
func (s *Server) forgetIdempotencyKey(ctx context.Context, r *http.Request, key string) {
	_ = s.state.Idempotency.Forget(ctx, identity(r).Name, key)
}
