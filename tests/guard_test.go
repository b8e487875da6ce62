package tests

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// rawRequest sends a request exactly as given: Host, Origin and
// Content-Type are the caller's, nothing is added.
func (e *env) rawRequest(method, path, host, contentType, body string, headers ...string) response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.apiURL+path, strings.NewReader(body))
	require.NoError(e.t, err)
	if host != "" {
		req.Host = host
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return e.send(req, headers...)
}

// TestCSRFAndDNSRebindingRefused replays the CSRF/DNS-rebinding attack on the default
// loopback API with no authentication: a web page posting a job as
// text/plain with a foreign Origin and Host, and a rebound name reading the
// cache list. Each part is refused on its own, in the error format; curl-like
// clients (no Origin, the listener's Host) and the probes keep working.
func TestCSRFAndDNSRebindingRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	u, err := url.Parse(e.apiURL)
	require.NoError(t, err)
	port := u.Port()
	body := fmt.Sprintf(`{"image_url":"http://%s/%s/x.qcow2","volume_name":"vm-victim","volume_size_gb":1}`, e.minio.Endpoint, e.bucket)

	// The attack as written: all three at once.
	r := e.rawRequest(http.MethodPost, "/api/v1/jobs", "evil.example", "text/plain", body, "Origin", "https://evil.example")
	requireError(t, r, 403, "forbidden", `Host "evil.example" does not name this API; an operator can allow it in PROVISIONER_ALLOWED_HOSTS`)
	// A rebound name reading the cache list.
	requireError(t, e.rawRequest(http.MethodGet, "/api/v1/cache/images", "evil.example:"+port, "", ""), 403, "forbidden",
		`Host "evil.example:`+port+`" does not name this API; an operator can allow it in PROVISIONER_ALLOWED_HOSTS`)
	// A page on another origin, reaching the API by its own address.
	requireError(t, e.rawRequest(http.MethodPost, "/api/v1/jobs", "", "application/json", body, "Origin", "https://evil.example"), 403, "forbidden",
		`cross-origin requests from "https://evil.example" are not allowed; an operator can allow the origin in PROVISIONER_CORS_ORIGINS`)
	requireError(t, e.rawRequest(http.MethodGet, "/api/v1/cache/images", "", "", "", "Origin", "null"), 403, "forbidden",
		`cross-origin requests from "null" are not allowed; an operator can allow the origin in PROVISIONER_CORS_ORIGINS`)
	// A simple (preflight-free) cross-site form post: its body is not JSON.
	for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""} {
		requireError(t, e.rawRequest(http.MethodPost, "/api/v1/jobs", "", ct, body), 415, "unsupported media type",
			fmt.Sprintf("request body must be JSON with Content-Type: application/json, not %q", ct))
	}
	requireError(t, e.rawRequest(http.MethodPost, "/api/v1/cache/fetch", "", "text/plain", `{"image_url":"x"}`), 415, "unsupported media type",
		`request body must be JSON with Content-Type: application/json, not "text/plain"`)

	// What keeps working: the listener's own address, localhost on a
	// loopback listener, the API's own origin, JSON with a charset, and the
	// probes by any name (Prometheus scrapes its target's address).
	require.Equal(t, 200, e.rawRequest(http.MethodGet, "/api/v1/cache/images", "", "", "").Status)
	require.Equal(t, 200, e.rawRequest(http.MethodGet, "/api/v1/cache/images", "localhost:"+port, "", "").Status)
	require.Equal(t, 200, e.rawRequest(http.MethodGet, "/api/v1/cache/images", "", "", "", "Origin", e.apiURL).Status)
	r = e.rawRequest(http.MethodPost, "/api/v1/cache/fetch", "", "application/json; charset=utf-8", `{"image_url":"http://`+e.minio.Endpoint+`/`+e.bucket+`/x.qcow2"}`)
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	for _, p := range []string{"/metrics", "/health", "/readyz"} {
		require.Equal(t, 200, e.rawRequest(http.MethodGet, p, "prometheus-target.internal:"+port, "", "").Status, p)
	}
	require.Contains(t, e.api.output(), `"msg":"request refused"`)
}

// TestAllowedHostsAndCORSOrigins: names and origins an operator configures
// pass, a preflight from a configured origin is answered, anything else is
// still refused.
func TestAllowedHostsAndCORSOrigins(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true, apiEnv: []string{"PROVISIONER_ALLOWED_HOSTS=api.example.com, lb.internal",
		"PROVISIONER_CORS_ORIGINS=https://ui.example.com"}})
	missing := "/api/v1/jobs/550e8400-e29b-41d4-a716-446655440000"
	requireError(t, e.rawRequest(http.MethodGet, missing, "api.example.com", "", ""), 404, "job not found", "job not found")
	requireError(t, e.rawRequest(http.MethodGet, missing, "LB.internal:443", "", ""), 404, "job not found", "job not found")
	require.Equal(t, 403, e.rawRequest(http.MethodGet, missing, "evil.example", "", "").Status)

	r := e.rawRequest(http.MethodGet, missing, "api.example.com", "", "", "Origin", "https://ui.example.com")
	require.Equal(t, 404, r.Status)
	require.Equal(t, "https://ui.example.com", r.Header.Get("Access-Control-Allow-Origin"))
	require.Contains(t, r.Header.Get("Access-Control-Expose-Headers"), "X-Request-ID")
	pre := e.rawRequest(http.MethodOptions, "/api/v1/jobs", "api.example.com", "", "", "Origin", "https://ui.example.com",
		"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "content-type, authorization")
	require.Equal(t, http.StatusNoContent, pre.Status)
	require.Equal(t, "https://ui.example.com", pre.Header.Get("Access-Control-Allow-Origin"))
	require.Contains(t, pre.Header.Get("Access-Control-Allow-Headers"), "Content-Type")
	require.Contains(t, pre.Header.Get("Access-Control-Allow-Methods"), "POST")
	require.Equal(t, 403, e.rawRequest(http.MethodOptions, "/api/v1/jobs", "api.example.com", "", "", "Origin", "https://evil.example",
		"Access-Control-Request-Method", "POST").Status)
}

// bigJobBody is a JSON job request of about 3 MB.
func bigJobBody() []byte {
	return []byte(`{"image_url":"http://x/` + strings.Repeat("a", 3<<20) + `","volume_name":"v","volume_size_gb":1}`)
}

// TestLargeBodyIs413 sends a 3 MB body ten times with curl (which sends
// Expect: 100-continue for it) and ten times from Go with Expect:
// 100-continue: every answer is the 413 in the error format, never a reset
// connection.
func TestLargeBodyIs413(t *testing.T) {
	t.Parallel()
	curl, err := exec.LookPath("curl")
	require.NoError(t, err, "the test needs the curl binary")
	e := newEnv(t, envOptions{noWorker: true})
	path := filepath.Join(t.TempDir(), "big.json")
	require.NoError(t, os.WriteFile(path, bigJobBody(), 0o600))
	want := `{"error":"invalid request","message":"request body is larger than 65536 bytes","code":413}`
	for i := range 10 {
		out, err := exec.Command(curl, "-sS", "-w", "\n%{http_code}", "-H", "Content-Type: application/json",
			"--data-binary", "@"+path, e.apiURL+"/api/v1/jobs").CombinedOutput()
		require.NoError(t, err, "curl attempt %d: %s", i, out)
		require.Equal(t, want+"\n\n413", string(out), "curl attempt %d", i)
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{ExpectContinueTimeout: 2 * time.Second}}
	for i := range 10 {
		req, err := http.NewRequest(http.MethodPost, e.apiURL+"/api/v1/jobs", bytes.NewReader(bigJobBody()))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Expect", "100-continue")
		resp, err := client.Do(req)
		require.NoError(t, err, "Go attempt %d", i)
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err, "Go attempt %d", i)
		require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, "Go attempt %d", i)
		require.Equal(t, want+"\n", string(data), "Go attempt %d", i)
	}
}
