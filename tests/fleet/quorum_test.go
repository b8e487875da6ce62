package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestFleetNoQuorum: with two of the three nodes killed the cluster has no
// JetStream leader; a submission to either API replica is answered 503 in
// the API's error format within seconds (not a hang), and once the nodes
// are back the same replicas accept jobs again by themselves, and a job
// submitted then completes on its host.
func TestFleetNoQuorum(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts a 3-node NATS cluster and two APIs")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	opt := options{hosts: 2, jobs: 1, rate: 1, duration: 100 * time.Millisecond, fault: faultNone,
		ackWait: 30 * time.Second, dispatch: "limits"}
	f := &fleet{opt: opt, out: t.Output(), tally: newTally()}
	var err error
	f.dir, err = os.MkdirTemp("", "provisioner-fleet-")
	require.NoError(t, err)
	t.Cleanup(func() { f.teardown(!t.Failed()) })
	require.NoError(t, f.up(ctx))
	_, err = f.startFleet(ctx)
	require.NoError(t, err)
	cl := &http.Client{Timeout: 30 * time.Second}

	code, body := postJob(t, cl, f.apis[0], "before")
	require.Equal(t, http.StatusAccepted, code, "%s", body)

	down := f.cluster.nodes[1:]
	for _, n := range down {
		f.cluster.kill(n)
	}
	f.logf("killed %s and %s: no quorum", down[0].name, down[1].name)
	// The first answers may still come from state cached before the kill;
	// within 30 s every submission must be a prompt 503.
	require.Eventually(t, func() bool {
		for _, a := range f.apis {
			start := time.Now()
			code, body := postJob(t, cl, a, "no-quorum-"+a.name+time.Now().Format("150405.000"))
			took := time.Since(start)
			if code != http.StatusServiceUnavailable {
				f.logf("%s answered %d in %s: %s", a.name, code, took, body)
				return false
			}
			require.Less(t, took, 15*time.Second, "%s answered 503 only after %s", a.name, took)
			var e struct {
				Error   string `json:"error"`
				Message string `json:"message"`
			}
			require.NoError(t, json.Unmarshal(body, &e), "%s", body)
			require.Equal(t, "service unavailable", e.Error, "%s", body)
			require.Contains(t, e.Message, "try again later", "%s", body)
		}
		return true
	}, 60*time.Second, time.Second, "both API replicas answer 503 while the cluster has no leader")

	for _, n := range down {
		require.NoError(t, f.cluster.start(n))
	}
	f.logf("restarted %s and %s", down[0].name, down[1].name)
	var key string
	require.Eventually(t, func() bool {
		key = "after-" + time.Now().Format("150405.000")
		code, body := postJob(t, cl, f.apis[1], key)
		if code != http.StatusAccepted {
			f.logf("%s answered %d: %s", f.apis[1].name, code, body)
		}
		return code == http.StatusAccepted
	}, 90*time.Second, time.Second, "the API accepts jobs again once the cluster has its nodes back")
	require.Eventually(t, func() bool {
		f.tally.mu.Lock()
		defer f.tally.mu.Unlock()
		return f.tally.effects[key] == 1
	}, 60*time.Second, 200*time.Millisecond, "the job submitted after recovery completes on its host")
}

// postJob submits a harness job for the first host through a; it returns
// the status and the body.
func postJob(t *testing.T, cl *http.Client, a *apiProc, key string) (int, []byte) {
	t.Helper()
	body, _ := json.Marshal(jobBody(&submission{key: key, host: "hv-00001"}))
	req, err := http.NewRequest(http.MethodPost, a.URL()+"/api/v1/jobs", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := cl.Do(req)
	require.NoError(t, err, "POST %s", a.name)
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, b
}
