package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/auth"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// A replica that stops between recording a submission's Idempotency-Key and
// queueing its job leaves the key naming a job that was never queued. The
// client's retry with the same key reaches another replica: it must queue
// that job, not answer with a job that never runs.
func TestRetryFinishesASubmissionCutShort(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	srv, ctx := tb.srv, testCtx(t)
	subjects := srv.subjects

	const body = `{"image_url":"http://minio:9000/images/base.qcow2","volume_name":"vm-1","volume_size_gb":1}`
	m := messaging.Job{Kind: messaging.KindProvision, Hypervisor: "h1", ImageURL: "http://minio:9000/images/base.qcow2", VolumeName: "vm-1", VolumeSizeGB: 1}
	m.Normalize()
	// What the stopped replica wrote: the key, and nothing else.
	const earlier = "0b6f1a2c-6a57-4c8e-9a57-3f4f5f0e2a11"
	claim, err := srv.state.Idempotency.Claim(ctx, auth.Anonymous.Name, "retry-me",
		kvstate.IdempotencyRecord{JobID: earlier, RequestHash: requestHash(m), CreatedAt: time.Now().UTC()})
	require.NoError(t, err)
	require.True(t, claim.New())

	post := func() *httptest.ResponseRecorder {
		return tb.submit(t, body, "retry-me")
	}
	for range 2 { // the retry, and a second retry that finds the job queued
		rr := post()
		require.Equal(t, http.StatusAccepted, rr.Code, rr.Body.String())
		require.Equal(t, "true", rr.Header().Get("Idempotent-Replayed"))
		require.JSONEq(t, `{"job_id":"`+earlier+`"}`, rr.Body.String())
	}
	job := tb.record(t, "h1", earlier)
	require.Equal(t, kvstate.StatusPending, job.Status)
	require.Equal(t, "vm-1", job.VolumeName)
	msg, err := tb.jobStream.GetLastMsgForSubject(ctx, subjects.Job("h1", earlier))
	require.NoError(t, err, "the job is queued")
	var queued messaging.Job
	require.NoError(t, json.Unmarshal(msg.Data, &queued))
	require.Equal(t, earlier, queued.JobID)
	info, err := tb.jobStream.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.State.Msgs, "queued once")
	require.Equal(t, earlier, tb.leaseHolder(t, "h1", "vm-1"), "the volume is reserved for the job")
}

// Under the limits layout a job's message leaves the stream once its record
// is terminal, and only then: a worker saying a job ended removes nothing
// while the record says otherwise. The sweep removes what no worker
// reported.
func TestSettledRemovesOnlyEndedJobs(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	srv, ctx := tb.srv, testCtx(t)
	queue := func(id string) {
		m := messaging.Job{JobID: id, Kind: messaging.KindProvision, Hypervisor: "h1", ImageURL: "http://minio:9000/images/base.qcow2", VolumeName: "vm-" + id[:4], VolumeSizeGB: 1}
		m.Normalize()
		_, err := srv.state.Jobs.Create(ctx, kvstate.NewJob(m, "h1", time.Now()))
		require.NoError(t, err)
		require.NoError(t, srv.queue(ctx, m))
	}
	inStream := func(id string) bool {
		return tb.queued(t, "h1", id)
	}
	end := func(id string) {
		_, _, err := srv.state.Jobs.Update(ctx, "h1", id, func(j *kvstate.Job) error {
			j.Status = kvstate.StatusFailed
			return nil
		})
		require.NoError(t, err)
	}
	settled := func(id string) messaging.HostReply {
		body, _ := json.Marshal(messaging.SettledRequest{JobID: id})
		return srv.hostSettled(ctx, "h1", body)
	}
	const a, b, c = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002", "cccccccc-0000-4000-8000-000000000003"
	for _, id := range []string{a, b, c} {
		queue(id)
	}
	rep := settled(a)
	require.Contains(t, rep.Error, "the job has not ended (pending)")
	require.True(t, inStream(a), "a pending job stays queued whatever the worker says")
	require.Contains(t, settled("not-a-uuid").Error, "malformed")

	end(a)
	require.Empty(t, settled(a).Error)
	require.False(t, inStream(a), "an ended job leaves the stream")

	end(b) // ended, but its worker never said so
	n, err := srv.sweepOnce(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.False(t, inStream(b))
	require.True(t, inStream(c), "the pending job is still queued")
}
