package kvstate_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
)

// next is the watch's next change, within a few seconds.
func next[T any](t *testing.T, w *kvstate.Watch[T]) *kvstate.Change[T] {
	t.Helper()
	select {
	case c, ok := <-w.Changes():
		require.True(t, ok, "the watch ended")
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no change within 5 s")
		return nil
	}
}

func TestJobsWatchAllSeesEveryRecordThenEveryChange(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	jobs := kvstate.Jobs{KV: b.Jobs}
	rev, err := jobs.Create(ctx, pendingJob("hv-01", jobID1))
	require.NoError(t, err)

	w, err := jobs.WatchAll(ctx)
	require.NoError(t, err)
	c := next(t, w)
	require.NotNil(t, c)
	require.Equal(t, "hv-01."+jobID1, c.Key)
	require.Equal(t, rev, c.Revision)
	require.False(t, c.Deleted)
	require.NoError(t, c.Err)
	require.Equal(t, kvstate.StatusPending, c.Value.Status)
	require.Equal(t, "vm-1", c.Value.VolumeName)
	require.WithinDuration(t, time.Now(), c.At, time.Minute)
	require.Nil(t, next(t, w), "the current records end with nil")

	_, err = jobs.Create(ctx, pendingJob("hv-02", jobID2))
	require.NoError(t, err)
	c = next(t, w)
	require.Equal(t, "hv-02."+jobID2, c.Key)
	require.Equal(t, "hv-02", c.Value.Hypervisor)

	require.NoError(t, b.Jobs.Delete(ctx, "hv-01."+jobID1))
	c = next(t, w)
	require.Equal(t, "hv-01."+jobID1, c.Key)
	require.True(t, c.Deleted)
	require.Equal(t, kvstate.Job{}, c.Value)

	_, err = b.Jobs.Put(ctx, "hv-02."+jobID1, []byte(`{"status":"running","attempt":"two"}`))
	require.NoError(t, err)
	c = next(t, w)
	require.Error(t, c.Err, "a field of another type is an error")
	require.Equal(t, kvstate.StatusRunning, c.Value.Status, "the fields that could be read are")

	require.NoError(t, w.Stop())
	_, open := <-w.Changes()
	require.False(t, open, "Stop closes the changes")
	require.NoError(t, w.Stop(), "a second Stop is harmless")
}

func TestJobsWatchEndsWithItsContext(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	jobs := kvstate.Jobs{KV: b.Jobs}
	_, err := jobs.Create(ctx, pendingJob("hv-01", jobID1))
	require.NoError(t, err)

	wctx, cancel := context.WithCancel(ctx)
	w, err := jobs.Watch(wctx, "hv-01", jobID1)
	require.NoError(t, err)
	require.NotNil(t, next(t, w))
	require.Nil(t, next(t, w))
	cancel()
	select {
	case _, open := <-w.Changes():
		require.False(t, open, "no change was written")
	case <-time.After(5 * time.Second):
		t.Fatal("the watch did not end with its context")
	}
	_ = w.Stop()
}

func TestHostsWatchAll(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	hosts := kvstate.Hosts{KV: b.Hosts}
	w, err := hosts.WatchAll(ctx)
	require.NoError(t, err)
	defer func() { require.NoError(t, w.Stop()) }()
	require.Nil(t, next(t, w), "an empty registry: caught up at once")

	now := time.Now().UTC().Truncate(time.Second)
	_, err = hosts.Claim(ctx, kvstate.Host{Name: "hv-01", MachineID: "m1", LastSeen: now, Heartbeat: time.Second})
	require.NoError(t, err)
	c := next(t, w)
	require.Equal(t, "hv-01", c.Key)
	require.NoError(t, c.Err)
	require.Equal(t, "m1", c.Value.MachineID)
	require.True(t, c.Value.LastSeen.Equal(now))

	require.NoError(t, b.Hosts.Purge(ctx, "hv-01"))
	c = next(t, w)
	require.True(t, c.Deleted, "a purge is a deletion")
}
