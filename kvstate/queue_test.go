package kvstate_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// queuedJob is a valid job message of host.
func queuedJob(host, id string) messaging.Job {
	m := messaging.Job{JobID: id, Kind: messaging.KindProvision, Hypervisor: host, ImageURL: imageURL, VolumeName: "vm-" + id[:4], VolumeSizeGB: 1}
	m.Normalize()
	return m
}

func TestJobQueuePublishFindDrop(t *testing.T) {
	t.Parallel()
	st, js := startState(t)
	ctx := testCtx(t)
	q := st.Queue

	queued, err := q.Queued(ctx, "hv-01", jobID1)
	require.NoError(t, err)
	require.False(t, queued)
	_, err = q.Find(ctx, jobID1)
	require.ErrorIs(t, err, kvstate.ErrQueuedJobNotFound)
	require.ErrorIs(t, err, kvstate.ErrNotFound)

	m := queuedJob("hv-01", jobID1)
	require.NoError(t, q.Publish(ctx, m))
	queued, err = q.Queued(ctx, "hv-01", jobID1)
	require.NoError(t, err)
	require.True(t, queued)

	raw, err := js.Stream(ctx, messaging.JobStream)
	require.NoError(t, err)
	msg, err := raw.GetLastMsgForSubject(ctx, "provisioner.jobs.hv-01."+jobID1)
	require.NoError(t, err, "published on the job's subject")
	require.Equal(t, "1", msg.Header.Get(messaging.HeaderJobVersion))
	require.Equal(t, jobID1, msg.Header.Get(jetstream.MsgIDHeader))

	found, err := q.Find(ctx, jobID1)
	require.NoError(t, err)
	require.Equal(t, "hv-01", found.Host)
	require.Equal(t, jobID1, found.JobID)
	var got messaging.Job
	require.NoError(t, json.Unmarshal(found.Data, &got))
	require.Equal(t, m.VolumeName, got.VolumeName)
	require.WithinDuration(t, time.Now(), found.Time, time.Minute)

	require.NoError(t, q.Publish(ctx, m), "a repeat within the duplicate window is dropped, not refused")

	require.NoError(t, q.Drop(ctx, "hv-01", jobID1))
	queued, err = q.Queued(ctx, "hv-01", jobID1)
	require.NoError(t, err)
	require.False(t, queued)
	require.ErrorIs(t, q.Drop(ctx, "hv-01", jobID1), kvstate.ErrQueuedJobNotFound)
}

func TestJobQueuePublishErrors(t *testing.T) {
	t.Parallel()
	st, js := startState(t)
	ctx := testCtx(t)
	q := st.Queue
	m := queuedJob("hv-01", jobID1)

	// A message of the job under another message id (past the duplicate
	// window): the stream keeps one message per job.
	_, err := js.Publish(ctx, "provisioner.jobs.hv-01."+jobID1, []byte(`{}`), jetstream.WithMsgID("other"))
	require.NoError(t, err)
	err = q.Publish(ctx, m)
	require.ErrorIs(t, err, kvstate.ErrAlreadyQueued)
	require.ErrorIs(t, err, kvstate.ErrPublishRefused)
	var apiErr *jetstream.APIError
	require.ErrorAs(t, err, &apiErr, "the client's error is kept")
	require.Contains(t, err.Error(), "maximum messages per subject")

	// No stream: nothing can have been stored.
	require.NoError(t, js.DeleteStream(ctx, messaging.JobStream))
	err = q.Publish(ctx, queuedJob("hv-01", jobID2))
	require.ErrorIs(t, err, kvstate.ErrPublishRefused)
	require.NotErrorIs(t, err, kvstate.ErrAlreadyQueued)
	queued, err := q.Queued(ctx, "hv-01", jobID2)
	require.NoError(t, err, "the stream's absence is an answer")
	require.False(t, queued)

	// A publish cut short by its context may still land: not refused.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err = q.Publish(cctx, queuedJob("hv-01", jobID2))
	require.Error(t, err)
	require.NotErrorIs(t, err, kvstate.ErrPublishRefused)
}

func TestJobQueueQueuedNeedsAnAnswer(t *testing.T) {
	t.Parallel()
	st, js := startState(t)
	js.Conn().Close()
	_, err := st.Queue.Queued(testCtx(t), "hv-01", jobID1)
	require.ErrorIs(t, err, nats.ErrConnectionClosed, "no answer is not a no")
}

func TestJobQueueWaitingPurgeAndBacklog(t *testing.T) {
	t.Parallel()
	st, _ := startState(t)
	ctx := testCtx(t)
	q := st.Queue
	require.NoError(t, q.Publish(ctx, queuedJob("hv-01", jobID1)))
	require.NoError(t, q.Publish(ctx, queuedJob("hv-02", jobID2)))

	waiting, err := q.Waiting(ctx)
	require.NoError(t, err)
	require.ElementsMatch(t, []kvstate.JobRef{{Host: "hv-01", JobID: jobID1}, {Host: "hv-02", JobID: jobID2}}, waiting)

	name, err := q.EnsureConsumer(ctx, messaging.ConsumerConfig(messaging.NewSubjects(""), "hv-01", messaging.MinAckWait, messaging.MinMaxDeliver))
	require.NoError(t, err)
	require.Equal(t, messaging.ConsumerName("hv-01"), name)
	backlog, err := q.Backlog(ctx)
	require.NoError(t, err)
	require.Equal(t, map[string]uint64{"hv-01": 1}, backlog, "hosts without a consumer have no backlog")

	require.NoError(t, q.Purge(ctx, "hv-01", jobID1))
	require.NoError(t, q.Purge(ctx, "hv-01", jobID1), "nothing left to purge is no error")
	waiting, err = q.Waiting(ctx)
	require.NoError(t, err)
	require.Equal(t, []kvstate.JobRef{{Host: "hv-02", JobID: jobID2}}, waiting)
	backlog, err = q.Backlog(ctx)
	require.NoError(t, err)
	require.Equal(t, map[string]uint64{"hv-01": 0}, backlog)
}

func TestJobQueueConsumers(t *testing.T) {
	t.Parallel()
	st, _ := startState(t)
	ctx := testCtx(t)
	q := st.Queue
	name := messaging.ConsumerName("hv-01")

	err := q.CheckConsumer(ctx, name)
	require.ErrorIs(t, err, kvstate.ErrConsumerNotFound)
	require.ErrorIs(t, err, kvstate.ErrNotFound)
	_, err = q.EnsureConsumer(ctx, messaging.ConsumerConfig(messaging.NewSubjects(""), "hv-01", messaging.MinAckWait, messaging.MinMaxDeliver))
	require.NoError(t, err)
	require.NoError(t, q.CheckConsumer(ctx, name))
	require.NoError(t, q.DeleteConsumer(ctx, name))
	require.ErrorIs(t, q.CheckConsumer(ctx, name), kvstate.ErrConsumerNotFound)
	require.NoError(t, q.DeleteConsumer(ctx, name), "one that is gone is no error")
}

func TestJobsFindByIDOnAnyHost(t *testing.T) {
	t.Parallel()
	st, _ := startState(t)
	ctx := testCtx(t)
	jobs := st.Jobs

	_, err := jobs.FindByID(ctx, jobID1)
	require.ErrorIs(t, err, kvstate.ErrJobNotFound)
	_, err = jobs.Create(ctx, pendingJob("hv-02", jobID1))
	require.NoError(t, err)
	rec, err := jobs.FindByID(ctx, jobID1)
	require.NoError(t, err)
	require.Equal(t, "hv-02", rec.Hypervisor)
	require.Equal(t, kvstate.StatusPending, rec.Status)

	_, rev, err := jobs.Get(ctx, "hv-02", jobID1)
	require.NoError(t, err)
	require.NoError(t, jobs.TakeBack(ctx, "hv-02", jobID1, rev))
	_, err = jobs.FindByID(ctx, jobID1)
	require.ErrorIs(t, err, kvstate.ErrJobNotFound, "a deleted record is not found")

	_, err = kvstate.Jobs{KV: st.Jobs.KV}.FindByID(ctx, jobID1)
	require.ErrorContains(t, err, "not bound", "a Jobs not bound by Open cannot find by id")
}

func TestJobsTakeBackOnlyAsCreated(t *testing.T) {
	t.Parallel()
	st, _ := startState(t)
	ctx := testCtx(t)
	jobs := st.Jobs
	rev, err := jobs.Create(ctx, pendingJob("hv-01", jobID1))
	require.NoError(t, err)
	_, _, err = jobs.Update(ctx, "hv-01", jobID1, func(j *kvstate.Job) error { j.Status = kvstate.StatusRunning; return nil })
	require.NoError(t, err)

	require.ErrorIs(t, jobs.TakeBack(ctx, "hv-01", jobID1, rev), kvstate.ErrJobChanged)
	rec, _, err := jobs.Get(ctx, "hv-01", jobID1)
	require.NoError(t, err, "a record a worker moved on stays")
	require.Equal(t, kvstate.StatusRunning, rec.Status)
}

func TestStateCheckNamesTheBucketThatDoesNotAnswer(t *testing.T) {
	t.Parallel()
	st, js := startState(t)
	ctx := testCtx(t)
	require.NoError(t, st.Check(ctx))
	require.NoError(t, js.DeleteKeyValue(ctx, messaging.CacheBucket))
	require.ErrorContains(t, st.Check(ctx), "KV bucket provisioner_cache does not answer")
}
