package tests

import (
	"bufio"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

// scrapeFleet reads the fleet series (name{labels} value) of an API's /metrics.
func scrapeFleet(t *testing.T, base string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "libvirt_volume_provisioner_fleet_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		require.NoError(t, err, line)
		out[strings.TrimPrefix(line[:i], "libvirt_volume_provisioner_fleet_")] = v
	}
	require.NoError(t, sc.Err())
	return out
}

// TestFleetMetrics: two API replicas on one NATS report the same fleet
// figures: job records by status, the queue of a host whose worker is down
// (from its consumer), hosts alive and stale, and a drained queue's series
// gone once the worker took the jobs.
func TestFleetMetrics(t *testing.T) {
	t.Parallel()
	fast := "PROVISIONER_FLEET_METRICS_INTERVAL=300ms"
	e := newEnv(t, envOptions{noWorker: true, apiEnv: []string{fast}})
	port, err := testenv.FreePort()
	require.NoError(t, err)
	second := fmt.Sprintf("http://127.0.0.1:%d", port)
	startProc(t, "api", filepath.Join(e.dir, "api-2.log"), []string{
		"PROVISIONER_HTTP_ADDR=127.0.0.1:" + strconv.Itoa(port), "PROVISIONER_NATS_URL=" + e.natsURL,
		"PROVISIONER_NATS_NKEY=" + e.credential("api.nk"), "PROVISIONER_DEFAULT_HYPERVISOR=h1",
		"MINIO_ENDPOINT=" + e.minio.Endpoint, fast,
	})
	e.waitHTTP(second + "/livez")

	w := e.startWorker("h1")
	qcow2, _ := image(t, 16<<20, 41)
	url := e.upload("images/fleet.qcow2", qcow2, true)
	w.stop()
	var ids []string
	for i := range 3 {
		ids = append(ids, e.submit(map[string]any{"image_url": url, "volume_name": "vm-fleet-" + strconv.Itoa(i), "volume_size_gb": 1}))
	}
	require.Equal(t, 200, e.do(http.MethodPost, "/api/v1/jobs/"+ids[2]+"/cancel", nil).Status)

	// Both replicas: 2 pending, 1 cancelled, h1's queue of 2, h1 stale.
	want := map[string]float64{
		`jobs{status="pending"}`: 2, `jobs{status="running"}`: 0, `jobs{status="completed"}`: 0, `jobs{status="failed"}`: 0,
		`jobs{status="cancelled"}`: 1, `active_jobs`: 0, `queued_jobs`: 2, `host_queued_jobs{host="h1"}`: 2,
		`hosts{state="alive"}`: 0, `hosts{state="stale"}`: 1,
	}
	for _, base := range []string{e.apiURL, second} {
		requireFleet(t, base, want)
	}

	e.startWorker("h1")
	for _, id := range ids[:2] {
		e.waitStatus(id, "completed")
	}
	want = map[string]float64{
		`jobs{status="pending"}`: 0, `jobs{status="running"}`: 0, `jobs{status="completed"}`: 2, `jobs{status="failed"}`: 0,
		`jobs{status="cancelled"}`: 1, `active_jobs`: 0, `queued_jobs`: 0, `hosts{state="alive"}`: 1, `hosts{state="stale"}`: 0,
	}
	for _, base := range []string{e.apiURL, second} {
		got := requireFleet(t, base, want)
		_, perHost := got[`host_queued_jobs{host="h1"}`]
		require.False(t, perHost, "a host with an empty queue has no per-host series")
		require.InDelta(t, float64(time.Now().Unix()), got["refreshed_timestamp_seconds"], 5)
	}
}

// requireFleet waits until base's fleet figures include want.
func requireFleet(t *testing.T, base string, want map[string]float64) map[string]float64 {
	t.Helper()
	var got map[string]float64
	ok := false
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && !ok; time.Sleep(100 * time.Millisecond) {
		got = scrapeFleet(t, base)
		ok = true
		for k, v := range want {
			if g, has := got[k]; !has || g != v {
				ok = false
			}
		}
	}
	require.True(t, ok, "fleet figures of %s: want %v, got %v", base, want, got)
	return got
}
