// Package rest holds the REST API's request and response bodies: the
// server (api/) writes them and the client (client/) reads them, so the two
// cannot drift. It imports no server code and no cgo: job records and
// progress events are the NATS contract's own types (kvstate, messaging).
package rest

import (
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// Paths of the API.
const (
	BasePath = "/api/v1"
	// HeaderIdempotencyKey makes a submission safe to retry.
	HeaderIdempotencyKey = "Idempotency-Key"
	// HeaderIdempotentReplayed is "true" on the answer to a retried submission.
	HeaderIdempotentReplayed = "Idempotent-Replayed"
	// HeaderToken carries an API token.
	HeaderToken = "X-API-Token"
	// HeaderRequestID is echoed or set on every answer.
	HeaderRequestID = "X-Request-ID"
	// HeaderContentSHA256 carries an upload's SHA-256 (lower-case hex);
	// a body that does not match it is refused and nothing is stored.
	HeaderContentSHA256 = "X-Content-SHA256"
)

// Job is a job record: the body of GET /api/v1/jobs/{job_id}.
type Job = kvstate.Job

// Status is a job's state (pending, running, completed, failed, cancelled).
type Status = kvstate.Status

// Job states.
const (
	StatusPending   = kvstate.StatusPending
	StatusRunning   = kvstate.StatusRunning
	StatusCompleted = kvstate.StatusCompleted
	StatusFailed    = kvstate.StatusFailed
	StatusCancelled = kvstate.StatusCancelled
)

// Progress is how far a job has come.
type Progress = kvstate.Progress

// Event is one progress event of GET /api/v1/jobs/{job_id}/events.
type Event = messaging.Event

// JobRequest is the body of POST /api/v1/jobs.
type JobRequest struct {
	ImageURL      string `json:"image_url"`
	VolumeName    string `json:"volume_name"`
	VolumeSizeGB  *int64 `json:"volume_size_gb"`
	ImageType     string `json:"image_type,omitempty"`
	CorrelationID string `json:"correlation_id,omitempty"`
	Hypervisor    string `json:"hypervisor,omitempty"`
	Verify        string `json:"verify,omitempty"`
	// CloudInit asks for a NoCloud seed volume too; without ImageURL (and
	// VolumeSizeGB) only the seed is written.
	CloudInit *CloudInit `json:"cloud_init,omitempty"`
}

// CloudInit is a job's cloud-init data (JobRequest.CloudInit).
type CloudInit = messaging.CloudInit

// FetchRequest is the body of POST /api/v1/cache/fetch.
type FetchRequest struct {
	ImageURL      string `json:"image_url"`
	CorrelationID string `json:"correlation_id,omitempty"`
	Hypervisor    string `json:"hypervisor,omitempty"`
}

// ContentPath is the path of PUT …/content: upload a volume's content.
func ContentPath(hypervisor, volume string) string {
	return BasePath + "/volumes/" + hypervisor + "/" + volume + "/content"
}

// Accepted answers a submission (202).
type Accepted struct {
	JobID string `json:"job_id"`
}

// Cancelled answers POST /api/v1/jobs/{job_id}/cancel.
type Cancelled struct {
	Status string `json:"status"`
	JobID  string `json:"job_id"`
}

// CachedImage is one image in GET /api/v1/cache/images.
type CachedImage struct {
	Path     string        `json:"path"`
	Size     int64         `json:"size"`
	Checksum string        `json:"checksum"`
	Golden   *CachedGolden `json:"golden,omitempty"`
}

// CachedGolden is an image's golden: its disk as a read-only raw file from
// which volumes are cloned.
type CachedGolden struct {
	Path           string    `json:"path"`
	Size           int64     `json:"size"`
	AllocatedBytes int64     `json:"allocated_bytes"`
	Digest         string    `json:"digest"`
	Immutable      bool      `json:"immutable"`
	CreatedAt      time.Time `json:"created_at"`
	VerifiedAt     time.Time `json:"verified_at"`
}

// CacheList is the body of GET /api/v1/cache/images; Count is the total.
type CacheList struct {
	Images []CachedImage `json:"images"`
	Count  int           `json:"count"`
	Offset int           `json:"offset"`
	Limit  int           `json:"limit"`
}

// CacheDeleted answers DELETE /api/v1/cache/images/{checksum}.
type CacheDeleted struct {
	Status     string `json:"status"`
	Checksum   string `json:"checksum"`
	Hypervisor string `json:"hypervisor"`
}

// Host is one hypervisor in GET /api/v1/hosts.
type Host struct {
	Name       string    `json:"host"`
	Alive      bool      `json:"alive"`
	LastSeen   time.Time `json:"last_seen"`
	StartedAt  time.Time `json:"started_at"`
	Version    string    `json:"version"`
	ActiveJobs int       `json:"active_jobs"`
}

// HostList is the body of GET /api/v1/hosts, sorted by name.
type HostList struct {
	Hosts []Host `json:"hosts"`
}

// Health is the body of /health, /healthz and /livez.
type Health struct {
	Status    string    `json:"status"`
	Timestamp time.Time `json:"timestamp"`
	Version   string    `json:"version"`
	Uptime    string    `json:"uptime"`
	// Checks says why the status is degraded.
	Checks map[string]string `json:"checks,omitempty"`
}

// Error is the API's error format, on every answer that is not a success.
type Error struct {
	// Error is the category ("invalid request", "job not found", …).
	Error string `json:"error"`
	// Message says what is wrong.
	Message string `json:"message"`
	// Code is the HTTP status.
	Code int `json:"code"`
}

// EventOf is the progress event of a job record, the same payload workers
// publish on the job's NATS event subject and the API's event stream sends.
func EventOf(j Job) Event {
	ev := Event{JobID: j.JobID, Host: j.Hypervisor, Status: string(j.Status), Attempt: j.Attempt, Error: j.Error, Time: j.UpdatedAt}
	if j.Progress != nil {
		ev.Stage, ev.Percent, ev.Bytes, ev.Total, ev.ETASec = j.Progress.Stage, j.Progress.Percent, j.Progress.BytesProcessed, j.Progress.BytesTotal, j.Progress.ETASec
	}
	return ev
}

// JobList is the body of GET /api/v1/jobs: newest first; Count is the
// number of jobs that match, of which this page shows Jobs.
type JobList struct {
	Jobs   []Job `json:"jobs"`
	Count  int   `json:"count"`
	Offset int   `json:"offset"`
	Limit  int   `json:"limit"`
}
