package kvstate_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
)

func TestLeasesAcquireRefusesOtherJob(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	leases := kvstate.Leases{KV: b.Volumes}

	before := time.Now()
	held, err := leases.Acquire(ctx, "hv-01", "vm-1", jobID1, time.Minute)
	require.NoError(t, err)
	require.NotNil(t, held)

	e, err := b.Volumes.Get(ctx, "hv-01.vm-1")
	require.NoError(t, err)
	var l kvstate.Lease
	require.NoError(t, json.Unmarshal(e.Value(), &l))
	require.Equal(t, jobID1, l.JobID)
	require.WithinRange(t, l.Expires, before.Add(time.Minute), time.Now().Add(time.Minute))

	other, err := leases.Acquire(ctx, "hv-01", "vm-1", jobID2, time.Minute)
	require.Nil(t, other)
	require.True(t, errors.Is(err, kvstate.ErrLeaseHeld), "got %v", err)
	require.EqualError(t, err, `volume is leased by another job: job `+jobID1+` is writing volume "vm-1"`)

	// Another volume, or the same volume on another host, is free.
	_, err = leases.Acquire(ctx, "hv-01", "vm-2", jobID2, time.Minute)
	require.NoError(t, err)
	_, err = leases.Acquire(ctx, "hv-02", "vm-1", jobID2, time.Minute)
	require.NoError(t, err)
}

func TestLeasesSameJobReacquires(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	leases := kvstate.Leases{KV: b.Volumes}

	first, err := leases.Acquire(ctx, "hv-01", "vm-1", jobID1, time.Minute)
	require.NoError(t, err)
	second, err := leases.Acquire(ctx, "hv-01", "vm-1", jobID1, time.Minute)
	require.NoError(t, err)

	// The later attempt's lease is the live one: the earlier handle can no
	// longer renew or release it.
	require.Error(t, first.Renew(ctx, time.Minute))
	require.NoError(t, first.Release(ctx))
	_, err = b.Volumes.Get(ctx, "hv-01.vm-1")
	require.NoError(t, err, "the stale handle must not delete the lease")

	require.NoError(t, second.Renew(ctx, time.Minute))
	require.NoError(t, second.Release(ctx))
	_, err = leases.Acquire(ctx, "hv-01", "vm-1", jobID2, time.Minute)
	require.NoError(t, err)
}

func TestLeasesExpiredTakenOver(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	leases := kvstate.Leases{KV: b.Volumes}

	old, err := leases.Acquire(ctx, "hv-01", "vm-1", jobID1, 50*time.Millisecond)
	require.NoError(t, err)
	time.Sleep(100 * time.Millisecond)

	taken, err := leases.Acquire(ctx, "hv-01", "vm-1", jobID2, time.Minute)
	require.NoError(t, err)
	require.NotNil(t, taken)

	e, err := b.Volumes.Get(ctx, "hv-01.vm-1")
	require.NoError(t, err)
	var l kvstate.Lease
	require.NoError(t, json.Unmarshal(e.Value(), &l))
	require.Equal(t, jobID2, l.JobID)

	// The old holder can neither renew nor release the new holder's lease.
	err = old.Renew(ctx, time.Minute)
	require.ErrorContains(t, err, "renew lease hv-01.vm-1: ")
	require.NoError(t, old.Release(ctx))
	e2, err := b.Volumes.Get(ctx, "hv-01.vm-1")
	require.NoError(t, err)
	require.Equal(t, e.Revision(), e2.Revision())

	// And the old job is now refused.
	_, err = leases.Acquire(ctx, "hv-01", "vm-1", jobID1, time.Minute)
	require.ErrorIs(t, err, kvstate.ErrLeaseHeld)
	require.EqualError(t, err, `volume is leased by another job: job `+jobID2+` is writing volume "vm-1"`)
}

func TestLeasesRenewKeepsLeaseAlive(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	leases := kvstate.Leases{KV: b.Volumes}

	held, err := leases.Acquire(ctx, "hv-01", "vm-1", jobID1, 50*time.Millisecond)
	require.NoError(t, err)
	require.NoError(t, held.Renew(ctx, time.Minute))
	time.Sleep(100 * time.Millisecond)

	_, err = leases.Acquire(ctx, "hv-01", "vm-1", jobID2, time.Minute)
	require.ErrorIs(t, err, kvstate.ErrLeaseHeld)

	// Renew twice in a row: the handle tracks its own revision.
	require.NoError(t, held.Renew(ctx, time.Minute))
	require.NoError(t, held.Renew(ctx, time.Minute))
}

func TestLeasesReleaseThenOtherJobAcquires(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	leases := kvstate.Leases{KV: b.Volumes}

	held, err := leases.Acquire(ctx, "hv-01", "vm-1", jobID1, time.Minute)
	require.NoError(t, err)
	require.NoError(t, held.Renew(ctx, time.Minute))
	require.NoError(t, held.Release(ctx))

	_, err = b.Volumes.Get(ctx, "hv-01.vm-1")
	require.Error(t, err, "the lease is gone after Release")

	other, err := leases.Acquire(ctx, "hv-01", "vm-1", jobID2, time.Minute)
	require.NoError(t, err)
	require.NotNil(t, other)

	// Releasing the first handle again leaves the new holder alone.
	require.NoError(t, held.Release(ctx))
	e, err := b.Volumes.Get(ctx, "hv-01.vm-1")
	require.NoError(t, err)
	var l kvstate.Lease
	require.NoError(t, json.Unmarshal(e.Value(), &l))
	require.Equal(t, jobID2, l.JobID)
}

// A renewal whose first try landed but whose answer was lost (an election)
// is retried with the old revision: the lease is still its holder's, so
// the renewal succeeds instead of reporting a take-over.
func TestLeaseRenewalAfterALostAnswer(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	leases := kvstate.Leases{KV: b.Volumes}
	held, err := leases.Acquire(ctx, "hv-01", "vm-1", jobID1, time.Minute)
	require.NoError(t, err)
	e, err := b.Volumes.Get(ctx, "hv-01.vm-1")
	require.NoError(t, err)
	_, err = b.Volumes.Update(ctx, "hv-01.vm-1", e.Value(), e.Revision()) // the landed try
	require.NoError(t, err)
	require.NoError(t, held.Renew(ctx, time.Minute))
	require.NoError(t, held.Renew(ctx, time.Minute), "the handle follows the lease's revision")
}
