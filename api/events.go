package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// defaultSSEKeepAlive is how often an idle event stream sends a comment
// line unless Config.SSEKeepAlive says otherwise.
const defaultSSEKeepAlive = 15 * time.Second

// jobEvents streams a job's progress as Server-Sent Events until the job
// ends: one "progress" event per change of its record (the current state
// first, so a job that already ended gets its final state at once). Each
// event's id is the record's revision.
func (s *Server) jobEvents(w http.ResponseWriter, r *http.Request) {
	rec, ok := s.jobOf(w, r)
	if !ok {
		return
	}
	watcher, err := s.jobs.Watch(r.Context(), rec.Hypervisor, rec.JobID)
	if err != nil {
		s.failNATS(w, r, "watch job", err)
		return
	}
	defer func() { _ = watcher.Stop() }()

	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // a stream outlives the server's write timeout
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_ = rc.Flush()

	keepAlive := time.NewTicker(s.cfg.SSEKeepAlive)
	defer keepAlive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keepAlive.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			_ = rc.Flush()
		case e, open := <-watcher.Updates():
			if !open {
				return
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			j, err := kvstate.DecodeJob(e.Value())
			if err != nil {
				continue
			}
			data, _ := json.Marshal(EventOf(j))
			if _, err := fmt.Fprintf(w, "id: %s\nevent: progress\ndata: %s\n\n", strconv.FormatUint(e.Revision(), 10), data); err != nil {
				return
			}
			_ = rc.Flush()
			if j.Status.Terminal() {
				return
			}
		}
	}
}

// EventOf is the progress event of a job record, the same payload workers
// publish on the job's NATS event subject.
func EventOf(j kvstate.Job) messaging.Event {
	ev := messaging.Event{JobID: j.JobID, Host: j.Hypervisor, Status: string(j.Status), Attempt: j.Attempt, Error: j.Error, Time: j.UpdatedAt}
	if j.Progress != nil {
		ev.Stage, ev.Percent, ev.Bytes, ev.Total, ev.ETASec = j.Progress.Stage, j.Progress.Percent, j.Progress.BytesProcessed, j.Progress.BytesTotal, j.Progress.ETASec
	}
	return ev
}
