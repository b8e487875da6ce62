package api

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
)

// cachedImage is one image in GET /api/v1/cache/images.
type cachedImage struct {
	Path     string `json:"path"`
	Size     int64  `json:"size"`
	Checksum string `json:"checksum"`
}

type cacheList struct {
	Images []cachedImage `json:"images"`
	Count  int           `json:"count"`
	Offset int           `json:"offset"`
	Limit  int           `json:"limit"`
}

// MaxPageLimit is the largest page GET /api/v1/cache/images returns.
const MaxPageLimit = 1000

func queryInt(r *http.Request, name string, def, min, max int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < min || n > max {
		return 0, fmt.Errorf("%s must be an integer between %d and %d, not %q", name, min, max, v)
	}
	return n, nil
}

func (s *Server) listCache(w http.ResponseWriter, r *http.Request) {
	offset, err := queryInt(r, "offset", 0, 0, 1<<31-1)
	if err != nil {
		writeError(w, http.StatusBadRequest, catInvalid, err.Error())
		return
	}
	limit, err := queryInt(r, "limit", 100, 1, MaxPageLimit)
	if err != nil {
		writeError(w, http.StatusBadRequest, catInvalid, err.Error())
		return
	}
	if !s.connected(w) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.NATSTimeout)
	defer cancel()
	host, ok := s.resolveHost(ctx, w, r, r.URL.Query().Get("hypervisor"))
	if !ok || !allowHost(w, r, host) {
		return
	}
	entries, err := s.cache.List(ctx, host)
	if err != nil {
		s.failNATS(w, r, "list cache", err)
		return
	}
	out := cacheList{Images: []cachedImage{}, Count: len(entries), Offset: offset, Limit: limit}
	for i := offset; i < len(entries) && i < offset+limit; i++ {
		e := entries[i]
		out.Images = append(out.Images, cachedImage{Path: e.Path, Size: e.Size, Checksum: e.Checksum})
	}
	writeJSON(w, http.StatusOK, out)
}
