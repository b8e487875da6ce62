package kvstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// ReservationTTL bounds how long a volume stays reserved for a job that
// never starts; a job that ended frees it at once.
const ReservationTTL = 24 * time.Hour

// Reservations are the volume leases the API takes for the jobs it
// accepts (in the provisioner_volumes bucket, as Leases): from a job's
// submission until its worker takes the lease over, no other job is
// accepted for the volume. A lease held by a job that ended is taken over
// at once.
type Reservations struct {
	KV   jetstream.KeyValue
	Jobs Jobs
}

// Reserve takes the lease of host's volume for jobID for ReservationTTL;
// a *LeaseHeldError (matching ErrLeaseHeld) names the pending or running
// job that holds it.
func (r Reservations) Reserve(ctx context.Context, host, volume, jobID string) (*HeldLease, error) {
	return Leases{KV: r.KV, Active: JobActive(r.Jobs, host)}.Acquire(ctx, host, volume, jobID, ReservationTTL)
}

// Cancel frees host's volume if jobID holds its lease (a pending job that
// was cancelled); a lease another job holds, or none, is left alone.
func (r Reservations) Cancel(ctx context.Context, host, volume, jobID string) error {
	key := messaging.VolumeKey(host, volume)
	e, err := r.KV.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read lease of volume %s: %w", volume, err)
	}
	var l Lease
	if json.Unmarshal(e.Value(), &l) != nil || l.JobID != jobID {
		return nil
	}
	err = r.KV.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
	if err != nil && !isRevisionMismatch(err) {
		return fmt.Errorf("free volume %s: %w", volume, err)
	}
	return nil
}
