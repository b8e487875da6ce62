package tests

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/auth"
	"github.com/libvirt-volume-provisioner/provisioner/client"
	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

func newClient(t *testing.T, base string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(append([]client.Option{client.WithBaseURL(base),
		client.WithRetryPolicy(client.RetryPolicy{Attempts: 4, MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond})}, opts...)...)
	require.NoError(t, err)
	return c
}

// TestClientAgainstTheAPI: submit, watch, wait, the API's errors as typed
// errors, cache, hosts, and a replayed idempotent submission.
func TestClientAgainstTheAPI(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	e.startWorker("h1", "PROVISIONER_WRITE_LIMIT=16777216")
	qcow2, ref := image(t, 48<<20, 21)
	imageURL := e.upload("images/client.qcow2", qcow2, true)
	c := newClient(t, e.apiURL)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	size := int64(1)
	req := rest.JobRequest{ImageURL: imageURL, VolumeName: "vm-client", VolumeSizeGB: &size}
	sub, err := c.Submit(ctx, req, client.WithIdempotencyKey("deploy-7"))
	require.NoError(t, err)
	require.False(t, sub.Replayed)
	again, err := c.Submit(ctx, req, client.WithIdempotencyKey("deploy-7"))
	require.NoError(t, err)
	require.Equal(t, client.Submission{JobID: sub.JobID, Replayed: true}, again)

	var events []rest.Event
	for ev, err := range c.Watch(ctx, sub.JobID) {
		require.NoError(t, err)
		events = append(events, ev)
	}
	require.NotEmpty(t, events)
	last := events[len(events)-1]
	require.Equal(t, "completed", last.Status)
	stages := map[string]bool{}
	for i, ev := range events {
		require.Equal(t, sub.JobID, ev.JobID)
		stages[ev.Stage] = true
		if i > 0 && ev.Attempt == events[i-1].Attempt {
			require.GreaterOrEqual(t, ev.Percent, events[i-1].Percent, "percent went backwards: %+v", events)
		}
	}
	require.True(t, stages["populating"], "the watch saw the job populate: %+v", events)

	j, err := c.Wait(ctx, sub.JobID)
	require.NoError(t, err)
	require.Equal(t, rest.StatusCompleted, j.Status)
	require.Equal(t, e.volumePath("h1", "vm-client"), j.VolumePath)
	requireVolume(t, j.VolumePath, ref, gib)

	// The API's errors, typed.
	_, err = c.Get(ctx, "6f1c2b1e-0000-4000-8000-000000000000")
	var apiErr *client.APIError
	require.ErrorAs(t, err, &apiErr)
	require.ErrorIs(t, err, client.ErrNotFound)
	require.Equal(t, rest.Error{Error: "job not found", Message: "job not found", Code: 404}, apiErr.Body)
	require.NotEmpty(t, apiErr.RequestID)
	_, err = c.Cancel(ctx, sub.JobID)
	require.ErrorIs(t, err, client.ErrInvalid)
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, "cannot cancel job in 'completed' status", apiErr.Body.Message)
	_, err = c.Submit(ctx, rest.JobRequest{ImageURL: imageURL, VolumeName: "vm-x", VolumeSizeGB: &size, Hypervisor: "hv-9"})
	require.ErrorIs(t, err, client.ErrInvalid)
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, `unknown hypervisor "hv-9"; known hypervisors: h1`, apiErr.Body.Message)

	// A failed job: Wait returns its record and a *JobError.
	bad, err := c.Submit(ctx, rest.JobRequest{ImageURL: "http://" + e.minio.Endpoint + "/" + e.bucket + "/images/missing.qcow2", VolumeName: "vm-missing", VolumeSizeGB: &size})
	require.NoError(t, err)
	j, err = c.Wait(ctx, bad.JobID)
	require.ErrorIs(t, err, client.ErrJobFailed)
	var jobErr *client.JobError
	require.ErrorAs(t, err, &jobErr)
	require.Equal(t, rest.StatusFailed, j.Status)
	require.NotEmpty(t, j.Error)
	require.Equal(t, j.Error, jobErr.Job.Error)

	// The job list, newest first, filtered by status.
	all, err := c.ListJobs(ctx, client.JobQuery{Hypervisor: "h1"})
	require.NoError(t, err)
	require.Equal(t, 2, all.Count)
	require.Equal(t, []string{bad.JobID, sub.JobID}, []string{all.Jobs[0].JobID, all.Jobs[1].JobID})
	failed, err := c.ListJobs(ctx, client.JobQuery{Statuses: []rest.Status{rest.StatusFailed}})
	require.NoError(t, err)
	require.Equal(t, 1, failed.Count)
	require.Equal(t, bad.JobID, failed.Jobs[0].JobID)
	require.Equal(t, j.Error, failed.Jobs[0].Error)
	_, err = c.ListJobs(ctx, client.JobQuery{Statuses: []rest.Status{"done"}})
	require.ErrorIs(t, err, client.ErrInvalid)

	hosts, err := c.Hosts(ctx)
	require.NoError(t, err)
	require.Len(t, hosts, 1)
	require.Equal(t, "h1", hosts[0].Name)
	require.True(t, hosts[0].Alive)
	list, err := c.ListImages(ctx, client.CacheQuery{Hypervisor: "h1"})
	require.NoError(t, err)
	require.Equal(t, 1, list.Count)
	digest, err := testenv.FileSHA256(qcow2)
	require.NoError(t, err)
	require.Equal(t, digest, list.Images[0].Checksum)
	del, err := c.DeleteImage(ctx, "h1", digest)
	require.NoError(t, err)
	require.Equal(t, rest.CacheDeleted{Status: "deleted", Checksum: digest, Hypervisor: "h1"}, del)
	fetch, err := c.FetchImage(ctx, rest.FetchRequest{ImageURL: imageURL, Hypervisor: "h1"})
	require.NoError(t, err)
	j, err = c.Wait(ctx, fetch.JobID)
	require.NoError(t, err)
	require.Equal(t, "cache_fetch", j.Kind)
}

// faultProxy sits in front of the API and breaks chosen answers.
type faultProxy struct {
	mu sync.Mutex
	// posts counts submissions that reached the API, with their keys.
	keys []string
	// lose503 answers 503 to this many submissions after the API took them.
	lose503 int
	// cutStreams ends this many event streams after their first event.
	cutStreams int
	// noStream answers the events path with a plain 404 (not the API's).
	noStream bool
	// lastEventIDs are the Last-Event-ID headers of event stream requests.
	lastEventIDs []string
	srv          *httptest.Server
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	u, err := url.Parse(target)
	require.NoError(t, err)
	p := &faultProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/api/v1/jobs":
			p.keys = append(p.keys, r.Header.Get(rest.HeaderIdempotencyKey))
			if p.lose503 > 0 {
				p.lose503--
				p.mu.Unlock()
				// The API takes the job; its answer is lost.
				rec := httptest.NewRecorder()
				rp.ServeHTTP(rec, r)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, `{"error":"service unavailable","message":"injected","code":503}`)
				return
			}
		case strings.HasSuffix(r.URL.Path, "/events"):
			p.lastEventIDs = append(p.lastEventIDs, r.Header.Get("Last-Event-ID"))
			if p.noStream {
				p.mu.Unlock()
				http.Error(w, "no such page", http.StatusNotFound)
				return
			}
			if p.cutStreams > 0 {
				p.cutStreams--
				p.mu.Unlock()
				p.cutAfterFirstEvent(w, r, target)
				return
			}
		}
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

// cutAfterFirstEvent relays an event stream up to its first event, then
// drops the connection.
func (p *faultProxy) cutAfterFirstEvent(w http.ResponseWriter, r *http.Request, target string) {
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, target+r.URL.RequestURI(), nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	req.Header = r.Header.Clone()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	var buf []byte
	chunk := make([]byte, 1024)
	for !strings.Contains(string(buf), "\n\n") {
		n, err := resp.Body.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if err != nil {
			break
		}
	}
	if end := strings.Index(string(buf), "\n\n"); end >= 0 {
		buf = buf[:end+2]
	}
	_, _ = w.Write(buf)
	w.(http.Flusher).Flush()
	if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
		conn.Close()
	}
}

// TestClientRetriesAndReconnects: a submission whose answer is lost (503
// after the API took it) is retried with the same Idempotency-Key and makes
// one job; a watch whose event stream breaks reconnects with Last-Event-ID
// and repeats no event; a watch through something that does not stream
// polls.
func TestClientRetriesAndReconnects(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	e.startWorker("h1", "PROVISIONER_WRITE_LIMIT=8388608")
	qcow2, _ := image(t, 32<<20, 22)
	imageURL := e.upload("images/retry.qcow2", qcow2, true)
	proxy := newFaultProxy(t, e.apiURL)
	c := newClient(t, proxy.srv.URL, client.WithPollInterval(100*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	proxy.lose503 = 1
	size := int64(1)
	sub, err := c.Submit(ctx, rest.JobRequest{ImageURL: imageURL, VolumeName: "vm-retry", VolumeSizeGB: &size})
	require.NoError(t, err)
	require.True(t, sub.Replayed, "the retry found the job the lost answer named")
	proxy.mu.Lock()
	require.Len(t, proxy.keys, 2)
	require.NotEmpty(t, proxy.keys[0])
	require.Equal(t, proxy.keys[0], proxy.keys[1], "one Idempotency-Key across the retries")
	proxy.cutStreams = 2
	proxy.mu.Unlock()

	var events []rest.Event
	for ev, err := range c.Watch(ctx, sub.JobID) {
		require.NoError(t, err)
		events = append(events, ev)
	}
	require.Equal(t, "completed", events[len(events)-1].Status)
	proxy.mu.Lock()
	ids := proxy.lastEventIDs
	proxy.mu.Unlock()
	require.GreaterOrEqual(t, len(ids), 3, "two cut streams and the one that ran to the end")
	require.Empty(t, ids[0])
	for _, id := range ids[1:] {
		_, err := strconv.ParseUint(id, 10, 64)
		require.NoError(t, err, "reconnected with the last event's id, got %q", id)
	}
	for i := 1; i < len(events); i++ {
		require.NotEqual(t, events[i-1], events[i], "an event repeated after a reconnect")
	}

	// No event stream: the watch polls the job.
	proxy.mu.Lock()
	proxy.noStream = true
	proxy.mu.Unlock()
	sub2, err := c.Submit(ctx, rest.JobRequest{ImageURL: imageURL, VolumeName: "vm-poll", VolumeSizeGB: &size})
	require.NoError(t, err)
	var polled []rest.Event
	for ev, err := range c.Watch(ctx, sub2.JobID) {
		require.NoError(t, err)
		polled = append(polled, ev)
	}
	require.Equal(t, "completed", polled[len(polled)-1].Status)
	require.Greater(t, len(polled), 1, "polling saw the job change")

	// An API that is not there: unreachable, after the policy's attempts.
	dead := newClient(t, "http://127.0.0.1:1")
	_, err = dead.Get(ctx, sub.JobID)
	var unreachable *client.UnreachableError
	require.ErrorAs(t, err, &unreachable)
	require.Equal(t, 4, unreachable.Attempts)
}

// TestClientCredentials: over mutual TLS, a token, a token minted from a
// secret, and a refused one.
func TestClientCredentials(t *testing.T) {
	t.Parallel()
	s := newSecureEnv(t)
	ctx := context.Background()
	caOnly := testenv.ClientTLS(t, s.ca, nil, nil)
	secret := ""
	for kid, b := range s.keys {
		if kid == "ops" {
			secret = encodeSecret(b)
		}
	}
	minted := newClient(t, s.apiURL, client.WithTLSConfig(caOnly), client.WithTokenSecret("ops", secret, "ci"))
	hosts, err := minted.Hosts(ctx)
	require.NoError(t, err)
	require.Equal(t, "h1", hosts[0].Name)

	tok := s.token(t, auth.Claims{KeyID: "ops", Subject: "web", Hypervisors: []string{"h2"}})
	scoped := newClient(t, s.apiURL, client.WithTLSConfig(caOnly), client.WithToken(tok))
	hosts, err = scoped.Hosts(ctx)
	require.NoError(t, err)
	require.Empty(t, hosts, "a token for h2 sees no other host")
	_, err = scoped.ListImages(ctx, client.CacheQuery{Hypervisor: "h1"})
	require.ErrorIs(t, err, client.ErrForbidden)

	c, k := s.ca.Issue(t, "ci-bot", false)
	withCert := newClient(t, s.apiURL, client.WithTLSConfig(testenv.ClientTLS(t, s.ca, c, k)))
	_, err = withCert.Hosts(ctx)
	require.NoError(t, err)

	wrong := newClient(t, s.apiURL, client.WithTLSConfig(caOnly), client.WithTokenSecret("ops", encodeSecret(make([]byte, 32)), ""))
	_, err = wrong.Hosts(ctx)
	require.ErrorIs(t, err, client.ErrUnauthorized)
}

func encodeSecret(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
