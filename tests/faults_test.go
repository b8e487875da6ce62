package tests

import (
	"bufio"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// workerMetric reads one sample of a worker's /metrics.
func workerMetric(t *testing.T, addr, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return f
		}
	}
	t.Fatalf("no %s in the worker's metrics", series)
	return 0
}

// TestTwoJobsOneImageOneDownload: two jobs that want the same image at the
// same time download it once.
func TestTwoJobsOneImageOneDownload(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	w := e.startWorker("h1")
	qcow2, _ := image(t, 48<<20, 26)
	url := e.upload("images/once.qcow2", qcow2, true)
	st, err := os.Stat(qcow2)
	require.NoError(t, err)

	a := e.submit(map[string]any{"image_url": url, "volume_name": "vm-a", "volume_size_gb": 1})
	b := e.submit(map[string]any{"image_url": url, "volume_name": "vm-b", "volume_size_gb": 1})
	ja, jb := e.waitStatus(a, "completed"), e.waitStatus(b, "completed")
	require.NotEqual(t, *ja.CacheHit, *jb.CacheHit, "one job downloaded, the other found it cached")
	maddr := workerAddr(t, w)
	require.Equal(t, float64(st.Size()), workerMetric(t, maddr, "libvirt_volume_provisioner_downloaded_bytes_total"), "the image was downloaded once")
	require.Equal(t, 1.0, workerMetric(t, maddr, `libvirt_volume_provisioner_cache_lookups_total{result="miss"}`))
	require.Equal(t, 1.0, workerMetric(t, maddr, `libvirt_volume_provisioner_cache_lookups_total{result="hit"}`))
}

// TestEmbeddedNATSRestartedMidJob restarts the API (and with it the embedded
// NATS server) while a job writes: the worker reconnects and the job
// completes exactly once.
func TestEmbeddedNATSRestartedMidJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	w := e.startWorker("h1", slow)
	qcow2, ref := image(t, 64<<20, 27)
	url := e.upload("images/restart.qcow2", qcow2, true)
	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-restart", "volume_size_gb": 1})
	e.waitJob(id, 30*time.Second, func(j job) bool { return j.Progress != nil && j.Progress.Stage == "populating" })

	env := e.api.cmd.Env
	e.api.stop()
	time.Sleep(time.Second)
	e.api = startProc(t, "api", filepath.Join(e.dir, "api-2.log"), env[len(os.Environ()):])
	e.waitHTTP(e.apiURL + "/livez")

	j := e.waitJob(id, 90*time.Second, func(j job) bool { return j.Status == "completed" || j.Status == "failed" })
	require.Equal(t, "completed", j.Status, "error: %s", j.Error)
	requireVolume(t, e.volumePath("h1", "vm-restart"), ref, gib)
	require.Contains(t, w.output(), `"msg":"NATS reconnected"`)
	time.Sleep(4 * time.Second) // longer than the ack wait: nothing is redelivered
	require.Equal(t, "completed", e.getJob(id).Status)
	require.Equal(t, 1.0, workerMetric(t, workerAddr(t, w), `libvirt_volume_provisioner_jobs_total{status="completed"}`), "completed once")
}

// TestCutOffWorkerStopsWriting: a worker that cannot renew its in-progress
// ack (NATS is gone for longer than the ack wait) stops writing before the
// job could be redelivered, so two copies never write one volume; once NATS
// is back, the redelivered job completes.
func TestCutOffWorkerStopsWriting(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	w := e.startWorker("h1", slow, withQemuImg)
	qcow2, ref := image(t, 64<<20, 28)
	url := e.upload("images/fence.qcow2", qcow2, true)
	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-fence", "volume_size_gb": 1})
	e.waitJob(id, 30*time.Second, func(j job) bool { return j.Progress != nil && j.Progress.Stage == "populating" })
	vol := e.volumePath("h1", "vm-fence")
	require.Eventually(t, func() bool { return qemuImgWriting(vol) }, 5*time.Second, 20*time.Millisecond)

	env := e.api.cmd.Env
	cut := time.Now()
	e.api.kill()
	// The worker decides to stop within the ack wait (3 s) of losing NATS,
	// and qemu-img is killed then (how soon it dies is up to the kernel: a
	// direct write in flight finishes first).
	const fenced = "in-progress acks unconfirmed for half the ack wait: stopping the job before it can be redelivered"
	require.Eventually(t, func() bool { return strings.Contains(w.output(), fenced) }, 3*time.Second, 20*time.Millisecond,
		"the worker did not stop the job within the ack wait after losing NATS")
	require.Eventually(t, func() bool { return !qemuImgWriting(vol) }, 10*time.Second, 20*time.Millisecond,
		"qemu-img kept writing after the job was stopped")
	require.Eventually(t, func() bool { return strings.Contains(w.output(), "lost contact with NATS") }, 10*time.Second, 20*time.Millisecond)
	t.Logf("stopped and qemu-img gone %s after NATS went away", time.Since(cut).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	e.api = startProc(t, "api", filepath.Join(e.dir, "api-2.log"), env[len(os.Environ()):])
	e.waitHTTP(e.apiURL + "/livez")
	j := e.waitStatus(id, "completed")
	require.GreaterOrEqual(t, j.Attempt, 2)
	requireVolume(t, vol, ref, gib)
}
