package tests

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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
		Bytes   int64  `json:"bytes_processed"`
		Total   int64  `json:"bytes_total"`
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

// sseLine is one line of an event stream and when it arrived.
type sseLine struct {
	text string
	at   time.Duration
}

// streamLines opens a job's event stream and passes its lines, as they
// arrive, to the returned channel, which closes when the stream ends.
func streamLines(t *testing.T, e *env, id string) <-chan sseLine {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, e.apiURL+"/api/v1/jobs/"+id+"/events", nil)
	require.NoError(t, err)
	start := time.Now()
	// The headers must come at once: a stream that is never flushed would
	// otherwise hang the test.
	client := &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: 10 * time.Second}}
	resp, err := client.Do(req)
	require.NoError(t, err, "the stream's headers did not arrive")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	lines := make(chan sseLine, 1024)
	go func() {
		defer close(lines)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sseLine{text: sc.Text(), at: time.Since(start)}
		}
	}()
	return lines
}

// TestSSEEventsArriveWhileTheJobRuns: the first event is read while the job
// is still running, not when the server closes the stream.
func TestSSEEventsArriveWhileTheJobRuns(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	e.startWorker("h1", slow)
	qcow2, _ := image(t, 32<<20, 21)
	url := e.upload("images/live.qcow2", qcow2, true)
	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-live", "volume_size_gb": 1})

	lines := streamLines(t, e, id)
	var first string
	timeout := time.After(30 * time.Second)
	for first == "" {
		select {
		case l, open := <-lines:
			require.True(t, open, "the stream ended before any event")
			if strings.HasPrefix(l.text, "data: ") {
				first = l.text
			}
		case <-timeout:
			t.Fatal("no event within 30 s")
		}
	}
	j := e.getJob(id)
	require.Contains(t, []string{"pending", "running"}, j.Status, "the first event (%s) arrived only after the job ended", first)
	require.NotContains(t, first, `"status":"completed"`)
	rest := time.After(2 * time.Minute)
	for more := true; more; { // the rest, until the stream ends with the job
		select {
		case _, more = <-lines:
		case <-rest:
			t.Fatal("the event stream did not end within 2 minutes of the job's first event")
		}
	}
	require.Equal(t, "completed", e.waitStatus(id, "completed").Status)
}

// TestSSEStreamOutlivesWriteTimeout keeps a stream of a job that stays
// pending open for 5 s against an API whose read and write timeouts are 2 s
// (the 70 s stream against the 30 s/60 s defaults, scaled down): keep-alives
// arrive all along and the stream is still open at the end.
func TestSSEStreamOutlivesWriteTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true, apiEnv: []string{"PROVISIONER_HTTP_WRITE_TIMEOUT=2s", "PROVISIONER_HTTP_READ_TIMEOUT=2s",
		"PROVISIONER_SSE_KEEPALIVE=500ms"}})
	// A job published straight to NATS for a host with no worker stays pending.
	js, err := jetstream.New(e.connectNATS())
	require.NoError(t, err)
	id := uuid.NewString()
	msg := nats.NewMsg("provisioner.jobs.h1." + id)
	msg.Data, _ = json.Marshal(map[string]any{"job_id": id, "image_url": "http://" + e.minio.Endpoint + "/" + e.bucket + "/x.qcow2", "volume_name": "vm-long", "volume_size_gb": 1})
	_, err = js.PublishMsg(t.Context(), msg, jetstream.WithMsgID(id))
	require.NoError(t, err)

	lines := streamLines(t, e, id)
	var events, keepAlives []time.Duration
	deadline := time.After(5 * time.Second)
	for done := false; !done; {
		select {
		case l, open := <-lines:
			require.True(t, open, "the stream ended early (events at %v, keep-alives at %v)", events, keepAlives)
			switch {
			case strings.HasPrefix(l.text, "data: "):
				events = append(events, l.at)
			case l.text == ": keep-alive":
				keepAlives = append(keepAlives, l.at)
			}
		case <-deadline:
			done = true
		}
	}
	require.Len(t, events, 1, "the pending job's one event")
	require.Less(t, events[0], time.Second, "the first event came late")
	require.GreaterOrEqual(t, len(keepAlives), 6, "keep-alives at %v", keepAlives)
	require.Greater(t, keepAlives[len(keepAlives)-1], 4*time.Second, "keep-alives at %v", keepAlives)
	select {
	case _, open := <-lines:
		require.True(t, open, "the stream closed at 5 s")
	case <-time.After(time.Second): // still open, nothing new
	}
}
