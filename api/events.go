package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// defaultSSEKeepAlive is how often an idle event stream sends a comment
// line unless Config.SSEKeepAlive says otherwise.
const defaultSSEKeepAlive = 15 * time.Second

// jobEvents streams a job's progress as Server-Sent Events until the job
// ends: one "progress" event per change of its record (the current state
// first, so a job that already ended gets its final state at once). Each
// event's id is the record's revision; a client that reconnects with
// Last-Event-ID gets only the changes after that revision (the current
// state too when it is newer).
func (s *Server) jobEvents(w http.ResponseWriter, r *http.Request) {
	rec, ok := s.jobOf(w, r)
	if !ok {
		return
	}
	// An id that is not a revision is ignored: the stream starts over.
	after, _ := strconv.ParseUint(r.Header.Get("Last-Event-ID"), 10, 64)
	watcher, err := s.state.Jobs.Watch(r.Context(), rec.Hypervisor, rec.JobID)
	if err != nil {
		s.failNATS(w, r, "watch job", err)
		return
	}
	defer func() { _ = watcher.Stop() }()

	stream, err := s.startStream(w)
	if err != nil {
		s.log.WithError(err).WithField("request_id", requestID(r)).Error("cannot stream events")
		return
	}
	keepAlive := time.NewTicker(s.cfg.SSEKeepAlive)
	defer keepAlive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keepAlive.C:
			if stream.send(": keep-alive\n\n") != nil {
				return
			}
		case c, open := <-watcher.Changes():
			if !open {
				return
			}
			if c == nil || c.Deleted || c.Err != nil {
				continue
			}
			j := c.Value
			if c.Revision <= after {
				if j.Status.Terminal() {
					return
				}
				continue
			}
			data, _ := json.Marshal(rest.EventOf(j))
			if stream.send(fmt.Sprintf("id: %s\nevent: progress\ndata: %s\n\n", strconv.FormatUint(c.Revision, 10), data)) != nil {
				return
			}
			if j.Status.Terminal() {
				return
			}
		}
	}
}

// eventStream writes Server-Sent Events, each flushed at once under a write
// deadline of its own.
type eventStream struct {
	w  http.ResponseWriter
	rc *http.ResponseController
	// window is how long one write may take: two keep-alive intervals.
	window time.Duration
}

// startStream starts the response. The server's write timeout is replaced
// by a deadline per write, so a stream lives as long as the job while a
// client that stopped reading is still dropped.
func (s *Server) startStream(w http.ResponseWriter) (*eventStream, error) {
	rc := http.NewResponseController(w)
	st := &eventStream{w: w, rc: rc, window: 2 * s.cfg.SSEKeepAlive}
	if err := rc.SetWriteDeadline(time.Now().Add(st.window)); err != nil {
		return nil, fmt.Errorf("set the write deadline of the event stream: %w", err)
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return nil, fmt.Errorf("flush the event stream: %w", err)
	}
	return st, nil
}

// send writes one event or comment and flushes it.
func (st *eventStream) send(text string) error {
	if err := st.rc.SetWriteDeadline(time.Now().Add(st.window)); err != nil {
		return err
	}
	if _, err := io.WriteString(st.w, text); err != nil {
		return err
	}
	return st.rc.Flush()
}
