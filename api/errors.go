package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// Error categories of the API's error body.
const (
	catInvalid     = "invalid request"
	catNotFound    = "job not found"
	catCancel      = "failed to cancel job"
	catUnavailable = "service unavailable"
	catConflict    = "conflict"
	catInternal    = "internal error"
)

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, category, message string) {
	writeJSON(w, code, rest.Error{Error: category, Message: message, Code: code})
}

// natsDown reports whether err means NATS could not be reached in time.
func natsDown(err error) bool {
	return errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, jetstream.ErrJetStreamNotEnabled)
}

// failNATS answers an error from NATS: 503 when NATS is unreachable or
// JetStream does not answer in time, 500 otherwise.
func (s *Server) failNATS(w http.ResponseWriter, r *http.Request, what string, err error) {
	if !s.nc.IsConnected() {
		writeError(w, http.StatusServiceUnavailable, catUnavailable, "NATS is unreachable ("+what+"); try again later")
		return
	}
	if natsDown(err) {
		writeError(w, http.StatusServiceUnavailable, catUnavailable, "NATS JetStream did not answer in time ("+what+"): the cluster may have no leader (an election, or too few nodes up) or be overloaded; try again later")
		return
	}
	s.log.WithError(err).WithField("request_id", requestID(r)).Error(what)
	writeError(w, http.StatusInternalServerError, catInternal, what+": "+err.Error())
}

// connected answers 503 at once when NATS is unreachable, so a request
// never waits on a connection that is down.
func (s *Server) connected(w http.ResponseWriter) bool {
	if s.nc.IsConnected() {
		return true
	}
	writeError(w, http.StatusServiceUnavailable, catUnavailable, "NATS is unreachable; try again later")
	return false
}
