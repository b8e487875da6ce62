package kvstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// Status is a job's state.
type Status string

// Job states: pending → running → completed | failed | cancelled. A pending
// job can also be cancelled or failed before it runs.
const (
	StatusPending   Status = "pending"
	StatusRunning   Status = "running"
	StatusCompleted Status = "completed"
	StatusFailed    Status = "failed"
	StatusCancelled Status = "cancelled"
)

// Terminal reports whether no further transition is allowed.
func (s Status) Terminal() bool {
	return s == StatusCompleted || s == StatusFailed || s == StatusCancelled
}

// CanMove reports whether the state machine allows from → to. Running → running
// is allowed: a redelivered job starts a new attempt.
func CanMove(from, to Status) bool {
	switch from {
	case StatusPending:
		return to == StatusRunning || to == StatusFailed || to == StatusCancelled
	case StatusRunning:
		return to == StatusRunning || to.Terminal()
	}
	return false
}

// Progress is how far a job has come.
type Progress struct {
	Stage          string `json:"stage"`
	Percent        int    `json:"percent"`
	BytesProcessed int64  `json:"bytes_processed"`
	BytesTotal     int64  `json:"bytes_total"`
	ETASec         *int64 `json:"eta_sec,omitempty"`
}

// Job is a job record. Its JSON is what GET /api/v1/jobs/{job_id} returns.
type Job struct {
	JobID         string    `json:"job_id"`
	Status        Status    `json:"status"`
	Progress      *Progress `json:"progress,omitempty"`
	CorrelationID string    `json:"correlation_id,omitempty"`
	CacheHit      *bool     `json:"cache_hit,omitempty"`
	ImagePath     string    `json:"image_path,omitempty"`
	Error         string    `json:"error,omitempty"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`

	// Fields beyond the API reference's.
	Kind         string `json:"kind"`
	Hypervisor   string `json:"hypervisor"`
	ImageURL     string `json:"image_url"`
	ImageType    string `json:"image_type,omitempty"`
	VolumeName   string `json:"volume_name,omitempty"`
	VolumeSizeGB int64  `json:"volume_size_gb,omitempty"`
	Verify       string `json:"verify,omitempty"`
	// Cloned is true when the volume was made as a clone of the image's
	// golden rather than converted into.
	Cloned     bool       `json:"cloned,omitempty"`
	VolumePath string     `json:"volume_path,omitempty"`
	Checksum   string     `json:"checksum,omitempty"`
	Attempt    int        `json:"attempt"`
	Caller     string     `json:"caller,omitempty"`
	TraceID    string     `json:"trace_id,omitempty"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	// VolumeCreated is set before the job creates its volume, so a later
	// attempt knows the volume is its own to reuse or roll back.
	VolumeCreated bool `json:"volume_created,omitempty"`
	// SeedVolume is the job's cloud-init seed volume (a job with
	// cloud_init), SeedVolumePath where it was written, and SeedCreated
	// is VolumeCreated for it. The documents themselves are not recorded.
	SeedVolume     string `json:"seed_volume,omitempty"`
	SeedVolumePath string `json:"seed_volume_path,omitempty"`
	SeedCreated    bool   `json:"seed_volume_created,omitempty"`
	// Content names a content job's upload (object, size, SHA-256).
	Content *messaging.Content `json:"content,omitempty"`
	// HeartbeatAt is when the running attempt last confirmed it is alive
	// (its worker's clock). A later delivery does not start while the
	// heartbeat is fresh (AttemptAlive).
	HeartbeatAt *time.Time `json:"heartbeat_at,omitempty"`
	// AttemptID names the running attempt (one per delivery a worker
	// starts): delivery counts repeat when a consumer is recreated, this
	// does not. Only the attempt it names writes the record (UpdateAttempt).
	AttemptID string `json:"attempt_id,omitempty"`
}

// AttemptAlive reports whether the record is running under an attempt
// whose heartbeat is younger than within, as seen at now.
func (j Job) AttemptAlive(now time.Time, within time.Duration) bool {
	return j.Status == StatusRunning && j.HeartbeatAt != nil && now.Sub(*j.HeartbeatAt) < within
}

// NewJob is the pending record of a job message.
func NewJob(m messaging.Job, host string, now time.Time) Job {
	now = now.UTC()
	created := m.SubmittedAt
	if created.IsZero() {
		created = now
	}
	return Job{
		JobID: m.JobID, Status: StatusPending, CorrelationID: m.CorrelationID,
		CreatedAt: created.UTC(), UpdatedAt: now,
		Kind: m.Kind, Hypervisor: host, ImageURL: m.ImageURL, ImageType: m.ImageType,
		VolumeName: m.VolumeName, VolumeSizeGB: m.VolumeSizeGB, Verify: m.Verify, Caller: m.Caller,
		SeedVolume: m.SeedVolume(), Content: m.Content,
	}
}

// Errors returned by the job store (the not-found errors are in errors.go).
var (
	// ErrJobChanged: the job record was written since the revision the
	// caller named.
	ErrJobChanged = errors.New("job record was changed since")
	// ErrExists: a record already exists under that key.
	ErrExists = errors.New("job already exists")
	// ErrSuperseded: the record belongs to another attempt of the job now
	// (a later delivery took over); the attempt that got this error must
	// stop writing.
	ErrSuperseded = errors.New("another attempt of the job owns its record")
)

// TransitionError is a change the state machine does not allow.
type TransitionError struct {
	From, To Status
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("cannot move job from %q to %q", e.From, e.To)
}

// Jobs stores job records in the provisioner_jobs bucket.
type Jobs struct {
	KV jetstream.KeyValue
	// records is the bucket's stream, for FindByID (bound by Open).
	records jetstream.Stream
}

// Create stores a new record; ErrExists if the key is taken.
func (s Jobs) Create(ctx context.Context, j Job) (uint64, error) {
	data, err := json.Marshal(j)
	if err != nil {
		return 0, err
	}
	rev, err := s.KV.Create(ctx, messaging.JobKey(j.Hypervisor, j.JobID), data)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, ErrExists
	}
	if err != nil {
		return 0, fmt.Errorf("create job record %s: %w", j.JobID, err)
	}
	return rev, nil
}

// Get returns the record of host's job and its revision; ErrJobNotFound
// if there is none.
func (s Jobs) Get(ctx context.Context, host, jobID string) (Job, uint64, error) {
	e, err := s.KV.Get(ctx, messaging.JobKey(host, jobID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Job{}, 0, ErrJobNotFound
	}
	if err != nil {
		return Job{}, 0, fmt.Errorf("read job record %s: %w", jobID, err)
	}
	j, err := DecodeJob(e.Value())
	return j, e.Revision(), err
}

// DecodeJob parses a stored job record.
func DecodeJob(data []byte) (Job, error) {
	var j Job
	if err := json.Unmarshal(data, &j); err != nil {
		return j, fmt.Errorf("decode job record: %w", err)
	}
	return j, nil
}

// Update applies fn to the current record and stores the result with a
// compare-and-set, retrying on concurrent changes. fn returns an error to
// abandon the update. A status change the state machine forbids is a
// *TransitionError and nothing is written; so is any change of a record that
// has ended (a terminal record is written once).
func (s Jobs) Update(ctx context.Context, host, jobID string, fn func(*Job) error) (Job, uint64, error) {
	return s.update(ctx, host, jobID, nil, fn)
}

// UpdateFrom is Update starting from a record the caller read or wrote at
// revision rev: the first compare-and-set names rev without reading the
// record again, and only a conflict (someone wrote it since) reads it.
func (s Jobs) UpdateFrom(ctx context.Context, cur Job, rev uint64, fn func(*Job) error) (Job, uint64, error) {
	return s.update(ctx, cur.Hypervisor, cur.JobID, &known{cur, rev}, fn)
}

// known is a record and its revision, as last read or written.
type known struct {
	rec Job
	rev uint64
}

func (s Jobs) update(ctx context.Context, host, jobID string, from *known, fn func(*Job) error) (Job, uint64, error) {
	for attempt := 0; ; attempt++ {
		var cur Job
		var rev uint64
		if from != nil && attempt == 0 {
			cur, rev = from.rec, from.rev
		} else {
			var err error
			if cur, rev, err = s.Get(ctx, host, jobID); err != nil {
				return cur, 0, err
			}
		}
		next, err := applyChange(cur, fn)
		if err != nil {
			return cur, rev, err
		}
		data, err := json.Marshal(next)
		if err != nil {
			return cur, rev, err
		}
		newRev, err := s.KV.Update(ctx, messaging.JobKey(host, jobID), data, rev)
		if err == nil {
			return next, newRev, nil
		}
		if !isRevisionMismatch(err) || attempt >= 50 {
			return cur, rev, fmt.Errorf("update job record %s: %w", jobID, err)
		}
	}
}

// applyChange is cur changed by fn, if the state machine allows it.
func applyChange(cur Job, fn func(*Job) error) (Job, error) {
	next := cur
	if cur.Progress != nil {
		p := *cur.Progress
		next.Progress = &p
	}
	if err := fn(&next); err != nil {
		return cur, err
	}
	if cur.Status.Terminal() || next.Status != cur.Status && !CanMove(cur.Status, next.Status) {
		return cur, &TransitionError{From: cur.Status, To: next.Status}
	}
	next.UpdatedAt = time.Now().UTC()
	return next, nil
}

// UpdateAttempt is Update for the running attempt attemptID: fn runs only
// while the record is running under that attempt. A record that ended
// is a *TransitionError; one that another delivery took over is
// ErrSuperseded. Either way an attempt that lost its record never writes it
// again.
func (s Jobs) UpdateAttempt(ctx context.Context, host, jobID, attemptID string, fn func(*Job) error) (Job, uint64, error) {
	return s.Update(ctx, host, jobID, attemptChange(attemptID, fn))
}

// attemptChange is fn guarded by the running attempt's ownership of the record.
func attemptChange(attemptID string, fn func(*Job) error) func(*Job) error {
	return func(j *Job) error {
		if j.Status.Terminal() {
			return &TransitionError{From: j.Status, To: j.Status}
		}
		if j.Status != StatusRunning || j.AttemptID != attemptID {
			return fmt.Errorf("%w (now attempt %d, %s)", ErrSuperseded, j.Attempt, j.Status)
		}
		return fn(j)
	}
}

// Attempt is the record of one running attempt as that attempt last wrote
// it. Its updates are compare-and-sets on the revision it wrote, so an
// attempt that is the record's only writer (the usual case) writes without
// reading first; a change by anyone else (a cancel) makes the write read the
// record and apply the change again. Safe for concurrent use: updates run
// one at a time.
type Attempt struct {
	jobs Jobs
	id   string // the AttemptID
	mu   sync.Mutex
	last known
}

// Attempt is the handle of the attempt that rec (at revision rev) is
// running under.
func (s Jobs) Attempt(rec Job, rev uint64) *Attempt {
	return &Attempt{jobs: s, id: rec.AttemptID, last: known{rec, rev}}
}

// Update is UpdateAttempt for this attempt.
func (a *Attempt) Update(ctx context.Context, fn func(*Job) error) (Job, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	next, rev, err := a.jobs.UpdateFrom(ctx, a.last.rec, a.last.rev, attemptChange(a.id, fn))
	if err == nil {
		a.last = known{next, rev}
	} else if rev > a.last.rev {
		// The record was read on a conflict: start from it next time.
		a.last = known{next, rev}
	}
	return next, err
}

// Record is the record as this attempt last wrote or read it.
func (a *Attempt) Record() Job {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last.rec
}

// IsRevisionMismatch reports a compare-and-set conflict of a KV write or
// delete (the key changed since the revision it named).
func IsRevisionMismatch(err error) bool { return isRevisionMismatch(err) }

// isRevisionMismatch reports a compare-and-set conflict: the key changed
// (or exists) since the revision the write named. Replicated streams report
// it with another error code (10164) than single-replica ones (10071);
// nats.go maps both to ErrKeyRevisionMismatch (Update, Delete) and
// ErrKeyExists (Create).
func isRevisionMismatch(err error) bool {
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// Watch delivers the changes of one job record until ctx ends or the
// watch is stopped.
func (s Jobs) Watch(ctx context.Context, host, jobID string) (*Watch[Job], error) {
	w, err := s.KV.Watch(ctx, messaging.JobKey(host, jobID))
	if err != nil {
		return nil, fmt.Errorf("watch job record %s: %w", jobID, err)
	}
	return watch[Job](w), nil
}

// WatchAll delivers the changes of every job record, the current ones
// first, until ctx ends or the watch is stopped.
func (s Jobs) WatchAll(ctx context.Context) (*Watch[Job], error) {
	w, err := s.KV.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("watch the job records: %w", err)
	}
	return watch[Job](w), nil
}

// TakeBack deletes the record of a job that was never queued, but only as
// it was at revision rev (as Create wrote it): ErrJobChanged when it was
// written since (a worker started the job, so it was queued after all) and
// nothing is deleted.
func (s Jobs) TakeBack(ctx context.Context, host, jobID string, rev uint64) error {
	err := s.KV.Delete(ctx, messaging.JobKey(host, jobID), jetstream.LastRevision(rev))
	if isRevisionMismatch(err) {
		return fmt.Errorf("take back job record %s: %w", jobID, ErrJobChanged)
	}
	if err != nil {
		return fmt.Errorf("take back job record %s: %w", jobID, err)
	}
	return nil
}

// FindByID returns the record of a job on whichever host it is, reading
// the bucket's stream by subject (one direct get): ErrJobNotFound when
// there is none, or it was deleted. It needs a Jobs bound by Open.
func (s Jobs) FindByID(ctx context.Context, jobID string) (Job, error) {
	if s.records == nil {
		return Job{}, errors.New("find job record: the job bucket's stream is not bound (kvstate.Open binds it)")
	}
	raw, err := s.records.GetLastMsgForSubject(ctx, "$KV."+messaging.JobBucket+".*."+jobID)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Job{}, ErrJobNotFound
	}
	if err != nil {
		return Job{}, fmt.Errorf("find job record %s: %w", jobID, err)
	}
	if op := raw.Header.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
		return Job{}, ErrJobNotFound
	}
	return DecodeJob(raw.Data)
}
