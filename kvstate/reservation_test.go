package kvstate_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
)

func TestReservationsOneActiveJobPerVolume(t *testing.T) {
	t.Parallel()
	st, _ := startState(t)
	ctx := testCtx(t)
	res := st.Reservations
	_, err := st.Jobs.Create(ctx, pendingJob("hv-01", jobID1))
	require.NoError(t, err)

	_, err = res.Reserve(ctx, "hv-01", "vm-1", jobID1)
	require.NoError(t, err)
	_, err = res.Reserve(ctx, "hv-01", "vm-1", jobID2)
	var held *kvstate.LeaseHeldError
	require.True(t, errors.As(err, &held), "got %v", err)
	require.Equal(t, jobID1, held.JobID)
	require.ErrorIs(t, err, kvstate.ErrLeaseHeld)

	// The holder's job ended: its reservation no longer counts.
	_, _, err = st.Jobs.Update(ctx, "hv-01", jobID1, func(j *kvstate.Job) error { j.Status = kvstate.StatusFailed; return nil })
	require.NoError(t, err)
	_, err = res.Reserve(ctx, "hv-01", "vm-1", jobID2)
	require.NoError(t, err)
}

func TestReservationsCancelFreesOnlyTheHoldersLease(t *testing.T) {
	t.Parallel()
	st, _ := startState(t)
	ctx := testCtx(t)
	res := st.Reservations
	_, err := st.Jobs.Create(ctx, pendingJob("hv-01", jobID1))
	require.NoError(t, err)
	_, err = res.Reserve(ctx, "hv-01", "vm-1", jobID1)
	require.NoError(t, err)

	require.NoError(t, res.Cancel(ctx, "hv-01", "vm-1", jobID2), "not the holder")
	_, err = res.Reserve(ctx, "hv-01", "vm-1", jobID2)
	require.ErrorIs(t, err, kvstate.ErrLeaseHeld, "the lease stays")

	require.NoError(t, res.Cancel(ctx, "hv-01", "vm-1", jobID1))
	_, err = res.Reserve(ctx, "hv-01", "vm-1", jobID2)
	require.NoError(t, err, "the holder's cancel freed the volume")

	require.NoError(t, res.Cancel(ctx, "hv-01", "vm-9", jobID1), "no lease: nothing to do")
}
