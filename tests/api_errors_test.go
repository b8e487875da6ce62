package tests

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

// requireError checks a response is the API's error format with these values.
func requireError(t *testing.T, r response, code int, category, message string) {
	t.Helper()
	require.Equal(t, code, r.Status, "body: %s", r.Body)
	require.Equal(t, "application/json", r.Header.Get("Content-Type"))
	require.NotEmpty(t, r.Header.Get("X-Request-ID"))
	body := r.json(t)
	require.Equal(t, map[string]any{"error": category, "message": message, "code": float64(code)}, body)
}

func TestAPIErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	url := "http://" + e.minio.Endpoint + "/" + e.bucket + "/x.qcow2"
	post := func(body any) response { return e.do(http.MethodPost, "/api/v1/jobs", body) }

	requireError(t, post(map[string]any{"volume_size_gb": 1}), 400, "invalid request", "image_url and volume_name are required")
	requireError(t, post(map[string]any{"image_url": url, "volume_size_gb": 1}), 400, "invalid request", "volume_name is required")
	requireError(t, post(map[string]any{"image_url": url, "volume_name": "v"}), 400, "invalid request", "volume_size_gb is required")
	requireError(t, post(`{"image_url": `), 400, "invalid request", "malformed JSON: the body ends before the JSON object does")
	requireError(t, post(""), 400, "invalid request", "request body is empty; send a JSON object")
	requireError(t, post(map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": "ten"}), 400, "invalid request", `field "volume_size_gb" must be a whole number, not string`)
	requireError(t, post(map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": 1, "colour": "red"}), 400, "invalid request", `unknown field "colour"`)
	requireError(t, post(map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": 0}), 400, "invalid request", "volume_size_gb: must be between 1 and 65536 (GiB), not 0")
	requireError(t, post(map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": -3}), 400, "invalid request", "volume_size_gb: must be between 1 and 65536 (GiB), not -3")
	requireError(t, post(map[string]any{"image_url": url, "volume_name": "../etc/passwd", "volume_size_gb": 1}), 400, "invalid request", `volume_name: "../etc/passwd" may hold only letters, digits, '_', '.' and '-'`)
	requireError(t, post(map[string]any{"image_url": url, "volume_name": "-v", "volume_size_gb": 1}), 400, "invalid request", "volume_name: must not start with '-'")
	requireError(t, post(map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": 1, "image_type": "vmdk"}), 400, "invalid request", `image_type: must be "qcow2" or "raw", not "vmdk"`)
	requireError(t, post(map[string]any{"image_url": "file:///etc/passwd", "volume_name": "v", "volume_size_gb": 1}), 400, "invalid request", `image_url: scheme must be http or https, not "file"`)
	requireError(t, post(map[string]any{"image_url": url + "?x=1", "volume_name": "v", "volume_size_gb": 1}), 400, "invalid request", "image_url: must not have a query string or fragment")
	requireError(t, post(map[string]any{"image_url": "http://elsewhere.example:9000/images/x.qcow2", "volume_name": "v", "volume_size_gb": 1}), 400, "invalid request",
		"image_url: endpoint elsewhere.example:9000 is not a configured object store (allowed: "+e.minio.Endpoint+")")
	requireError(t, post(map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": 1, "hypervisor": "nowhere"}), 400, "invalid request",
		`unknown hypervisor "nowhere"; known hypervisors: h1`)
	requireError(t, post(strings.Repeat(" ", 70<<10)+"{}"), 413, "invalid request", "request body is larger than 65536 bytes")

	requireError(t, e.do(http.MethodPost, "/api/v1/cache/fetch", map[string]any{}), 400, "invalid request", "image_url is required")
	requireError(t, e.do(http.MethodGet, "/api/v1/cache/images?limit=0", nil), 400, "invalid request", `limit must be an integer between 1 and 1000, not "0"`)
	requireError(t, e.do(http.MethodGet, "/api/v1/cache/images?offset=-1", nil), 400, "invalid request", `offset must be an integer between 0 and 2147483647, not "-1"`)
	requireError(t, e.do(http.MethodGet, "/api/v1/cache/images?hypervisor=zz", nil), 400, "invalid request", `unknown hypervisor "zz"; known hypervisors: h1`)

	missing := "550e8400-e29b-41d4-a716-446655440000"
	requireError(t, e.do(http.MethodGet, "/api/v1/jobs/"+missing, nil), 404, "job not found", "job not found")
	requireError(t, e.do(http.MethodPost, "/api/v1/jobs/"+missing+"/cancel", nil), 404, "job not found", "job not found")
	requireError(t, e.do(http.MethodGet, "/api/v1/jobs/not-a-uuid", nil), 400, "invalid request", `job_id "not-a-uuid" is not a UUID`)
	requireError(t, e.do(http.MethodGet, "/api/v1/nothing", nil), 404, "not found", "no such endpoint: GET /api/v1/nothing")
	requireError(t, e.do(http.MethodDelete, "/api/v1/jobs", nil), 405, "method not allowed", "DELETE is not allowed on /api/v1/jobs")

	// A request id is generated when the caller sends none, and echoed otherwise.
	r := e.do(http.MethodGet, "/health", nil)
	require.Len(t, r.Header.Get("X-Request-ID"), 36)
	require.Equal(t, "mine-1", e.do(http.MethodGet, "/health", nil, "X-Request-ID", "mine-1").Header.Get("X-Request-ID"))
	h := r.json(t)
	require.Equal(t, "healthy", h["status"])
	require.NotEmpty(t, h["version"])
	require.NotEmpty(t, h["uptime"])
	_, err := time.Parse(time.RFC3339, h["timestamp"].(string))
	require.NoError(t, err)
	for _, p := range []string{"/healthz", "/livez"} {
		require.Equal(t, "healthy", e.do(http.MethodGet, p, nil).json(t)["status"])
	}
	metrics := string(e.do(http.MethodGet, "/metrics", nil).Body)
	require.Contains(t, metrics, `libvirt_volume_provisioner_requests_total{endpoint="/api/v1/jobs/{job_id}",method="GET",status="404"} 1`)
	require.Contains(t, metrics, "go_goroutines")
}

func TestNoDefaultHypervisor(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{apiEnv: []string{"PROVISIONER_DEFAULT_HYPERVISOR="}})
	url := "http://" + e.minio.Endpoint + "/" + e.bucket + "/x.qcow2"
	requireError(t, e.do(http.MethodPost, "/api/v1/jobs", map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": 1}), 400, "invalid request",
		"hypervisor is required (no default is configured); known hypervisors: h1")
}

func TestCancelCompletedIs400(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	qcow2, _ := image(t, 4<<20, 5)
	url := e.upload("images/c.qcow2", qcow2, true)
	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-c", "volume_size_gb": 1})
	e.waitStatus(id, "completed")
	requireError(t, e.do(http.MethodPost, "/api/v1/jobs/"+id+"/cancel", nil), 400, "failed to cancel job", "cannot cancel job in 'completed' status")
}

// TestNATSUnreachable runs the API against an external NATS server and
// stops that server: requests get a prompt 503, not a hang.
func TestNATSUnreachable(t *testing.T) {
	t.Parallel()
	m := requireMinIO(t)
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true})
	require.NoError(t, err)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second))
	port, err := testenv.FreePort()
	require.NoError(t, err)
	e := &env{t: t, dir: t.TempDir(), apiURL: "http://127.0.0.1:" + itoa(port), minio: m}
	e.api = startProc(t, "api", e.dir+"/api.log", []string{"PROVISIONER_HTTP_ADDR=127.0.0.1:" + itoa(port), "PROVISIONER_NATS_URL=" + ns.ClientURL(), "PROVISIONER_DEFAULT_HYPERVISOR=h1", "MINIO_ENDPOINT=" + m.Endpoint})
	e.waitHTTP(e.apiURL + "/livez")
	ns.Shutdown()
	ns.WaitForShutdown()
	time.Sleep(200 * time.Millisecond)

	start := time.Now()
	r := e.do(http.MethodPost, "/api/v1/jobs", map[string]any{"image_url": "http://" + m.Endpoint + "/images/x.qcow2", "volume_name": "v", "volume_size_gb": 1})
	requireError(t, r, 503, "service unavailable", "NATS is unreachable; try again later")
	require.Less(t, time.Since(start), 3*time.Second)
	requireError(t, e.do(http.MethodGet, "/api/v1/jobs/550e8400-e29b-41d4-a716-446655440000", nil), 503, "service unavailable", "NATS is unreachable; try again later")
	h := e.do(http.MethodGet, "/health", nil).json(t)
	require.Equal(t, "degraded", h["status"])
	require.Equal(t, "unreachable", h["checks"].(map[string]any)["nats"])
	requireError(t, e.do(http.MethodGet, "/readyz", nil), 503, "service unavailable", "NATS is unreachable; try again later")
}

// TestImageURLToLoopbackNeedsConfiguration: with no configured endpoints, an
// image URL may not name loopback, link-local or metadata addresses.
func TestImageURLToLoopbackNeedsConfiguration(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{apiEnv: []string{"PROVISIONER_IMAGE_ENDPOINTS="}})
	for _, host := range []string{"127.0.0.1:9000", "169.254.169.254", "[::1]:9000", "localhost:9000"} {
		r := e.do(http.MethodPost, "/api/v1/jobs", map[string]any{"image_url": "http://" + host + "/images/x.qcow2", "volume_name": "v", "volume_size_gb": 1})
		require.Equal(t, 400, r.Status, host)
		require.Contains(t, r.json(t)["message"], "is a loopback, link-local or metadata address; an operator must configure it in PROVISIONER_IMAGE_ENDPOINTS to allow it")
	}
	r := e.do(http.MethodPost, "/api/v1/jobs", map[string]any{"image_url": "http://minio.example:9000/images/x.qcow2", "volume_name": "v", "volume_size_gb": 1})
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
}
