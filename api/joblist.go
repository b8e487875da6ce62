package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// listJobs answers GET /api/v1/jobs: the job records, newest first, of
// one hypervisor or of all the caller may use, optionally of some statuses.
// It pages the view of the job bucket the fleet figures keep, then reads
// only the page's records.
func (s *Server) listJobs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	offset, err := queryInt(r, "offset", 0, 0, 1<<31-1)
	limit := 0
	if err == nil {
		limit, err = queryInt(r, "limit", 100, 1, MaxPageLimit)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, catInvalid, err.Error())
		return
	}
	host := q.Get("hypervisor")
	if host != "" && !messaging.ValidHost(host) {
		writeError(w, http.StatusBadRequest, catInvalid, fmt.Sprintf("hypervisor %q is not a host name (lower-case letters, digits and dashes)", host))
		return
	}
	statuses, err := parseStatuses(q.Get("status"))
	if err != nil {
		writeError(w, http.StatusBadRequest, catInvalid, err.Error())
		return
	}
	if host != "" && !allowHost(w, r, host) {
		return
	}
	st := s.index.Load()
	if !s.connected(w) {
		return
	}
	if st == nil || !st.isReady() {
		writeError(w, http.StatusServiceUnavailable, catUnavailable, "the job index is still loading; try again later")
		return
	}
	keys := st.matching(host, statuses, identity(r).AllowHost)
	out := rest.JobList{Jobs: []rest.Job{}, Count: len(keys), Offset: offset, Limit: limit}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.NATSTimeout)
	defer cancel()
	for i := offset; i < len(keys) && i < offset+limit; i++ {
		h, id, _ := strings.Cut(keys[i], ".")
		rec, _, err := s.state.Jobs.Get(ctx, h, id)
		if errors.Is(err, kvstate.ErrJobNotFound) {
			continue // expired or removed since
		}
		if err != nil {
			s.failNATS(w, r, "read job", err)
			return
		}
		if identity(r).AllowJob(rec.JobID, rec.Kind, rec.VolumeName, rec.ImageURL) != nil {
			continue
		}
		out.Jobs = append(out.Jobs, rec)
	}
	writeJSON(w, http.StatusOK, out)
}

// parseStatuses reads a comma-separated status filter (empty: all).
func parseStatuses(v string) ([]kvstate.Status, error) {
	if v == "" {
		return nil, nil
	}
	var out []kvstate.Status
	for _, p := range strings.Split(v, ",") {
		st := kvstate.Status(strings.TrimSpace(p))
		if !slices.Contains(allStatuses, st) {
			return nil, fmt.Errorf("status %q is not a job status (pending, running, completed, failed, cancelled)", p)
		}
		out = append(out, st)
	}
	return out, nil
}

func (st *fleetState) isReady() bool {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return st.ready
}

// matching is the keys of the records on host (empty: any host allowed)
// with one of statuses (empty: any), newest first.
func (st *fleetState) matching(host string, statuses []kvstate.Status, allowHost func(string) error) []string {
	type entry struct {
		key     string
		created time.Time
	}
	var found []entry
	st.mu.RLock()
	for k, j := range st.jobs {
		h, _, _ := strings.Cut(k, ".")
		if (host != "" && h != host) || (len(statuses) > 0 && !slices.Contains(statuses, j.status)) || allowHost(h) != nil {
			continue
		}
		found = append(found, entry{k, j.created})
	}
	st.mu.RUnlock()
	sort.Slice(found, func(a, b int) bool {
		if !found[a].created.Equal(found[b].created) {
			return found[a].created.After(found[b].created)
		}
		return found[a].key < found[b].key
	})
	keys := make([]string, len(found))
	for i, e := range found {
		keys[i] = e.key
	}
	return keys
}
