package kvstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// Lease says which job may write a volume, until when.
type Lease struct {
	JobID   string    `json:"job_id"`
	Expires time.Time `json:"expires"`
	// Holder names one acquisition (a later attempt of the same job takes
	// the lease over with another), so a renewal can tell its own write,
	// whose answer was lost, from a take-over.
	Holder string `json:"holder,omitempty"`
}

// ErrLeaseHeld: another job holds the volume's lease.
var ErrLeaseHeld = errors.New("volume is leased by another job")

// Leases are volume leases in the provisioner_volumes bucket: two jobs never
// write one volume at once. The API reserves a volume's lease for a job when
// it accepts it; the job's worker takes the lease over and renews it.
type Leases struct {
	KV jetstream.KeyValue
	// Active, when set, says whether a job still needs its lease; the lease
	// of a job that ended is taken over even before it expires.
	Active func(ctx context.Context, jobID string) (bool, error)
}

// LeaseHeldError names the job holding a volume's lease.
type LeaseHeldError struct {
	JobID  string
	Volume string
}

func (e *LeaseHeldError) Error() string {
	return fmt.Sprintf("%v: job %s is writing volume %q", ErrLeaseHeld, e.JobID, e.Volume)
}

// Is makes errors.Is(err, ErrLeaseHeld) true.
func (e *LeaseHeldError) Is(target error) bool { return target == ErrLeaseHeld }

// HeldLease is a lease this job holds.
type HeldLease struct {
	leases Leases
	key    string
	jobID  string
	holder string
	rev    uint64
}

// Acquire takes the lease of host's volume for jobID for ttl. A lease of the
// same job (an earlier attempt) or an expired one is taken over.
func (l Leases) Acquire(ctx context.Context, host, volume, jobID string, ttl time.Duration) (*HeldLease, error) {
	key := messaging.VolumeKey(host, volume)
	holder := uuid.NewString()
	data, _ := json.Marshal(Lease{JobID: jobID, Expires: time.Now().Add(ttl).UTC(), Holder: holder})
	for range 10 {
		e, err := l.KV.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			rev, err := l.KV.Create(ctx, key, data)
			if isRevisionMismatch(err) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("take lease of volume %s: %w", volume, err)
			}
			return &HeldLease{leases: l, key: key, jobID: jobID, holder: holder, rev: rev}, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read lease of volume %s: %w", volume, err)
		}
		var cur Lease
		if err := json.Unmarshal(e.Value(), &cur); err == nil && cur.JobID != jobID && time.Now().Before(cur.Expires) {
			active := true
			if l.Active != nil {
				if active, err = l.Active(ctx, cur.JobID); err != nil {
					return nil, fmt.Errorf("check the job holding volume %s: %w", volume, err)
				}
			}
			if active {
				return nil, &LeaseHeldError{JobID: cur.JobID, Volume: volume}
			}
		}
		rev, err := l.KV.Update(ctx, key, data, e.Revision())
		if isRevisionMismatch(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("take lease of volume %s: %w", volume, err)
		}
		return &HeldLease{leases: l, key: key, jobID: jobID, holder: holder, rev: rev}, nil
	}
	return nil, fmt.Errorf("take lease of volume %s: too many concurrent changes", volume)
}

// ErrLeaseLost: the lease was taken over (by another attempt, or after it
// expired); its former holder must stop writing the volume.
var ErrLeaseLost = errors.New("volume lease was taken over")

// Renew extends the lease by ttl from now; ErrLeaseLost if it is no longer
// this holder's.
func (h *HeldLease) Renew(ctx context.Context, ttl time.Duration) error {
	data, _ := json.Marshal(Lease{JobID: h.jobID, Expires: time.Now().Add(ttl).UTC(), Holder: h.holder})
	rev, err := h.leases.KV.Update(ctx, h.key, data, h.rev)
	if isRevisionMismatch(err) {
		// A renewal whose answer was lost (an election) landed, and its
		// retry named the old revision: the lease is still this holder's.
		e, gerr := h.leases.KV.Get(ctx, h.key)
		if gerr != nil {
			return fmt.Errorf("renew lease %s: read it after a conflict: %w", h.key, gerr)
		}
		var cur Lease
		if json.Unmarshal(e.Value(), &cur) != nil || cur.JobID != h.jobID || cur.Holder != h.holder {
			return fmt.Errorf("renew lease %s: %w", h.key, ErrLeaseLost)
		}
		rev, err = h.leases.KV.Update(ctx, h.key, data, e.Revision())
		if isRevisionMismatch(err) {
			return fmt.Errorf("renew lease %s: %w", h.key, ErrLeaseLost)
		}
	}
	if err != nil {
		return fmt.Errorf("renew lease %s: %w", h.key, err)
	}
	h.rev = rev
	return nil
}

// Release gives the lease up, if it is still ours.
func (h *HeldLease) Release(ctx context.Context) error {
	err := h.leases.KV.Delete(ctx, h.key, jetstream.LastRevision(h.rev))
	if err != nil && !isRevisionMismatch(err) {
		return fmt.Errorf("release lease %s: %w", h.key, err)
	}
	return nil
}

// JobActive is a Leases.Active that reads host's job records: a job is
// active while it is pending or running.
func JobActive(jobs Jobs, host string) func(ctx context.Context, jobID string) (bool, error) {
	return func(ctx context.Context, jobID string) (bool, error) {
		j, _, err := jobs.Get(ctx, host, jobID)
		if errors.Is(err, ErrJobNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		return !j.Status.Terminal(), nil
	}
}
