package kvstate_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
)

func TestIdempotencyClaimNamesTheFirstJob(t *testing.T) {
	t.Parallel()
	st, _ := startState(t)
	ctx := testCtx(t)
	idem := st.Idempotency
	first := kvstate.IdempotencyRecord{JobID: jobID1, RequestHash: "h1", CreatedAt: time.Now().UTC().Truncate(time.Second)}

	c, err := idem.Claim(ctx, "alice", "key-1", first)
	require.NoError(t, err)
	require.True(t, c.New())
	require.Equal(t, kvstate.IdempotencyRecord{}, c.Prior)

	again, err := idem.Claim(ctx, "alice", "key-1", kvstate.IdempotencyRecord{JobID: jobID2, RequestHash: "h2"})
	require.NoError(t, err)
	require.False(t, again.New())
	require.Equal(t, first.JobID, again.Prior.JobID)
	require.Equal(t, "h1", again.Prior.RequestHash)
	require.True(t, first.CreatedAt.Equal(again.Prior.CreatedAt))
	require.NoError(t, again.Release(ctx), "a claim that is not new releases nothing")

	other, err := idem.Claim(ctx, "bob", "key-1", kvstate.IdempotencyRecord{JobID: jobID2})
	require.NoError(t, err)
	require.True(t, other.New(), "one caller's key is not another's")

	still, err := idem.Claim(ctx, "alice", "key-1", kvstate.IdempotencyRecord{JobID: jobID2})
	require.NoError(t, err)
	require.Equal(t, jobID1, still.Prior.JobID)
}

func TestIdempotencyReleaseAndForget(t *testing.T) {
	t.Parallel()
	st, _ := startState(t)
	ctx := testCtx(t)
	idem := st.Idempotency

	c, err := idem.Claim(ctx, "alice", "k", kvstate.IdempotencyRecord{JobID: jobID1})
	require.NoError(t, err)
	require.NoError(t, c.Release(ctx))
	c, err = idem.Claim(ctx, "alice", "k", kvstate.IdempotencyRecord{JobID: jobID2})
	require.NoError(t, err)
	require.True(t, c.New(), "a released key is free again")

	// Forget frees a key whatever it names; an old claim's release then
	// leaves the key's new owner alone.
	stale := c
	require.NoError(t, idem.Forget(ctx, "alice", "k"))
	fresh, err := idem.Claim(ctx, "alice", "k", kvstate.IdempotencyRecord{JobID: jobID1})
	require.NoError(t, err)
	require.True(t, fresh.New())
	require.NoError(t, stale.Release(ctx))
	got, err := idem.Claim(ctx, "alice", "k", kvstate.IdempotencyRecord{JobID: jobID2})
	require.NoError(t, err)
	require.Equal(t, jobID1, got.Prior.JobID, "the newer claim stays")
}
