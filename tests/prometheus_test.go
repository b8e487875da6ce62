package tests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

const promInstall = "apt-get install prometheus"

// promBinary finds prometheus or promtool, or fails (CI) or skips.
func promBinary(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		testenv.Missing(t, name, promInstall)
	}
	return p
}

// TestAlertRules checks the shipped Prometheus configuration and alert rules
// and runs the rules' unit tests.
func TestAlertRules(t *testing.T) {
	t.Parallel()
	promtool := promBinary(t, "promtool")
	for _, args := range [][]string{
		{"check", "rules", "../deploy/prometheus/alerts.yml"},
		{"test", "rules", "../deploy/prometheus/alerts_test.yml"},
		{"check", "config", "../deploy/prometheus/prometheus.yml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		require.NoError(t, err, "promtool %s:\n%s", strings.Join(args, " "), out)
		require.Contains(t, string(out), "SUCCESS", "promtool %s", strings.Join(args, " "))
	}
	// Every alert has unit tests.
	rules, err := os.ReadFile("../deploy/prometheus/alerts.yml")
	require.NoError(t, err)
	tests, err := os.ReadFile("../deploy/prometheus/alerts_test.yml")
	require.NoError(t, err)
	alerts := regexp.MustCompile(`(?m)^\s*- alert:\s*(\S+)`).FindAllStringSubmatch(string(rules), -1)
	require.NotEmpty(t, alerts)
	for _, a := range alerts {
		require.Contains(t, string(tests), "alertname: "+a[1], "alert %s has no unit test", a[1])
	}
}

// workerAddr is the address of the worker's HTTP server, from its log line
// "worker HTTP listening".
func workerAddr(t *testing.T, p *proc) string {
	t.Helper()
	var addr string
	require.Eventually(t, func() bool {
		sc := bufio.NewScanner(strings.NewReader(p.output()))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "worker HTTP listening" && line.Addr != "" {
				addr = line.Addr
				return true
			}
		}
		return false
	}, 10*time.Second, 50*time.Millisecond, "no \"worker HTTP listening\" line with an addr in the worker's log:\n%s", p.output())
	return addr
}

// promSample is one element of an instant vector.
type promSample struct {
	Metric map[string]string
	Value  float64
}

// promQuery runs an instant query against Prometheus' HTTP API.
func promQuery(base, query string) ([]promSample, error) {
	resp, err := promHTTP.Get(base + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("query %s: HTTP %d: %s", query, resp.StatusCode, body)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query %s: %s", query, r.Error)
	}
	if r.Data.ResultType != "vector" {
		return nil, fmt.Errorf("query %s: result type %s, want vector", query, r.Data.ResultType)
	}
	var out []promSample
	for _, s := range r.Data.Result {
		str, _ := s.Value[1].(string)
		v, err := strconv.ParseFloat(str, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %v: %w", query, s.Value[1], err)
		}
		out = append(out, promSample{Metric: s.Metric, Value: v})
	}
	return out, nil
}

// waitQuery polls query until ok accepts its result and returns that result.
func waitQuery(t *testing.T, base, query string, timeout time.Duration, ok func([]promSample) bool) []promSample {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var (
		last []promSample
		err  error
	)
	for time.Now().Before(deadline) {
		last, err = promQuery(base, query)
		if err == nil && ok(last) {
			return last
		}
		time.Sleep(250 * time.Millisecond)
	}
	require.NoError(t, err)
	t.Fatalf("query %s: condition not met within %s; last result: %+v", query, timeout, last)
	return nil
}

// byJob indexes samples by their job label.
func byJob(s []promSample) map[string]float64 {
	m := map[string]float64{}
	for _, x := range s {
		m[x.Metric["job"]] = x.Value
	}
	return m
}

// startPrometheus runs a Prometheus server with config and returns its URL.
func startPrometheus(t *testing.T, config string) string {
	t.Helper()
	bin := promBinary(t, "prometheus")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	require.NoError(t, os.WriteFile(cfg, []byte(config), 0o644))
	port, err := testenv.FreePort()
	require.NoError(t, err)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	var logBuf bytes.Buffer
	logs := &lockedWriter{w: &logBuf}
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.WaitDelay = 5 * time.Second // a child holding the pipe does not keep Wait
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("prometheus log:\n%s", tail(logs.String(), 6000))
		}
	})
	base := "http://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := promHTTP.Get(base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base
			}
		}
		select {
		case <-done:
			t.Fatalf("prometheus exited:\n%s", logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready within 30s:\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPrometheusScrapesAPIAndWorker runs a real Prometheus against an API and
// a worker, with the shipped alert rules loaded, and checks what it stored
// of a job it watched run.
func TestPrometheusScrapesAPIAndWorker(t *testing.T) {
	t.Parallel()
	promBinary(t, "prometheus")
	e := newEnv(t, envOptions{noWorker: true})
	// A third of a test image's blocks hold data: 96 MiB of virtual disk is
	// 32 MiB written at 8 MiB/s, so the job runs for a few 1 s scrapes.
	const imageSize = 96 << 20
	w := e.startWorker("h1", "PROVISIONER_WRITE_LIMIT=8388608")
	apiAddr := strings.TrimPrefix(e.apiURL, "http://")
	wAddr := workerAddr(t, w)
	rules, err := filepath.Abs("../deploy/prometheus/alerts.yml")
	require.NoError(t, err)

	base := startPrometheus(t, fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: provisioner-api
    static_configs:
      - targets: [%q]
  - job_name: provisioner-worker
    static_configs:
      - targets: [%q]
        labels:
          host: h1
`, rules, apiAddr, wAddr))

	// Both targets are scraped before the job starts.
	up := waitQuery(t, base, "up", 30*time.Second, func(s []promSample) bool {
		m := byJob(s)
		return len(s) == 2 && m["provisioner-api"] == 1 && m["provisioner-worker"] == 1
	})
	for _, s := range up {
		if s.Metric["job"] == "provisioner-worker" {
			require.Equal(t, "h1", s.Metric["host"])
			require.Equal(t, wAddr, s.Metric["instance"])
		} else {
			require.Equal(t, apiAddr, s.Metric["instance"])
		}
	}

	qcow2, _ := image(t, imageSize, 21)
	imageURL := e.upload("images/prom.qcow2", qcow2, true)
	id := e.submit(map[string]any{"image_url": imageURL, "volume_name": "vm-prom", "volume_size_gb": 1})
	j := e.waitStatus(id, "completed")
	require.NotNil(t, j.StartedAt)
	require.NotNil(t, j.FinishedAt)
	t.Logf("job ran for %s", j.FinishedAt.Sub(*j.StartedAt))

	// The worker's count of completed jobs appears with the first scrape
	// after the job ended.
	completed := waitQuery(t, base, `libvirt_volume_provisioner_jobs_total{status="completed"}`, 30*time.Second,
		func(s []promSample) bool { return len(s) > 0 && s[0].Value > 0 })
	require.Len(t, completed, 1, "%+v", completed)
	require.Equal(t, "provisioner-worker", completed[0].Metric["job"])
	require.Equal(t, "h1", completed[0].Metric["host"])
	require.Equal(t, 1.0, completed[0].Value)

	requests := waitQuery(t, base, `libvirt_volume_provisioner_requests_total{endpoint="/api/v1/jobs",method="POST",status="202"}`, 30*time.Second,
		func(s []promSample) bool { return len(s) > 0 && s[0].Value > 0 })
	require.Len(t, requests, 1, "%+v", requests)
	require.Equal(t, "provisioner-api", requests[0].Metric["job"])
	require.Equal(t, 1.0, requests[0].Value)

	started, err := promQuery(base, `libvirt_volume_provisioner_jobs_total{status="started"}`)
	require.NoError(t, err)
	require.Len(t, started, 1, "%+v", started)
	require.Equal(t, "provisioner-api", started[0].Metric["job"])
	require.Equal(t, 1.0, started[0].Value)

	// A scrape during the job saw it running; none saw two.
	active, err := promQuery(base, `max_over_time(libvirt_volume_provisioner_active_jobs[5m])`)
	require.NoError(t, err)
	require.Len(t, active, 1, "%+v", active)
	require.Equal(t, "h1", active[0].Metric["host"])
	require.Equal(t, 1.0, active[0].Value, "no scrape saw the job running")
	now, err := promQuery(base, `libvirt_volume_provisioner_active_jobs`)
	require.NoError(t, err)
	require.Len(t, now, 1)
	require.Equal(t, 0.0, now[0].Value)

	miss, err := promQuery(base, `libvirt_volume_provisioner_cache_lookups_total{result="miss"}`)
	require.NoError(t, err)
	require.Len(t, miss, 1, "%+v", miss)
	require.Equal(t, 1.0, miss[0].Value)
	hit, err := promQuery(base, `libvirt_volume_provisioner_cache_lookups_total{result="hit"}`)
	require.NoError(t, err)
	for _, s := range hit {
		require.Equal(t, 0.0, s.Value)
	}

	st, err := os.Stat(qcow2)
	require.NoError(t, err)
	downloaded, err := promQuery(base, `libvirt_volume_provisioner_downloaded_bytes_total`)
	require.NoError(t, err)
	require.Len(t, downloaded, 1)
	require.Equal(t, float64(st.Size()), downloaded[0].Value)
	populated, err := promQuery(base, `libvirt_volume_provisioner_populated_bytes_total`)
	require.NoError(t, err)
	require.Len(t, populated, 1)
	// The image's virtual size; the rest of the 1 GiB volume is not written.
	require.Equal(t, float64(imageSize), populated[0].Value)

	durations, err := promQuery(base, `libvirt_volume_provisioner_job_duration_seconds_count{outcome="completed"}`)
	require.NoError(t, err)
	require.Len(t, durations, 1)
	require.Equal(t, 1.0, durations[0].Value)

	up = waitQuery(t, base, "up", 5*time.Second, func(s []promSample) bool { return len(s) == 2 })
	m := byJob(up)
	require.Equal(t, 1.0, m["provisioner-api"])
	require.Equal(t, 1.0, m["provisioner-worker"])

	// The shipped rules loaded and evaluate without errors, and none fires.
	requireRulesHealthy(t, base)
	alerts, err := promQuery(base, `ALERTS`)
	require.NoError(t, err)
	require.Empty(t, alerts)

	// Every query of the Grafana dashboard is valid PromQL.
	requireDashboardQueries(t, base)
}

// requireRulesHealthy waits until Prometheus evaluated every rule of
// alerts.yml and checks none failed.
func requireRulesHealthy(t *testing.T, base string) {
	t.Helper()
	var last string
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := promHTTP.Get(base + "/api/v1/rules")
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		last = string(body)
		var r struct {
			Data struct {
				Groups []struct {
					Rules []struct {
						Name           string `json:"name"`
						Health         string `json:"health"`
						LastError      string `json:"lastError"`
						LastEvaluation string `json:"lastEvaluation"`
					} `json:"rules"`
				} `json:"groups"`
			} `json:"data"`
		}
		require.NoError(t, json.Unmarshal(body, &r))
		n, ok := 0, true
		for _, g := range r.Data.Groups {
			for _, rule := range g.Rules {
				n++
				require.NotEqual(t, "err", rule.Health, "rule %s: %s", rule.Name, rule.LastError)
				if rule.Health != "ok" {
					ok = false
				}
			}
		}
		if n > 0 && ok {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("rules not all evaluated within 15s: %s", last)
}

// requireDashboardQueries runs every query of the Grafana dashboard.
func requireDashboardQueries(t *testing.T, base string) {
	t.Helper()
	data, err := os.ReadFile("../deploy/grafana/provisioner.json")
	require.NoError(t, err)
	var exprs []string
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				if s, ok := c.(string); ok && k == "expr" {
					exprs = append(exprs, s)
				}
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	var dash any
	require.NoError(t, json.Unmarshal(data, &dash))
	walk(dash)
	require.NotEmpty(t, exprs)
	r := strings.NewReplacer("$__rate_interval", "1m", "$host", ".*")
	for _, e := range exprs {
		_, err := promQuery(base, r.Replace(e))
		require.NoError(t, err, "dashboard query %s", e)
	}
}

// TestPromtoolCheckMetrics lints the API's and a worker's /metrics, after a
// job, with promtool check metrics.
func TestPromtoolCheckMetrics(t *testing.T) {
	t.Parallel()
	promtool := promBinary(t, "promtool")
	e := newEnv(t, envOptions{noWorker: true})
	w := e.startWorker("h1")
	qcow2, _ := image(t, 4<<20, 22)
	imageURL := e.upload("images/lint.qcow2", qcow2, true)
	e.waitStatus(e.submit(map[string]any{"image_url": imageURL, "volume_name": "vm-lint", "volume_size_gb": 1}), "completed")

	for name, u := range map[string]string{"api": e.apiURL + "/metrics", "worker": "http://" + workerAddr(t, w) + "/metrics"} {
		resp, err := promHTTP.Get(u)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", name, body)
		require.Contains(t, string(body), "libvirt_volume_provisioner_jobs_total", name)

		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader(body)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "promtool check metrics on the %s's /metrics:\n%s", name, out)
		require.Empty(t, string(out), "promtool check metrics on the %s's /metrics", name)
	}
}

// lockedWriter is a writer safe for the concurrent writes of a process's
// stdout and stderr and reads of what they wrote.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// promHTTP is the client for Prometheus's and the exporters' HTTP: a
// stuck request fails the test within a minute.
var promHTTP = &http.Client{Timeout: time.Minute}
