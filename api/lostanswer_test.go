package api

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// setNoAck switches the job records' stream to store writes without
// answering them (NoAck), or back: a write then lands, but its writer
// never hears so, as when a leader election loses the answer.
func (tb *testBundle) setNoAck(t *testing.T, ctx context.Context, noAck bool) {
	t.Helper()
	s, err := tb.js.Stream(ctx, "KV_"+messaging.JobBucket)
	require.NoError(t, err)
	cfg := s.CachedInfo().Config
	cfg.NoAck = noAck
	_, err = tb.js.UpdateStream(ctx, cfg)
	require.NoError(t, err)
}

// A job record whose write is never answered within the request's time
// may still land: the submission keeps its Idempotency-Key, its volume's
// reservation and the record, and says to retry with the key; the retry
// finishes that submission (one job, queued once) instead of meeting a
// pending job on its own volume.
func TestSubmitRecordUnansweredKeepsTheKey(t *testing.T) {
	t.Parallel()
	tb := setup(t, func(c *Config) { c.NATSTimeout = 2 * time.Second })
	ctx := testCtx(t)
	tb.setNoAck(t, ctx, true)
	msg := apiError(t, tb.submit(t, jobBody, "lost"), http.StatusServiceUnavailable, catUnavailable)
	require.Contains(t, msg, "retry with the same Idempotency-Key")
	tb.setNoAck(t, ctx, false)

	rr := tb.submit(t, jobBody, "lost")
	id := accepted(t, rr)
	require.Equal(t, "true", rr.Header().Get(rest.HeaderIdempotentReplayed))
	require.Equal(t, []string{messaging.JobKey(testHost, id)}, keys(t, tb.buckets.Jobs), "one record, the first submission's")
	require.True(t, tb.queued(t, testHost, id))
	info, err := tb.jobStream.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.State.Msgs, "queued once")
	require.Equal(t, id, tb.leaseHolder(t, testHost, "vm-1"))
}
