package api

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// sseEvent is one Server-Sent Event as received.
type sseEvent struct {
	id, event string
	data      rest.Event
}

// readEvents reads the events of a stream until it ends, sending the
// first to first when it is not nil. An event whose data is not an event
// has its data left zero.
func readEvents(resp *http.Response, first chan<- sseEvent) []sseEvent {
	var out []sseEvent
	var cur sseEvent
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.event != "" {
				if len(out) == 0 && first != nil {
					first <- cur
				}
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			cur.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			cur.event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &cur.data)
		}
	}
	return out
}

// A job's event stream sends its state and every change, each with the
// record's revision as its id, and ends with the job; a client that
// reconnects with Last-Event-ID gets only what came after.
func TestJobEventsFollowTheRecordUntilTheJobEnds(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	ts := httptest.NewServer(tb.srv.Handler())
	t.Cleanup(ts.Close)
	id := accepted(t, tb.submit(t, jobBody, ""))
	ctx := testCtx(t)

	get := func(lastID string) *http.Response {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/api/v1/jobs/"+id+"/events", nil)
		require.NoError(t, err)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := ts.Client().Do(req)
		require.NoError(t, err)
		t.Cleanup(func() { _ = resp.Body.Close() })
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
		return resp
	}
	first := make(chan sseEvent, 1)
	done := make(chan []sseEvent, 1)
	resp := get("")
	go func() { done <- readEvents(resp, first) }()

	// The stream is open and has sent the pending record: move the job on.
	select {
	case e := <-first:
		require.Equal(t, "pending", e.data.Status)
	case <-time.After(10 * time.Second):
		t.Fatal("no first event")
	}
	update := func(fn func(j *kvstate.Job)) {
		_, _, err := tb.srv.state.Jobs.Update(ctx, testHost, id, func(j *kvstate.Job) error { fn(j); return nil })
		require.NoError(t, err)
	}
	update(func(j *kvstate.Job) {
		j.Status = kvstate.StatusRunning
		j.Progress = &kvstate.Progress{Stage: "downloading", Percent: 40}
	})
	update(func(j *kvstate.Job) { j.Status = kvstate.StatusCompleted; j.Progress.Percent = 100 })

	var events []sseEvent
	select {
	case events = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream did not end with the job")
	}
	require.Len(t, events, 3)
	var statuses []string
	var last uint64
	for _, e := range events {
		require.Equal(t, "progress", e.event)
		rev, err := strconv.ParseUint(e.id, 10, 64)
		require.NoError(t, err)
		require.Greater(t, rev, last, "ids are increasing revisions")
		last = rev
		require.Equal(t, id, e.data.JobID)
		statuses = append(statuses, e.data.Status)
	}
	require.Equal(t, []string{"pending", "running", "completed"}, statuses)
	require.Equal(t, "downloading", events[1].data.Stage)
	require.Equal(t, 40, events[1].data.Percent)

	// Reconnecting after the second event gets the third only; after the
	// last, nothing (the job has ended).
	again := readEvents(get(events[1].id), nil)
	require.Len(t, again, 1)
	require.Equal(t, events[2].id, again[0].id)
	require.Empty(t, readEvents(get(events[2].id), nil))
}
