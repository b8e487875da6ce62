package tests

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type sseEvent struct {
	ID    string
	Event string
	Data  struct {
		JobID   string `json:"job_id"`
		Status  string `json:"status"`
		Stage   string `json:"stage"`
		Percent int    `json:"percent"`
		Attempt int    `json:"attempt"`
	}
}

// readSSE reads a job's event stream until the server closes it.
func readSSE(t *testing.T, e *env, id string) []sseEvent {
	t.Helper()
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Get(e.apiURL + "/api/v1/jobs/" + id + "/events")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	require.NotEmpty(t, resp.Header.Get("X-Request-ID"))
	var out []sseEvent
	var cur sseEvent
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.Event != "" {
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			cur.ID = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			cur.Event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			require.NoError(t, json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &cur.Data))
		}
	}
	require.NoError(t, sc.Err())
	return out
}

func TestJobEventsOverSSE(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	e.startWorker("h1", "PROVISIONER_WRITE_LIMIT=8388608")
	qcow2, _ := image(t, 32<<20, 14)
	url := e.upload("images/sse.qcow2", qcow2, true)
	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-sse", "volume_size_gb": 1})

	events := readSSE(t, e, id)
	require.GreaterOrEqual(t, len(events), 3, "events: %+v", events)
	last := -1
	for i, ev := range events {
		require.Equal(t, "progress", ev.Event)
		require.Equal(t, id, ev.Data.JobID)
		require.NotEmpty(t, ev.ID)
		require.GreaterOrEqual(t, ev.Data.Percent, last, "event %d went backwards", i)
		last = ev.Data.Percent
		if i < len(events)-1 {
			require.Less(t, ev.Data.Percent, 100)
		}
	}
	final := events[len(events)-1].Data
	require.Equal(t, "completed", final.Status)
	require.Equal(t, 100, final.Percent)

	// A job that already ended: its final state, then the stream closes.
	again := readSSE(t, e, id)
	require.Len(t, again, 1)
	require.Equal(t, "completed", again[0].Data.Status)

	requireError(t, e.do(http.MethodGet, "/api/v1/jobs/550e8400-e29b-41d4-a716-446655440000/events", nil), 404, "job not found", "job not found")
	require.Equal(t, map[string]any{"status": "ready"}, e.do(http.MethodGet, "/readyz", nil).json(t))
}
