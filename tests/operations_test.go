package tests

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	qcow2, _ := image(t, 4<<20, 19)
	url := e.upload("images/idem.qcow2", qcow2, true)
	body := map[string]any{"image_url": url, "volume_name": "vm-idem", "volume_size_gb": 1}

	first := e.do(http.MethodPost, "/api/v1/jobs", body, "Idempotency-Key", "deploy-42")
	require.Equal(t, http.StatusAccepted, first.Status, "%s", first.Body)
	id := first.json(t)["job_id"].(string)
	again := e.do(http.MethodPost, "/api/v1/jobs", body, "Idempotency-Key", "deploy-42")
	require.Equal(t, http.StatusAccepted, again.Status)
	require.Equal(t, id, again.json(t)["job_id"], "a retried request returns the same job")
	require.Equal(t, "true", again.Header.Get("Idempotent-Replayed"))
	e.waitStatus(id, "completed")
	require.Equal(t, id, e.do(http.MethodPost, "/api/v1/jobs", body, "Idempotency-Key", "deploy-42").json(t)["job_id"], "also after the job ended")

	body["volume_size_gb"] = 2
	requireError(t, e.do(http.MethodPost, "/api/v1/jobs", body, "Idempotency-Key", "deploy-42"), 422, "invalid request",
		`Idempotency-Key "deploy-42" was already used for a different request (job `+id+`)`)
	requireError(t, e.do(http.MethodPost, "/api/v1/jobs", body, "Idempotency-Key", strings.Repeat("k", 256)), 400, "invalid request",
		"Idempotency-Key must be 1 to 255 printable ASCII characters")

	fetch := map[string]any{"image_url": url}
	f1 := e.do(http.MethodPost, "/api/v1/cache/fetch", fetch, "Idempotency-Key", "warm-1")
	f2 := e.do(http.MethodPost, "/api/v1/cache/fetch", fetch, "Idempotency-Key", "warm-1")
	require.Equal(t, f1.json(t)["job_id"], f2.json(t)["job_id"])
}

func TestOneWriterPerVolume(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	qcow2, _ := image(t, 4<<20, 20)
	url := e.upload("images/one.qcow2", qcow2, true)
	body := map[string]any{"image_url": url, "volume_name": "vm-one", "volume_size_gb": 1}

	// The host registered, but its worker is down: the first job stays
	// pending and holds the volume.
	e.startWorker("h1").stop()
	first := e.submit(body)
	requireError(t, e.do(http.MethodPost, "/api/v1/jobs", body), 409, "conflict",
		`volume "vm-one" on hypervisor "h1" already has job `+first+` (pending); wait for it or cancel it`)
	// Another volume is fine.
	e.submit(map[string]any{"image_url": url, "volume_name": "vm-two", "volume_size_gb": 1})
	// Cancelling the pending job frees the volume.
	require.Equal(t, http.StatusOK, e.do(http.MethodPost, "/api/v1/jobs/"+first+"/cancel", nil).Status)
	second := e.submit(body)
	e.startWorker("h1")
	e.waitStatus(second, "completed")
	// A job that ended frees the volume too.
	third := e.submit(body)
	e.waitStatus(third, "completed")
	require.Equal(t, "cancelled", e.getJob(first).Status)
}

func TestDeadlines(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	qcow2, _ := image(t, 64<<20, 21)
	url := e.upload("images/deadline.qcow2", qcow2, true)

	// Pending too long: submitted while the host's worker is down, picked up later.
	e.startWorker("h1").stop()
	waiting := e.submit(map[string]any{"image_url": url, "volume_name": "vm-wait", "volume_size_gb": 1})
	time.Sleep(1500 * time.Millisecond)
	w := e.startWorker("h1", slow, "PROVISIONER_MAX_PENDING_AGE=1s", "PROVISIONER_MAX_RUN_TIME=2s")
	j := e.waitStatus(waiting, "failed")
	require.Regexp(t, `^the job waited \d+s for a worker, longer than the maximum pending age of 1s \(PROVISIONER_MAX_PENDING_AGE\); submit it again$`, j.Error)
	require.NoFileExists(t, e.volumePath("h1", "vm-wait"))

	// Running too long: the slow write outlasts the maximum run time.
	running := e.submit(map[string]any{"image_url": url, "volume_name": "vm-slow", "volume_size_gb": 1})
	j = e.waitStatus(running, "failed")
	require.Regexp(t, `^the job ran longer than the maximum run time of 2s \(PROVISIONER_MAX_RUN_TIME\) in stage \w+`, j.Error)
	require.NoFileExists(t, e.volumePath("h1", "vm-slow"), "the volume the job created is rolled back")
	_ = w
}

// TestSIGTERMLetsRunningJobsFinish: a stopping worker takes no new job,
// lets the running one finish within the grace period, and one that
// outlasts the grace is stopped cleanly and redelivered.
func TestSIGTERMLetsRunningJobsFinish(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	w := e.startWorker("h1", slow, "PROVISIONER_SHUTDOWN_GRACE=30s")
	qcow2, ref := image(t, 32<<20, 22)
	url := e.upload("images/term.qcow2", qcow2, true)

	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-term", "volume_size_gb": 1})
	e.waitJob(id, 30*time.Second, func(j job) bool { return j.Progress != nil && j.Progress.Stage == "populating" })
	require.NoError(t, w.cmd.Process.Signal(syscall.SIGTERM))
	time.Sleep(200 * time.Millisecond)
	later := e.submit(map[string]any{"image_url": url, "volume_name": "vm-later", "volume_size_gb": 1})
	select {
	case <-w.done:
	case <-time.After(40 * time.Second):
		t.Fatal("the worker did not stop within its grace period")
	}
	j := e.getJob(id)
	require.Equal(t, "completed", j.Status, "the running job finished during the grace period")
	requireVolume(t, e.volumePath("h1", "vm-term"), ref, gib)
	require.Equal(t, "pending", e.getJob(later).Status, "a stopping worker takes no new job")

	// A grace period shorter than the job: stopped, then redelivered and completed.
	w = e.startWorker("h1", slow, withQemuImg, "PROVISIONER_SHUTDOWN_GRACE=500ms")
	e.waitStatus(later, "completed")
	id = e.submit(map[string]any{"image_url": url, "volume_name": "vm-cut", "volume_size_gb": 1})
	e.waitJob(id, 30*time.Second, func(j job) bool { return j.Progress != nil && j.Progress.Stage == "populating" })
	require.NoError(t, w.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-w.done:
	case <-time.After(time.Minute):
		t.Fatalf("the worker did not stop within a minute of SIGTERM with a 500ms grace:\n%s", w.output())
	}
	require.Contains(t, w.output(), `"msg":"job interrupted by shutdown; it will be redelivered"`)
	require.False(t, qemuImgWriting(e.volumePath("h1", "vm-cut")), "no qemu-img outlives the worker")
	e.startWorker("h1")
	j = e.waitStatus(id, "completed")
	require.Equal(t, 2, j.Attempt)
	requireVolume(t, e.volumePath("h1", "vm-cut"), ref, gib)
}

// TestFailedReuseZeroesTheEnds: a reused volume that fails mid-write gets its
// first and last MiB zeroed so it never boots half-written.
func TestFailedReuseZeroesTheEnds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	e.startWorker("h1", slow, "PROVISIONER_MAX_RUN_TIME=2s")
	qcow2, _ := image(t, 64<<20, 23)
	url := e.upload("images/ends.qcow2", qcow2, true)
	require.NoError(t, os.MkdirAll(e.volDirs["h1"], 0o755))
	vol := e.volumePath("h1", "vm-ends")
	f, err := os.Create(vol)
	require.NoError(t, err)
	marker := bytes.Repeat([]byte{0xEE}, 1<<20)
	require.NoError(t, f.Truncate(gib))
	_, err = f.WriteAt(marker, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(marker, gib-(1<<20))
	require.NoError(t, err)
	require.NoError(t, f.Close())

	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-ends", "volume_size_gb": 1})
	j := e.waitStatus(id, "failed")
	require.Contains(t, j.Error, "; the volume's first and last MiB were zeroed so the half-written disk does not boot")
	data, err := os.ReadFile(vol)
	require.NoError(t, err)
	require.Equal(t, gib, int64(len(data)), "a reused volume is never removed or resized")
	require.True(t, bytes.Equal(data[:1<<20], make([]byte, 1<<20)), "first MiB zeroed")
	require.True(t, bytes.Equal(data[gib-(1<<20):], make([]byte, 1<<20)), "last MiB zeroed")
}

func TestVolumeAllowPattern(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	e.startWorker("h1", "PROVISIONER_VOLUME_ALLOW=vm-[0-9]+")
	qcow2, _ := image(t, 4<<20, 24)
	url := e.upload("images/allow.qcow2", qcow2, true)
	j := e.waitStatus(e.submit(map[string]any{"image_url": url, "volume_name": "db-1", "volume_size_gb": 1}), "failed")
	require.Equal(t, `volume "db-1" is not one this worker may touch (PROVISIONER_VOLUME_ALLOW=^(?:vm-[0-9]+)$)`, j.Error)
	require.NoFileExists(t, e.volumePath("h1", "db-1"))
	e.waitStatus(e.submit(map[string]any{"image_url": url, "volume_name": "vm-7", "volume_size_gb": 1}), "completed")
}

func TestDeleteCachedImage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	w := e.startWorker("h1", slow)
	qcow2, _ := image(t, 64<<20, 25)
	url := e.upload("images/del.qcow2", qcow2, true)
	digest, err := testenv.FileSHA256(qcow2)
	require.NoError(t, err)

	requireError(t, e.do(http.MethodDelete, "/api/v1/cache/images/"+digest, nil), 404, "image not found",
		`image `+digest+` is not in the cache of hypervisor "h1"`)
	requireError(t, e.do(http.MethodDelete, "/api/v1/cache/images/abc", nil), 400, "invalid request",
		"checksum must be 64 hexadecimal digits (the cache key shown by GET /api/v1/cache/images)")

	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-del", "volume_size_gb": 1})
	// Populating from the committed cache file (a cold image streams while
	// it downloads and is in the cache once its digest verified).
	j := e.waitJob(id, 30*time.Second, func(j job) bool {
		return j.Progress != nil && j.Progress.Stage == "populating" && j.ImagePath != ""
	})
	requireError(t, e.do(http.MethodDelete, "/api/v1/cache/images/"+digest+"?hypervisor=h1", nil), 409, "conflict",
		`image `+digest+` is in use by a running job on hypervisor "h1"; try again when it ends`)
	e.waitStatus(id, "completed")
	r := e.do(http.MethodDelete, "/api/v1/cache/images/"+digest, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	require.Equal(t, map[string]any{"status": "deleted", "checksum": digest, "hypervisor": "h1"}, r.json(t))
	require.NoFileExists(t, j.ImagePath)
	require.EqualValues(t, 0, e.do(http.MethodGet, "/api/v1/cache/images", nil).json(t)["count"])
	require.Empty(t, cacheDirEntries(t, filepath.Dir(j.ImagePath)))

	w.stop()
	requireError(t, e.do(http.MethodDelete, "/api/v1/cache/images/"+digest, nil), 503, "service unavailable",
		`the worker of hypervisor "h1" is not running; only it can remove images from its cache`)
}
