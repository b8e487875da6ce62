package api

import (
	"context"
	"net/http"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// listHosts answers GET /api/v1/hosts: the host registry, each host alive
// or stale, limited to the hosts the caller's scope names.
func (s *Server) listHosts(w http.ResponseWriter, r *http.Request) {
	if !s.connected(w) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.NATSTimeout)
	defer cancel()
	hosts, err := s.state.Hosts.List(ctx)
	if err != nil {
		s.failNATS(w, r, "read host registry", err)
		return
	}
	id, now := identity(r), time.Now()
	out := rest.HostList{Hosts: []rest.Host{}}
	for _, h := range hosts {
		if id.AllowHost(h.Name) != nil {
			continue
		}
		out.Hosts = append(out.Hosts, rest.Host{Name: h.Name, Alive: h.Alive(now), LastSeen: h.LastSeen, StartedAt: h.StartedAt,
			Version: h.Version, ActiveJobs: h.ActiveJobs})
	}
	writeJSON(w, http.StatusOK, out)
}
