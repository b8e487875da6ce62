package api

import (
	"context"
	"net/http"
	"time"
)

// Health is the body of /health, /healthz and /livez.
type Health struct {
	Status    string    `json:"status"`
	Timestamp time.Time `json:"timestamp"`
	Version   string    `json:"version"`
	Uptime    string    `json:"uptime"`
	// Checks says why the status is degraded.
	Checks map[string]string `json:"checks,omitempty"`
}

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
		hosts, err := s.hosts.List(ctx)
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
