package tests

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestWorkerHealthDegradedAboveTwoActive: a worker reports degraded when more
// than two jobs are active on its host, running and waiting together.
func TestWorkerHealthDegradedAboveTwoActive(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	w := e.startWorker("h1", slow)
	addr := workerAddr(t, w)
	health := func() map[string]any {
		resp, err := http.Get("http://" + addr + "/health")
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var h map[string]any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&h))
		return h
	}
	h := health()
	require.Equal(t, "healthy", h["status"])
	require.Equal(t, "h1", h["hypervisor"])
	for _, p := range []string{"/healthz", "/livez"} {
		resp, err := http.Get("http://" + addr + p)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}

	qcow2, _ := image(t, 64<<20, 17)
	url := e.upload("images/busy.qcow2", qcow2, true)
	var ids []string
	for _, v := range []string{"vm-a", "vm-b", "vm-c"} {
		ids = append(ids, e.submit(map[string]any{"image_url": url, "volume_name": v, "volume_size_gb": 1}))
	}
	require.Eventually(t, func() bool {
		h = health()
		return h["status"] == "degraded"
	}, 20*time.Second, 100*time.Millisecond, "two running and one waiting: degraded; last %v", h)
	require.EqualValues(t, 2, h["active_jobs"])
	require.EqualValues(t, 1, h["waiting_jobs"])
	for _, id := range ids {
		e.waitStatus(id, "completed")
	}
	require.Eventually(t, func() bool { return health()["status"] == "healthy" }, 10*time.Second, 100*time.Millisecond)
}
