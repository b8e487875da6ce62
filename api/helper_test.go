package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// testBundle is an API server on an in-process JetStream of its own, with
// host h1 registered, and a view of the same JetStream for checking what
// the server stored.
type testBundle struct {
	srv     *Server
	js      jetstream.JetStream
	buckets messaging.Buckets
	// jobStream is the job stream, bound apart from the server.
	jobStream jetstream.Stream
}

// testHost is the registered host, and the server's default.
const testHost = "h1"

// setup starts a server for one test; configure, when given, changes its
// Config before it is built.
func setup(t *testing.T, configure ...func(*Config)) *testBundle {
	t.Helper()
	ctx := testCtx(t)
	js := testenv.JetStream(t)
	subjects := messaging.NewSubjects("")
	require.NoError(t, messaging.Setup(ctx, js, subjects, messaging.DefaultLimits()))
	b, err := messaging.BindBuckets(ctx, js)
	require.NoError(t, err)
	registerHost(t, b, testHost, time.Now())
	jobStream, err := js.Stream(ctx, messaging.JobStream)
	require.NoError(t, err)
	log := logrus.New()
	log.SetOutput(io.Discard)
	cfg := Config{DefaultHypervisor: testHost, AllowedHosts: []string{"example.com"}}
	for _, c := range configure {
		c(&cfg)
	}
	srv, err := New(ctx, cfg, js.Conn(), subjects, log)
	require.NoError(t, err)
	return &testBundle{srv: srv, js: js, buckets: b, jobStream: jobStream}
}

// registerHost writes host's registry entry as its worker would, last
// seen at seen.
func registerHost(t *testing.T, b messaging.Buckets, host string, seen time.Time) {
	t.Helper()
	_, err := kvstate.Hosts{KV: b.Hosts}.Claim(testCtx(t), kvstate.Host{Name: host, MachineID: "m-" + host, Version: "test",
		StartedAt: seen.UTC(), LastSeen: seen.UTC(), Heartbeat: time.Minute})
	require.NoError(t, err)
}

// testCtx is a context that ends with the test or after 30 seconds.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// request is one HTTP request to the server's handler.
type request struct {
	method, path, body string
	// header is set on the request; a body is sent as JSON unless header
	// names another Content-Type.
	header map[string]string
}

// do serves req through the whole handler (guard, authentication,
// routes), as a client's request would be.
func (tb *testBundle) do(t *testing.T, req request) *httptest.ResponseRecorder {
	t.Helper()
	var body io.Reader = http.NoBody
	if req.body != "" {
		body = strings.NewReader(req.body)
	}
	r := httptest.NewRequest(req.method, req.path, body)
	if req.body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	for k, v := range req.header {
		r.Header.Set(k, v)
	}
	rr := httptest.NewRecorder()
	tb.srv.Handler().ServeHTTP(rr, r)
	return rr
}

// submit posts a job request body (with an Idempotency-Key when key is
// not empty).
func (tb *testBundle) submit(t *testing.T, body, key string) *httptest.ResponseRecorder {
	t.Helper()
	req := request{method: http.MethodPost, path: "/api/v1/jobs", body: body}
	if key != "" {
		req.header = map[string]string{HeaderIdempotencyKey: key}
	}
	return tb.do(t, req)
}

// accepted checks a 202 answer to a submission and returns its job id.
func accepted(t *testing.T, rr *httptest.ResponseRecorder) string {
	t.Helper()
	require.Equal(t, http.StatusAccepted, rr.Code, rr.Body.String())
	var a rest.Accepted
	require.NoError(t, json.Unmarshal(rr.Body.Bytes(), &a))
	require.NotEmpty(t, a.JobID)
	require.Equal(t, "/api/v1/jobs/"+a.JobID, rr.Header().Get("Location"))
	return a.JobID
}

// apiError checks an answer in the API's error format with status code
// and category, and returns its message.
func apiError(t *testing.T, rr *httptest.ResponseRecorder, code int, category string) string {
	t.Helper()
	require.Equal(t, code, rr.Code, rr.Body.String())
	require.Equal(t, "application/json", rr.Header().Get("Content-Type"))
	var e rest.Error
	require.NoError(t, messaging.DecodeStrict(rr.Body.Bytes(), &e), "the error format: error, message and code only")
	require.Equal(t, category, e.Error)
	require.Equal(t, code, e.Code)
	require.NotEmpty(t, e.Message)
	return e.Message
}

// record reads host's job record.
func (tb *testBundle) record(t *testing.T, host, jobID string) kvstate.Job {
	t.Helper()
	rec, _, err := kvstate.Jobs{KV: tb.buckets.Jobs}.Get(testCtx(t), host, jobID)
	require.NoError(t, err)
	return rec
}

// queued reports whether host's job has a message in the job stream.
func (tb *testBundle) queued(t *testing.T, host, jobID string) bool {
	t.Helper()
	_, err := tb.jobStream.GetLastMsgForSubject(testCtx(t), tb.srv.subjects.Job(host, jobID))
	if err == nil {
		return true
	}
	require.ErrorIs(t, err, jetstream.ErrMsgNotFound)
	return false
}

// leaseHolder is the job holding host's volume's lease ("" for none).
func (tb *testBundle) leaseHolder(t *testing.T, host, volume string) string {
	t.Helper()
	e, err := tb.buckets.Volumes.Get(testCtx(t), messaging.VolumeKey(host, volume))
	if err != nil {
		require.ErrorIs(t, err, jetstream.ErrKeyNotFound)
		return ""
	}
	var l kvstate.Lease
	require.NoError(t, json.Unmarshal(e.Value(), &l))
	return l.JobID
}

// keys lists a bucket's keys.
func keys(t *testing.T, kv jetstream.KeyValue) []string {
	t.Helper()
	lister, err := kv.ListKeys(testCtx(t))
	require.NoError(t, err)
	defer lister.Stop()
	var out []string
	for k := range lister.Keys() {
		out = append(out, k)
	}
	return out
}
