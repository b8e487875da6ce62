package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"iter"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// Watch yields a job's progress events, the current state first, until
// the event with its final status (completed, failed or cancelled). It
// follows the API's event stream (Server-Sent Events) and, when the stream
// breaks, reconnects with Last-Event-ID so no change is repeated; an API
// (or a proxy in front of it) that does not stream is polled instead. An
// error is yielded once, last: an *APIError (the job is unknown, or not the
// caller's), an *UnreachableError after the retry policy's attempts, or
// ctx's error. Stopping the loop, or ending ctx, leaves the job running.
func (c *Client) Watch(ctx context.Context, jobID string) iter.Seq2[rest.Event, error] {
	return func(yield func(rest.Event, error) bool) {
		w := &watch{c: c, jobID: jobID, yield: yield}
		w.run(ctx)
	}
}

// watch is one Watch loop.
type watch struct {
	c      *Client
	jobID  string
	yield  func(rest.Event, error) bool
	lastID string
	// stopped: the caller broke out of the loop or the job ended.
	stopped bool
}

// errNoStream means the answer was not an event stream: poll instead.
var errNoStream = errors.New("the API did not answer with an event stream")

func (w *watch) run(ctx context.Context) {
	failures := 0
	for !w.stopped {
		got, err := w.stream(ctx)
		switch {
		case w.stopped:
			return
		case errors.Is(err, errNoStream):
			w.poll(ctx)
			return
		case ctx.Err() != nil:
			w.yield(rest.Event{}, ctx.Err())
			return
		}
		var apiErr *APIError
		if errors.As(err, &apiErr) && apiErr.Status != http.StatusServiceUnavailable {
			w.yield(rest.Event{}, err)
			return
		}
		if got {
			failures = 0 // the stream worked for a while: a fresh budget
		}
		failures++
		if failures >= w.c.retry.Attempts {
			if err == nil {
				err = errors.New("the event stream ended before the job did")
			}
			if apiErr == nil {
				err = &UnreachableError{URL: w.c.base.String() + w.path(), Attempts: failures, Err: err}
			}
			w.yield(rest.Event{}, err)
			return
		}
		select {
		case <-ctx.Done():
			w.yield(rest.Event{}, ctx.Err())
			return
		case <-time.After(w.c.retry.backoff(failures)):
		}
	}
}

func (w *watch) path() string { return "/api/v1/jobs/" + url.PathEscape(w.jobID) + "/events" }

// stream follows one connection to the event stream; got says whether it
// delivered any event.
func (w *watch) stream(ctx context.Context) (got bool, err error) {
	h := http.Header{"Accept": {"text/event-stream"}}
	if w.lastID != "" {
		h.Set("Last-Event-ID", w.lastID)
	}
	cl := call{method: http.MethodGet, path: w.path(), header: h}
	resp, err := w.c.send(ctx, cl, nil, 0)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode != http.StatusOK {
		err := decode(resp, cl, nil)
		var apiErr *APIError
		if errors.As(err, &apiErr) && apiErr.Body.Message == "" && apiErr.Status != http.StatusServiceUnavailable {
			return false, errNoStream // not the API's own answer
		}
		return false, err
	}
	if mt != "text/event-stream" {
		return false, errNoStream
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var id, event string
	var data strings.Builder
	for sc.Scan() {
		line := sc.Text()
		if line != "" {
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "id":
				id = value
			case "event":
				event = value
			case "data":
				if data.Len() > 0 {
					data.WriteByte('\n')
				}
				data.WriteString(value)
			}
			continue
		}
		if data.Len() > 0 && (event == "" || event == "progress") {
			var ev rest.Event
			if json.Unmarshal([]byte(data.String()), &ev) == nil {
				got = true
				if id != "" {
					w.lastID = id
				}
				if !w.emit(ev) {
					return got, nil
				}
			}
		}
		id, event = "", ""
		data.Reset()
	}
	return got, sc.Err()
}

// emit yields ev; false when the loop is over (the caller stopped or the
// job ended).
func (w *watch) emit(ev rest.Event) bool {
	if !w.yield(ev, nil) || rest.Status(ev.Status).Terminal() {
		w.stopped = true
		return false
	}
	return true
}

// poll reads the job every poll interval and yields each change.
func (w *watch) poll(ctx context.Context) {
	var last rest.Event
	for {
		j, err := w.c.Get(ctx, w.jobID)
		if err != nil {
			w.yield(rest.Event{}, err)
			return
		}
		ev := rest.EventOf(j)
		if !ev.Time.Equal(last.Time) || ev.Status != last.Status || ev.Percent != last.Percent || ev.Stage != last.Stage {
			last = ev
			if !w.emit(ev) {
				return
			}
		}
		select {
		case <-ctx.Done():
			w.yield(rest.Event{}, ctx.Err())
			return
		case <-time.After(w.c.poll):
		}
	}
}
