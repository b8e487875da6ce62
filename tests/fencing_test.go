package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// TestRedeliveryWhileRunningIsNotStarted reproduces what a consumer leader
// failover does: the server hands out the job again (delivery 2) while
// delivery 1 is still writing the volume. Here the redelivery is forced by
// a NAK on delivery 1's ack subject, twice, with a second worker process for
// the same host (same machine: a restart overlapping the old process)
// pulling too. The job must run once: one "job started", one "job
// completed", attempt 1, the volume byte-exact, the message acknowledged.
func TestRedeliveryWhileRunningIsNotStarted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	a := e.startWorker("h1", slow)
	qcow2, ref := image(t, 64<<20, 21)
	url := e.upload("images/fence.qcow2", qcow2, true)
	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-fence", "volume_size_gb": 1})
	e.waitJob(id, 30*time.Second, func(j job) bool { return j.Progress != nil && j.Progress.Stage == "populating" })

	b := startProc(t, "worker", e.dir+"/worker-h1-b.log", e.workerEnv("h1", slow))
	require.Eventually(t, func() bool { return strings.Contains(b.output(), `"worker started"`) }, 20*time.Second, 50*time.Millisecond)

	nc := e.connectNATS()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	stream, err := js.Stream(t.Context(), "PROVISIONER_JOBS")
	require.NoError(t, err)
	raw, err := stream.GetLastMsgForSubject(t.Context(), "provisioner.jobs.h1."+id)
	require.NoError(t, err)
	cons, err := js.Consumer(t.Context(), "PROVISIONER_JOBS", "worker-h1")
	require.NoError(t, err)
	for range 2 {
		info, err := cons.Info(t.Context())
		require.NoError(t, err)
		// $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
		ack := fmt.Sprintf("$JS.ACK.PROVISIONER_JOBS.worker-h1.1.%d.%d.%d.0", raw.Sequence, info.Delivered.Consumer, time.Now().UnixNano())
		// Sent again every 2 s until the server redelivers: on a loaded
		// machine a NAK can be lost, and another for the same delivery
		// does nothing more.
		nak := func() error {
			if err := nc.Publish(ack, []byte("-NAK")); err != nil {
				return err
			}
			return nc.Flush()
		}
		require.NoError(t, nak())
		sent := time.Now()
		require.Eventually(t, func() bool {
			info, err := cons.Info(t.Context())
			if err == nil && info.NumRedelivered > 0 {
				return true
			}
			if time.Since(sent) > 2*time.Second {
				_ = nak() // a failure shows as no redelivery
				sent = time.Now()
			}
			return false
		}, 20*time.Second, 50*time.Millisecond, "the NAK made the server deliver the job again")
		time.Sleep(1500 * time.Millisecond)
	}

	j := e.waitStatus(id, "completed")
	require.Equal(t, 1, j.Attempt, "no later delivery became an attempt")
	requireVolume(t, e.volumePath("h1", "vm-fence"), ref, gib)
	time.Sleep(4 * time.Second) // longer than the ack wait: nothing runs again
	logs := a.output() + b.output()
	count := func(msg string) int {
		n := 0
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, `"`+msg+`"`) && strings.Contains(l, id) {
				n++
			}
		}
		return n
	}
	require.Equal(t, 1, count("job started"), "the job ran once\n%s", logs)
	require.Equal(t, 1, count("job completed"), "the job completed once\n%s", logs)
	require.Contains(t, logs, "leaving the job to that attempt")
	require.Equal(t, "completed", e.getJob(id).Status)
	require.Eventually(t, func() bool {
		info, err := stream.Info(t.Context())
		return err == nil && info.State.Msgs == 0
	}, 10*time.Second, 50*time.Millisecond, "the job is acknowledged and gone")
}
