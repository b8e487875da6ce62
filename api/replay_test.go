package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/auth"
	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// A replica that stops between recording a submission's Idempotency-Key and
// queueing its job leaves the key naming a job that was never queued. The
// client's retry with the same key reaches another replica: it must queue
// that job, not answer with a job that never runs.
func TestRetryFinishesASubmissionCutShort(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, b := newTestServer(t)
	subjects := srv.subjects

	const body = `{"image_url":"http://minio:9000/images/base.qcow2","volume_name":"vm-1","volume_size_gb":1}`
	m := messaging.Job{Kind: messaging.KindProvision, Hypervisor: "h1", ImageURL: "http://minio:9000/images/base.qcow2", VolumeName: "vm-1", VolumeSizeGB: 1}
	m.Normalize()
	// What the stopped replica wrote: the key, and nothing else.
	const earlier = "0b6f1a2c-6a57-4c8e-9a57-3f4f5f0e2a11"
	sum := sha256.Sum256([]byte(auth.Anonymous.Name + "\n" + "retry-me"))
	rec, _ := json.Marshal(idempotencyRecord{JobID: earlier, RequestHash: requestHash(m), CreatedAt: time.Now().UTC()})
	_, err := srv.idem.Create(ctx, hex.EncodeToString(sum[:]), rec)
	require.NoError(t, err)

	post := func() *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, "/api/v1/jobs", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(HeaderIdempotencyKey, "retry-me")
		rr := httptest.NewRecorder()
		srv.router.ServeHTTP(rr, req)
		return rr
	}
	for range 2 { // the retry, and a second retry that finds the job queued
		rr := post()
		require.Equal(t, http.StatusAccepted, rr.Code, rr.Body.String())
		require.Equal(t, "true", rr.Header().Get("Idempotent-Replayed"))
		require.JSONEq(t, `{"job_id":"`+earlier+`"}`, rr.Body.String())
	}
	job, _, err := srv.jobs.Get(ctx, "h1", earlier)
	require.NoError(t, err)
	require.Equal(t, kvstate.StatusPending, job.Status)
	require.Equal(t, "vm-1", job.VolumeName)
	msg, err := srv.jobStream.GetLastMsgForSubject(ctx, subjects.Job("h1", earlier))
	require.NoError(t, err, "the job is queued")
	var queued messaging.Job
	require.NoError(t, json.Unmarshal(msg.Data, &queued))
	require.Equal(t, earlier, queued.JobID)
	info, err := srv.jobStream.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.State.Msgs, "queued once")
	lease, err := b.Volumes.Get(ctx, messaging.VolumeKey("h1", "vm-1"))
	require.NoError(t, err)
	require.Contains(t, string(lease.Value()), earlier, "the volume is reserved for the job")
}

// newTestServer is an API server on an in-process JetStream, with host h1
// registered.
func newTestServer(t *testing.T) (*Server, messaging.Buckets) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js := testenv.JetStream(t)
	subjects := messaging.NewSubjects("")
	require.NoError(t, messaging.Setup(ctx, js, subjects, messaging.DefaultLimits()))
	b, err := messaging.BindBuckets(ctx, js)
	require.NoError(t, err)
	_, err = kvstate.Hosts{KV: b.Hosts}.Claim(ctx, kvstate.Host{Name: "h1", MachineID: "m1", StartedAt: time.Now().UTC(), LastSeen: time.Now().UTC(), Heartbeat: time.Minute})
	require.NoError(t, err)
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	srv, err := New(ctx, Config{DefaultHypervisor: "h1"}, js.Conn(), subjects, log)
	require.NoError(t, err)
	return srv, b
}

// Under the limits layout a job's message leaves the stream once its record
// is terminal, and only then: a worker saying a job ended removes nothing
// while the record says otherwise. The sweep removes what no worker
// reported.
func TestSettledRemovesOnlyEndedJobs(t *testing.T) {
	srv, _ := newTestServer(t)
	ctx := t.Context()
	queue := func(id string) {
		m := messaging.Job{JobID: id, Kind: messaging.KindProvision, Hypervisor: "h1", ImageURL: "http://minio:9000/images/base.qcow2", VolumeName: "vm-" + id[:4], VolumeSizeGB: 1}
		m.Normalize()
		_, err := srv.jobs.Create(ctx, kvstate.NewJob(m, "h1", time.Now()))
		require.NoError(t, err)
		require.NoError(t, srv.queue(ctx, m))
	}
	inStream := func(id string) bool {
		_, err := srv.jobStream.GetLastMsgForSubject(ctx, srv.subjects.Job("h1", id))
		return err == nil
	}
	end := func(id string) {
		_, _, err := srv.jobs.Update(ctx, "h1", id, func(j *kvstate.Job) error {
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
