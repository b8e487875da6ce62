package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

var (
	binDir   string
	minioSrv *testenv.MinIO
	setupErr error
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "provisioner-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = filepath.Join(dir, "bin")
	build := exec.Command("go", "build", "-o", binDir+"/", "../cmd/api", "../cmd/worker", "../cmd/provisioner-nats", "../cmd/provisionerctl")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		return 1
	}
	if err := os.MkdirAll(filepath.Join(dir, "minio"), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	minioSrv, setupErr = testenv.StartMinIO(filepath.Join(dir, "minio"))
	if setupErr == nil {
		defer minioSrv.Stop()
	}
	return m.Run()
}

// requireMinIO fails (CI) or skips when MinIO could not start.
func requireMinIO(t *testing.T) *testenv.MinIO {
	t.Helper()
	if setupErr != nil {
		testenv.Missing(t, "MinIO server", "run scripts/install-minio.sh ("+setupErr.Error()+")")
	}
	return minioSrv
}

// proc is a running binary.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func startProc(t *testing.T, name, logPath string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	cmd.Env = append(os.Environ(), env...)
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = f, f
	require.NoError(t, cmd.Start())
	p := &proc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop() })
	return p
}

// stop sends SIGTERM and, after 10 s, SIGKILL.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// kill sends SIGKILL, as a crash would.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *proc) output() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// env is one test's provisioner: an API with its embedded NATS and workers.
type env struct {
	t         *testing.T
	dir       string
	apiURL    string
	natsURL   string
	api       *proc
	minio     *testenv.MinIO
	bucket    string
	mu        sync.Mutex
	workers   map[string]*proc
	cacheDirs map[string]string
	volDirs   map[string]string
	// client talks to the API (http.DefaultClient when nil).
	client *http.Client
}

func (e *env) httpClient() *http.Client {
	if e.client != nil {
		return e.client
	}
	return defaultClient
}

// defaultClient is the tests' HTTP client for the API: no request of a
// test waits longer than a minute for its answer (a stuck request fails
// the test instead of holding the package until its timeout).
var defaultClient = &http.Client{Timeout: time.Minute}

type envOptions struct {
	// client is the HTTP client for the API (http.DefaultClient when nil).
	client *http.Client
	// tls: the API is reached over https.
	tls bool
	// noWorker starts no worker.
	noWorker bool
	// apiEnv adds environment to the API.
	apiEnv []string
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	m := requireMinIO(t)
	dir := t.TempDir()
	httpPort, err := testenv.FreePort()
	require.NoError(t, err)
	natsPort, err := testenv.FreePort()
	require.NoError(t, err)
	scheme := "http"
	if o.tls {
		scheme = "https"
	}
	e := &env{t: t, dir: dir, apiURL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, httpPort), natsURL: fmt.Sprintf("nats://127.0.0.1:%d", natsPort), client: o.client,
		minio: m, bucket: "b" + strconv.FormatInt(time.Now().UnixNano(), 36), workers: map[string]*proc{}, cacheDirs: map[string]string{}, volDirs: map[string]string{}}
	apiEnv := append([]string{
		"PROVISIONER_HTTP_ADDR=127.0.0.1:" + strconv.Itoa(httpPort),
		"PROVISIONER_NATS_URL=",
		"PROVISIONER_NATS_LISTEN=127.0.0.1:" + strconv.Itoa(natsPort),
		"PROVISIONER_DATA_DIR=" + filepath.Join(dir, "var"),
		"PROVISIONER_DEFAULT_HYPERVISOR=h1",
		"PROVISIONER_JETSTREAM_MAX_STORE=1073741824",
		"MINIO_ENDPOINT=" + m.Endpoint,
		"PROVISIONER_LOG_LEVEL=info",
	}, o.apiEnv...)
	e.api = startProc(t, "api", filepath.Join(dir, "api.log"), apiEnv)
	e.waitHTTP(e.apiURL + "/livez")
	require.NoError(t, m.Bucket(context.Background(), e.bucket))
	if !o.noWorker {
		e.startWorker("h1")
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("api log:\n%s", tail(e.api.output(), 6000))
			for name, w := range e.workers {
				t.Logf("worker %s log:\n%s", name, tail(w.output(), 6000))
			}
		}
	})
	return e
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (e *env) waitHTTP(url string) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := e.httpClient().Get(url)
		if err == nil {
			resp.Body.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("%s did not answer within 20s\napi log:\n%s", url, e.api.output())
}

// workerEnv is the environment of a worker for host.
func (e *env) workerEnv(host string, extra ...string) []string {
	port, err := testenv.FreePort()
	require.NoError(e.t, err)
	e.mu.Lock()
	if e.cacheDirs[host] == "" {
		e.cacheDirs[host] = filepath.Join(e.dir, host, "cache")
		e.volDirs[host] = filepath.Join(e.dir, host, "volumes")
	}
	cacheDir, volDir := e.cacheDirs[host], e.volDirs[host]
	e.mu.Unlock()
	return append([]string{
		"PROVISIONER_HOST=" + host,
		"PROVISIONER_MACHINE_ID=machine-" + host,
		"PROVISIONER_HTTP_ADDR=127.0.0.1:" + strconv.Itoa(port),
		"PROVISIONER_NATS_URL=" + e.natsURL,
		"PROVISIONER_NATS_NKEY=" + e.credential("worker.nk"),
		"PROVISIONER_ACK_WAIT=3s",
		"PROVISIONER_HEARTBEAT=1s",
		"PROVISIONER_CACHE_DIR=" + cacheDir,
		"PROVISIONER_VOLUME_DIR=" + volDir,
		"PROVISIONER_VOLUME_BACKEND=file",
		"MINIO_ENDPOINT=" + e.minio.Endpoint,
		"MINIO_ACCESS_KEY=" + e.minio.AccessKey,
		"MINIO_SECRET_KEY=" + e.minio.SecretKey,
		"PROVISIONER_LOG_LEVEL=info",
	}, extra...)
}

// startWorker starts a worker for host and waits until it registered.
func (e *env) startWorker(host string, extra ...string) *proc {
	e.t.Helper()
	p := startProc(e.t, "worker", filepath.Join(e.dir, "worker-"+host+".log"), e.workerEnv(host, extra...))
	e.mu.Lock()
	e.workers[host] = p
	e.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(p.output(), `"worker started"`) {
			return p
		}
		select {
		case <-p.done:
			e.t.Fatalf("worker %s exited: %v\n%s", host, p.err, p.output())
		case <-time.After(50 * time.Millisecond):
		}
	}
	e.t.Fatalf("worker %s did not start:\n%s", host, p.output())
	return nil
}

func (e *env) volumePath(host, name string) string { return filepath.Join(e.volDirs[host], name) }

// response is an HTTP answer.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.Body, &m), "body: %s", r.Body)
	return m
}

func (e *env) do(method, path string, body any, headers ...string) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		require.NoError(e.t, err)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, e.apiURL+path, rd)
	require.NoError(e.t, err)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return e.send(req, headers...)
}

// job is a job record as the API returns it.
type job struct {
	JobID    string `json:"job_id"`
	Status   string `json:"status"`
	Progress *struct {
		Stage   string `json:"stage"`
		Percent int    `json:"percent"`
	} `json:"progress"`
	CacheHit   *bool      `json:"cache_hit"`
	ImagePath  string     `json:"image_path"`
	Error      string     `json:"error"`
	Attempt    int        `json:"attempt"`
	Hypervisor string     `json:"hypervisor"`
	VolumePath string     `json:"volume_path"`
	TraceID    string     `json:"trace_id"`
	StartedAt  *time.Time `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
}

// submit posts a provisioning job and returns its id.
func (e *env) submit(body map[string]any) string {
	e.t.Helper()
	r := e.do(http.MethodPost, "/api/v1/jobs", body)
	require.Equal(e.t, http.StatusAccepted, r.Status, "body: %s", r.Body)
	id, _ := r.json(e.t)["job_id"].(string)
	require.Len(e.t, id, 36)
	return id
}

func (e *env) getJob(id string) job {
	e.t.Helper()
	r := e.do(http.MethodGet, "/api/v1/jobs/"+id, nil)
	require.Equal(e.t, http.StatusOK, r.Status, "body: %s", r.Body)
	var j job
	require.NoError(e.t, json.Unmarshal(r.Body, &j))
	return j
}

// waitJob polls until the job's status satisfies ok.
func (e *env) waitJob(id string, timeout time.Duration, ok func(job) bool) job {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var j job
	for time.Now().Before(deadline) {
		j = e.getJob(id)
		if ok(j) {
			return j
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("job %s: condition not met within %s; last: %+v", id, timeout, j)
	return j
}

func (e *env) waitStatus(id, status string) job {
	e.t.Helper()
	return e.waitJob(id, 60*time.Second, func(j job) bool {
		if j.Status != status && (j.Status == "completed" || j.Status == "failed" || j.Status == "cancelled") {
			e.t.Fatalf("job %s ended %s (error %q), want %s", id, j.Status, j.Error, status)
		}
		return j.Status == status
	})
}

// credential is the path of a key the embedded NATS server generated.
func (e *env) credential(name string) string { return filepath.Join(e.dir, "var", "credentials", name) }

// connectNATS connects as an operator (the admin key).
func (e *env) connectNATS() *nats.Conn {
	e.t.Helper()
	nc, err := nats.Connect(e.natsURL, nats.Name("test-operator"), mustNkey(e.t, e.credential("admin.nk")))
	require.NoError(e.t, err)
	e.t.Cleanup(nc.Close)
	return nc
}

// upload puts an image (and, with checksum, its .sha256) into the test's bucket.
func (e *env) upload(object, path string, checksum bool) string {
	e.t.Helper()
	url, _, err := e.minio.PutImage(context.Background(), e.bucket, object, path, checksum)
	require.NoError(e.t, err)
	return url
}

// requireVolume checks a volume file is the reference raw image's bytes
// followed by zeros to size.
func requireVolume(t *testing.T, path, refRaw string, size int64) {
	t.Helper()
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, size, st.Size(), "volume size")
	vol, err := os.Open(path)
	require.NoError(t, err)
	defer vol.Close()
	ref, err := os.Open(refRaw)
	require.NoError(t, err)
	defer ref.Close()
	a := make([]byte, 1<<20)
	b := make([]byte, 1<<20)
	var off int64
	for {
		n, rerr := io.ReadFull(ref, b)
		if n > 0 {
			_, err := io.ReadFull(vol, a[:n])
			require.NoError(t, err)
			require.True(t, bytes.Equal(a[:n], b[:n]), "volume differs from the image within [%d, %d)", off, off+int64(n))
			off += int64(n)
		}
		if rerr != nil {
			break
		}
	}
	for {
		n, err := vol.Read(a)
		for i := range a[:n] {
			if a[i] != 0 {
				t.Fatalf("volume byte %d past the image's end is %#x, want 0", off+int64(i), a[i])
			}
		}
		off += int64(n)
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
	}
	require.Equal(t, size, off)
}

func itoa(n int) string { return strconv.Itoa(n) }

func mustNkey(t *testing.T, path string) nats.Option {
	t.Helper()
	opt, err := nats.NkeyOptionFromSeed(path)
	require.NoError(t, err)
	return opt
}

// send sends req with the extra header pairs and reads the whole answer.
func (e *env) send(req *http.Request, headers ...string) response {
	e.t.Helper()
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := e.httpClient().Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(e.t, err)
	return response{Status: resp.StatusCode, Header: resp.Header, Body: data}
}
