package tests

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// slow limits the worker's volume writes (qemu-img convert -r), a real
// setting, so a job stays running long enough to act on it.
const slow = "PROVISIONER_WRITE_LIMIT=4194304"

// withQemuImg makes the worker convert with qemu-img (the default is the
// native converter), for the tests about its child process.
const withQemuImg = "PROVISIONER_CONVERTER=qemu-img"

func TestCancelRunningAndPending(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	w := e.startWorker("h1", slow)
	qcow2, _ := image(t, 64<<20, 6)
	url := e.upload("images/slow.qcow2", qcow2, true)

	// Running: the worker stops, removes the volume it created, and the
	// record stays cancelled.
	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-run", "volume_size_gb": 1})
	e.waitJob(id, 30*time.Second, func(j job) bool { return j.Progress != nil && j.Progress.Stage == "populating" })
	require.FileExists(t, e.volumePath("h1", "vm-run"))
	r := e.do(http.MethodPost, "/api/v1/jobs/"+id+"/cancel", nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	require.Equal(t, map[string]any{"status": "cancelled", "job_id": id}, r.json(t))
	require.Eventually(t, func() bool {
		_, err := os.Stat(e.volumePath("h1", "vm-run"))
		return os.IsNotExist(err)
	}, 15*time.Second, 50*time.Millisecond, "the cancelled job's volume must be removed")
	require.Eventually(t, func() bool { return strings.Contains(w.output(), `"msg":"job cancelled"`) }, 10*time.Second, 50*time.Millisecond)
	require.Equal(t, "cancelled", e.getJob(id).Status)

	// Pending: with the worker down the job waits; cancelled, it never runs.
	w.stop()
	id2 := e.submit(map[string]any{"image_url": url, "volume_name": "vm-pend", "volume_size_gb": 1})
	require.Equal(t, "pending", e.getJob(id2).Status)
	r = e.do(http.MethodPost, "/api/v1/jobs/"+id2+"/cancel", nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	e.startWorker("h1")
	id3 := e.submit(map[string]any{"image_url": url, "volume_name": "vm-after", "volume_size_gb": 1})
	e.waitStatus(id3, "completed")
	require.Equal(t, "cancelled", e.getJob(id2).Status)
	require.NoFileExists(t, e.volumePath("h1", "vm-pend"))
	require.Equal(t, "cancelled", e.getJob(id).Status)
	requireError(t, e.do(http.MethodPost, "/api/v1/jobs/"+id2+"/cancel", nil), 400, "failed to cancel job", "cannot cancel job in 'cancelled' status")
}

func TestAtMostTwoRunningPerHost(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	e.startWorker("h1", "PROVISIONER_WRITE_LIMIT=16777216")
	qcow2, ref := image(t, 32<<20, 7)
	url := e.upload("images/many.qcow2", qcow2, true)

	var ids []string
	for i := range 6 {
		ids = append(ids, e.submit(map[string]any{"image_url": url, "volume_name": "vm-" + string(rune('a'+i)), "volume_size_gb": 1}))
	}
	maxRunning, sawPendingWhileTwoRun := 0, false
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		running, pending, done := 0, 0, 0
		for _, id := range ids {
			switch e.getJob(id).Status {
			case "running":
				running++
			case "pending":
				pending++
			case "completed":
				done++
			default:
				t.Fatalf("job %s: %+v", id, e.getJob(id))
			}
		}
		maxRunning = max(maxRunning, running)
		if running == 2 && pending >= 3 {
			sawPendingWhileTwoRun = true
		}
		if done == len(ids) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A sweep reads the six records one after the other, not at one
	// instant: a job that ends and the next that starts within a sweep can
	// both be read running. The sweeps show that two ran at once; the
	// records' own times, below, that never more than two did.
	require.GreaterOrEqual(t, maxRunning, 2, "two jobs run at once")
	require.True(t, sawPendingWhileTwoRun, "with two running, the rest wait as pending")

	// The records' own times: never more than two overlap.
	type span struct{ from, to time.Time }
	var spans []span
	for _, id := range ids {
		j := e.getJob(id)
		require.Equal(t, "completed", j.Status)
		spans = append(spans, span{*j.StartedAt, *j.FinishedAt})
		requireVolume(t, j.VolumePath, ref, gib)
	}
	for _, s := range spans {
		overlap := 0
		for _, o := range spans {
			if !o.from.After(s.from) && o.to.After(s.from) {
				overlap++
			}
		}
		require.LessOrEqual(t, overlap, 2)
	}
}

func TestDirectNATSPublish(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	qcow2, ref := image(t, 16<<20, 8)
	url := e.upload("images/direct.qcow2", qcow2, true)
	nc := e.connectNATS()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	publish := func(id string, body string) {
		t.Helper()
		msg := nats.NewMsg("provisioner.jobs.h1." + id)
		msg.Data = []byte(body)
		_, err := js.PublishMsg(t.Context(), msg, jetstream.WithMsgID(id))
		require.NoError(t, err)
	}

	// Just the REST fields plus job_id: version and kind default.
	id := uuid.NewString()
	body, _ := json.Marshal(map[string]any{"job_id": id, "image_url": url, "volume_name": "vm-nats", "volume_size_gb": 1})
	publish(id, string(body))
	j := e.waitStatus(id, "completed")
	require.Equal(t, "h1", j.Hypervisor)
	requireVolume(t, e.volumePath("h1", "vm-nats"), ref, gib)

	// Malformed messages end as failed records with a clear error, at once.
	bad := uuid.NewString()
	publish(bad, `{"job_id":"`+bad+`","image_url":5}`)
	j = e.waitStatus(bad, "failed")
	require.Equal(t, `invalid job message: job message is not valid JSON for a job: field "image_url" must be a string, not number`, j.Error)
	other := uuid.NewString()
	publish(other, `{"job_id":"`+uuid.NewString()+`","image_url":"`+url+`","volume_name":"x","volume_size_gb":1}`)
	j = e.waitStatus(other, "failed")
	require.Contains(t, j.Error, "differs from the subject's last token")
	notJSON := uuid.NewString()
	publish(notJSON, `provision please`)
	require.Contains(t, e.waitStatus(notJSON, "failed").Error, "invalid job message")

	// Nothing is redelivered: the stream is empty once all have ended.
	stream, err := js.Stream(t.Context(), "PROVISIONER_JOBS")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := stream.Info(t.Context())
		return err == nil && info.State.Msgs == 0
	}, 10*time.Second, 50*time.Millisecond)

	// A job published while the worker is down is visible and cancellable.
	e.workers["h1"].stop()
	waiting := uuid.NewString()
	body, _ = json.Marshal(map[string]any{"job_id": waiting, "image_url": url, "volume_name": "vm-wait", "volume_size_gb": 1})
	publish(waiting, string(body))
	j = e.getJob(waiting)
	require.Equal(t, "pending", j.Status)
	require.Equal(t, http.StatusOK, e.do(http.MethodPost, "/api/v1/jobs/"+waiting+"/cancel", nil).Status)
	e.startWorker("h1")
	probe := uuid.NewString()
	body, _ = json.Marshal(map[string]any{"job_id": probe, "image_url": url, "volume_name": "vm-probe", "volume_size_gb": 1})
	publish(probe, string(body))
	e.waitStatus(probe, "completed")
	require.Equal(t, "cancelled", e.getJob(waiting).Status)
	require.NoFileExists(t, e.volumePath("h1", "vm-wait"))
}

// qemuImgWriting reports whether a qemu-img process is writing path.
func qemuImgWriting(path string) bool { return qemuImgProc(path) != "" }

// qemuImgProc is the /proc directory of a qemu-img process writing path.
func qemuImgProc(path string) string {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), "qemu-img") && strings.Contains(string(b), path) {
			return filepath.Dir(p)
		}
	}
	return ""
}

func TestWorkerKilledMidJobCompletesOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	w := e.startWorker("h1", slow, withQemuImg)
	qcow2, ref := image(t, 64<<20, 9)
	url := e.upload("images/crash.qcow2", qcow2, true)

	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-crash", "volume_size_gb": 1})
	e.waitJob(id, 30*time.Second, func(j job) bool { return j.Progress != nil && j.Progress.Stage == "populating" })
	vol := e.volumePath("h1", "vm-crash")
	require.Eventually(t, func() bool { return qemuImgWriting(vol) }, 5*time.Second, 20*time.Millisecond)
	limits, err := os.ReadFile(filepath.Join(qemuImgProc(vol), "limits"))
	require.NoError(t, err)
	require.Regexp(t, `Max address space\s+2147483648\s+2147483648\s+bytes`, string(limits), "qemu-img runs with a bounded address space")
	w.kill()
	require.Eventually(t, func() bool { return !qemuImgWriting(vol) }, 5*time.Second, 20*time.Millisecond, "qemu-img must die with the worker")

	e.startWorker("h1")
	j := e.waitStatus(id, "completed")
	require.Equal(t, 2, j.Attempt)
	requireVolume(t, vol, ref, gib)

	nc := e.connectNATS()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	stream, err := js.Stream(t.Context(), "PROVISIONER_JOBS")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := stream.Info(t.Context())
		return err == nil && info.State.Msgs == 0
	}, 10*time.Second, 50*time.Millisecond, "the job is acknowledged once and gone")
	time.Sleep(4 * time.Second) // longer than the ack wait: no redelivery follows
	j = e.getJob(id)
	require.Equal(t, "completed", j.Status)
	require.Equal(t, 2, j.Attempt)
}

func TestHostNameClaimedByAnotherMachine(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	p := startProc(t, "worker", filepath.Join(e.dir, "intruder.log"), e.workerEnv("h1", "PROVISIONER_MACHINE_ID=other-machine"))
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("a second machine claiming a live host name must refuse to start")
	}
	require.Error(t, p.err)
	require.Contains(t, p.output(), `host name is claimed by another machine: host "h1" belongs to machine machine-h1`)
}

func TestLastDeliveryFailsTheJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	w := e.startWorker("h1", slow, "PROVISIONER_MAX_DELIVER=2")
	qcow2, _ := image(t, 64<<20, 10)
	url := e.upload("images/last.qcow2", qcow2, true)

	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-last", "volume_size_gb": 1})
	e.waitJob(id, 30*time.Second, func(j job) bool { return j.Progress != nil && j.Progress.Stage == "populating" })
	w.kill()
	e.startWorker("h1", "PROVISIONER_MAX_DELIVER=2")
	j := e.waitStatus(id, "failed")
	require.Equal(t, "gave up after 2 deliveries: the job never finished (its worker stopped or lost contact while running it)", j.Error)
	require.Equal(t, 1, j.Attempt, "the last delivery does not run the job")
}

func TestProgressEventsNeverGoBackwards(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	e.startWorker("h1", "PROVISIONER_WRITE_LIMIT=8388608")
	qcow2, _ := image(t, 32<<20, 11)
	url := e.upload("images/events.qcow2", qcow2, true)
	nc := e.connectNATS()
	events := make(chan *nats.Msg, 1000)
	sub, err := nc.ChanSubscribe("provisioner.events.h1.*", events)
	require.NoError(t, err)
	defer sub.Unsubscribe()
	require.NoError(t, nc.Flush())

	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-ev", "volume_size_gb": 1})
	e.waitStatus(id, "completed")
	last, stages := -1, map[string]bool{}
	for {
		select {
		case m := <-events:
			require.Equal(t, "provisioner.events.h1."+id, m.Subject)
			var ev struct {
				Status  string `json:"status"`
				Stage   string `json:"stage"`
				Percent int    `json:"percent"`
				Attempt int    `json:"attempt"`
			}
			require.NoError(t, json.Unmarshal(m.Data, &ev))
			require.GreaterOrEqual(t, ev.Percent, last, "progress went backwards: %s", m.Data)
			last = ev.Percent
			stages[ev.Stage] = true
			if ev.Status != "completed" {
				require.Less(t, ev.Percent, 100, "100%% only on completion: %s", m.Data)
				require.Equal(t, "running", ev.Status)
				require.Equal(t, 1, ev.Attempt)
				continue
			}
			require.Equal(t, 100, ev.Percent)
			for _, s := range []string{"checksum", "downloading", "inspecting", "creating_volume", "populating"} {
				require.True(t, stages[s], "no event for stage %s (saw %v)", s, stages)
			}
			return
		case <-time.After(5 * time.Second):
			t.Fatalf("no completed event; last percent %d, stages %v", last, stages)
		}
	}
}
