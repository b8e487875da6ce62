package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

const (
	imageURL = "http://minio:9000/images/base.qcow2"
	// jobBody is a valid provisioning request for volume vm-1 on the
	// default host.
	jobBody = `{"image_url":"` + imageURL + `","volume_name":"vm-1","volume_size_gb":2,"correlation_id":"deploy-1"}`
)

func TestSubmitJobRecordsQueuesAndReserves(t *testing.T) {
	t.Parallel()
	tb := setup(t)

	rr := tb.submit(t, jobBody, "")
	id := accepted(t, rr)
	require.Empty(t, rr.Header().Get(rest.HeaderIdempotentReplayed))
	require.NotEmpty(t, rr.Header().Get(HeaderRequestID))

	rec := tb.record(t, testHost, id)
	require.Equal(t, kvstate.StatusPending, rec.Status)
	require.Equal(t, messaging.KindProvision, rec.Kind)
	require.Equal(t, imageURL, rec.ImageURL)
	require.Equal(t, "vm-1", rec.VolumeName)
	require.EqualValues(t, 2, rec.VolumeSizeGB)
	require.Equal(t, "deploy-1", rec.CorrelationID)
	require.Equal(t, "anonymous", rec.Caller)
	require.True(t, tb.queued(t, testHost, id), "the job's message is in the job stream")
	require.Equal(t, id, tb.leaseHolder(t, testHost, "vm-1"), "the volume is reserved for the job")
}

func TestSubmitJobValidationErrors(t *testing.T) {
	t.Parallel()
	tb := setup(t, func(c *Config) { c.ImageBuckets = messaging.ImageSources{{Bucket: "images"}} })
	registerHost(t, tb.buckets, "h2", time.Now())
	for _, tc := range []struct {
		name     string
		body     string
		header   map[string]string
		code     int
		category string
		message  string
	}{
		{"empty body", "", nil, http.StatusBadRequest, catInvalid, "request body is empty; send a JSON object"},
		{"not JSON", "{", nil, http.StatusBadRequest, catInvalid, ""},
		{"unknown field", `{"image_url":"` + imageURL + `","volume_name":"v","volume_size_gb":1,"colour":"red"}`, nil, http.StatusBadRequest, catInvalid, "colour"},
		{"trailing data", jobBody + `{}`, nil, http.StatusBadRequest, catInvalid, "request body has data after the JSON object"},
		{"every field missing", `{}`, nil, http.StatusBadRequest, catInvalid, "image_url, volume_name and volume_size_gb are required"},
		{"size missing", `{"image_url":"` + imageURL + `","volume_name":"v"}`, nil, http.StatusBadRequest, catInvalid, "volume_size_gb is required"},
		{"size zero", `{"image_url":"` + imageURL + `","volume_name":"v","volume_size_gb":0}`, nil, http.StatusBadRequest, catInvalid, "volume_size_gb"},
		{"volume name", `{"image_url":"` + imageURL + `","volume_name":"../etc","volume_size_gb":1}`, nil, http.StatusBadRequest, catInvalid, "volume_name"},
		{"hypervisor not a host name", `{"image_url":"` + imageURL + `","volume_name":"v","volume_size_gb":1,"hypervisor":"Bad_Host"}`, nil, http.StatusBadRequest, catInvalid, `hypervisor: "Bad_Host" is not a host name`},
		{"unknown hypervisor", `{"image_url":"` + imageURL + `","volume_name":"v","volume_size_gb":1,"hypervisor":"h9"}`, nil, http.StatusBadRequest, catInvalid, `unknown hypervisor "h9"; known hypervisors: h1, h2`},
		{"image bucket not allowed", `{"image_url":"http://minio:9000/secrets/x.qcow2","volume_name":"v","volume_size_gb":1}`, nil, http.StatusBadRequest, catInvalid, "is not an allowed image source"},
		{"loopback image", `{"image_url":"http://127.0.0.1:9000/images/x.qcow2","volume_name":"v","volume_size_gb":1}`, nil, http.StatusBadRequest, catInvalid, "loopback, link-local or metadata address"},
		{"idempotency key", jobBody, map[string]string{HeaderIdempotencyKey: strings.Repeat("k", 256)}, http.StatusBadRequest, catInvalid, "Idempotency-Key must be 1 to 255 printable ASCII characters"},
		{"not JSON content", jobBody, map[string]string{"Content-Type": "text/plain"}, http.StatusUnsupportedMediaType, catMediaType, `request body must be JSON with Content-Type: application/json, not "text/plain"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rr := tb.do(t, request{method: http.MethodPost, path: "/api/v1/jobs", body: tc.body, header: tc.header})
			msg := apiError(t, rr, tc.code, tc.category)
			require.Contains(t, msg, tc.message)
		})
	}
	require.Empty(t, keys(t, tb.buckets.Jobs), "no refused request records a job")
	require.Empty(t, keys(t, tb.buckets.Volumes), "or reserves a volume")
	info, err := tb.jobStream.Info(testCtx(t))
	require.NoError(t, err)
	require.Zero(t, info.State.Msgs, "or queues one")
}

func TestSubmitWithIdempotencyKeyReplays(t *testing.T) {
	t.Parallel()
	tb := setup(t)

	first := accepted(t, tb.submit(t, jobBody, "deploy-1"))
	rr := tb.submit(t, jobBody, "deploy-1")
	require.Equal(t, first, accepted(t, rr), "the same job")
	require.Equal(t, "true", rr.Header().Get(rest.HeaderIdempotentReplayed))
	info, err := tb.jobStream.Info(testCtx(t))
	require.NoError(t, err)
	require.EqualValues(t, 1, info.State.Msgs, "queued once")

	other := strings.Replace(jobBody, `"volume_size_gb":2`, `"volume_size_gb":3`, 1)
	msg := apiError(t, tb.submit(t, other, "deploy-1"), http.StatusUnprocessableEntity, catInvalid)
	require.Equal(t, `Idempotency-Key "deploy-1" was already used for a different request (job `+first+`)`, msg)

	second := accepted(t, tb.submit(t, strings.Replace(jobBody, "vm-1", "vm-2", 1), "deploy-2"))
	require.NotEqual(t, first, second, "another key is another job")
}

func TestSubmitForABusyVolumeIs409(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	first := accepted(t, tb.submit(t, jobBody, ""))

	msg := apiError(t, tb.submit(t, jobBody, "retry-1"), http.StatusConflict, catConflict)
	require.Equal(t, `volume "vm-1" on hypervisor "h1" already has job `+first+` (pending); wait for it or cancel it`, msg)
	// The refused submission gave its key up: the same key, once the
	// volume is free, is a new submission rather than a replay.
	require.Equal(t, http.StatusOK, tb.do(t, request{method: http.MethodPost, path: "/api/v1/jobs/" + first + "/cancel"}).Code)
	rr := tb.submit(t, jobBody, "retry-1")
	second := accepted(t, rr)
	require.NotEqual(t, first, second)
	require.Empty(t, rr.Header().Get(rest.HeaderIdempotentReplayed))
	require.Equal(t, second, tb.leaseHolder(t, testHost, "vm-1"))
}

// A publish the job stream certainly did not store (here: there is no
// job stream) takes back everything the submission wrote: the record, the
// volume's reservation and the Idempotency-Key.
func TestSubmitRefusedPublishTakesEverythingBack(t *testing.T) {
	t.Parallel()
	tb := setup(t, func(c *Config) { c.NATSTimeout = 2 * time.Second })
	ctx := testCtx(t)
	require.NoError(t, tb.js.DeleteStream(ctx, messaging.JobStream))

	msg := apiError(t, tb.submit(t, jobBody, "once"), http.StatusServiceUnavailable, catUnavailable)
	require.Contains(t, msg, "(queue job)")
	require.NotContains(t, msg, "may have been queued")
	require.Empty(t, keys(t, tb.buckets.Jobs), "the record is taken back")
	require.Empty(t, keys(t, tb.buckets.Volumes), "the volume is free")

	require.NoError(t, messaging.Setup(ctx, tb.js, tb.srv.subjects, messaging.DefaultLimits()))
	rr := tb.submit(t, jobBody, "once")
	id := accepted(t, rr)
	require.Empty(t, rr.Header().Get(rest.HeaderIdempotentReplayed), "the key was given up: a new submission")
	require.True(t, tb.queued(t, testHost, id))
}

func TestFetchCacheQueuesACacheJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	id := accepted(t, tb.do(t, request{method: http.MethodPost, path: "/api/v1/cache/fetch", body: `{"image_url":"` + imageURL + `"}`}))
	rec := tb.record(t, testHost, id)
	require.Equal(t, messaging.KindCacheFetch, rec.Kind)
	require.Empty(t, rec.VolumeName)
	require.True(t, tb.queued(t, testHost, id))
	require.Empty(t, keys(t, tb.buckets.Volumes), "a cache fetch reserves no volume")

	msg := apiError(t, tb.do(t, request{method: http.MethodPost, path: "/api/v1/cache/fetch", body: `{}`}), http.StatusBadRequest, catInvalid)
	require.Equal(t, "image_url is required", msg)
}

func TestGetJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	id := accepted(t, tb.submit(t, jobBody, ""))

	for _, tc := range []struct {
		name, id string
		code     int
		category string
		message  string
	}{
		{"unknown", "0b6f1a2c-6a57-4c8e-9a57-3f4f5f0e2a11", http.StatusNotFound, catNotFound, "job not found"},
		{"not a UUID", "job-1", http.StatusBadRequest, catInvalid, `job_id "job-1" is not a UUID`},
		{"UUID without dashes", strings.ReplaceAll(id, "-", ""), http.StatusBadRequest, catInvalid, "is not a UUID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := apiError(t, tb.do(t, request{method: http.MethodGet, path: "/api/v1/jobs/" + tc.id}), tc.code, tc.category)
			require.Contains(t, msg, tc.message)
		})
	}

	for _, path := range []string{id, strings.ToUpper(id)} {
		rr := tb.do(t, request{method: http.MethodGet, path: "/api/v1/jobs/" + path})
		require.Equal(t, http.StatusOK, rr.Code, rr.Body.String())
		var got rest.Job
		require.NoError(t, json.Unmarshal(rr.Body.Bytes(), &got))
		require.Equal(t, id, got.JobID)
		require.Equal(t, rest.StatusPending, got.Status)
		require.Equal(t, testHost, got.Hypervisor)
		require.Equal(t, "vm-1", got.VolumeName)
	}
}

// A job published straight to NATS has no record until a worker takes it:
// the API finds its message and records it, so it can be read at once.
func TestGetJobPublishedStraightToNATS(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	const id = "6ba7b810-9dad-41d1-80b4-00c04fd430c8"
	m := messaging.Job{JobID: id, Kind: messaging.KindProvision, ImageURL: imageURL, VolumeName: "vm-9", VolumeSizeGB: 1}
	m.Normalize()
	data, err := json.Marshal(m)
	require.NoError(t, err)
	_, err = tb.js.Publish(testCtx(t), tb.srv.subjects.Job(testHost, id), data)
	require.NoError(t, err)

	rr := tb.do(t, request{method: http.MethodGet, path: "/api/v1/jobs/" + id})
	require.Equal(t, http.StatusOK, rr.Code, rr.Body.String())
	var got rest.Job
	require.NoError(t, json.Unmarshal(rr.Body.Bytes(), &got))
	require.Equal(t, rest.StatusPending, got.Status)
	require.Equal(t, testHost, got.Hypervisor)
	require.Equal(t, kvstate.CallerNATS, got.Caller)
	require.Equal(t, "vm-9", tb.record(t, testHost, id).VolumeName, "the record is written")
}

func TestCancelJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	cancelJob := func(id string) *httptest.ResponseRecorder {
		return tb.do(t, request{method: http.MethodPost, path: "/api/v1/jobs/" + id + "/cancel"})
	}

	pending := accepted(t, tb.submit(t, jobBody, ""))
	rr := cancelJob(pending)
	require.Equal(t, http.StatusOK, rr.Code, rr.Body.String())
	require.JSONEq(t, `{"status":"cancelled","job_id":"`+pending+`"}`, rr.Body.String())
	rec := tb.record(t, testHost, pending)
	require.Equal(t, kvstate.StatusCancelled, rec.Status)
	require.NotNil(t, rec.FinishedAt)
	require.False(t, tb.queued(t, testHost, pending), "a pending job's message leaves the queue")
	require.Empty(t, tb.leaseHolder(t, testHost, "vm-1"), "and its volume is free")

	msg := apiError(t, cancelJob(pending), http.StatusBadRequest, catCancel)
	require.Equal(t, "cannot cancel job in 'cancelled' status", msg)

	// A running job is cancelled in its record; its worker, which holds
	// the message, stops and acknowledges it.
	running := accepted(t, tb.submit(t, strings.Replace(jobBody, "vm-1", "vm-2", 1), ""))
	_, _, err := tb.srv.state.Jobs.Update(testCtx(t), testHost, running, func(j *kvstate.Job) error { j.Status = kvstate.StatusRunning; return nil })
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, cancelJob(running).Code)
	require.Equal(t, kvstate.StatusCancelled, tb.record(t, testHost, running).Status)
	require.True(t, tb.queued(t, testHost, running), "the worker acknowledges it")
	require.Equal(t, running, tb.leaseHolder(t, testHost, "vm-2"), "the worker releases the volume when it stops")

	msg = apiError(t, cancelJob("0b6f1a2c-6a57-4c8e-9a57-3f4f5f0e2a11"), http.StatusNotFound, catNotFound)
	require.Equal(t, "job not found", msg)
}
