package api

import (
	"context"
	"net/http"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// Health is the body of /health, /healthz and /livez.
type Health = rest.Health

// health reports "healthy", or "degraded" when NATS is unreachable or no
// worker is alive. It always answers 200: the process itself is live.
func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	h := Health{Status: "healthy", Timestamp: time.Now().UTC(), Version: s.cfg.Version,
		Uptime: time.Since(s.started).Round(time.Second).String(), Checks: map[string]string{}}
	if !s.nc.IsConnected() {
		h.Checks["nats"] = "unreachable"
	} else {
		h.Checks["nats"] = "ok"
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		hosts, err := s.state.Hosts.List(ctx)
		alive := 0
		for _, x := range hosts {
			if x.Alive(time.Now()) {
				alive++
			}
		}
		switch {
		case err != nil:
			h.Checks["workers"] = "unknown: " + err.Error()
		case alive == 0:
			h.Checks["workers"] = "no worker alive"
		default:
			h.Checks["workers"] = "ok"
		}
	}
	for _, v := range h.Checks {
		if v != "ok" {
			h.Status = "degraded"
		}
	}
	writeJSON(w, http.StatusOK, h)
}

// ready answers 200 when NATS is reachable and every KV bucket answers, and
// 503 in the API's error format otherwise.
func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	if !s.connected(w) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.state.Check(ctx); err != nil {
		writeError(w, http.StatusServiceUnavailable, catUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
