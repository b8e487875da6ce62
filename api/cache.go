package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"github.com/gorilla/mux"
	"github.com/nats-io/nats.go"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

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
	entries, err := s.state.Cache.List(ctx, host)
	if err != nil {
		s.failNATS(w, r, "list cache", err)
		return
	}
	out := rest.CacheList{Images: []rest.CachedImage{}, Count: len(entries), Offset: offset, Limit: limit}
	for i := offset; i < len(entries) && i < offset+limit; i++ {
		e := entries[i]
		img := rest.CachedImage{Path: e.Path, Size: e.Size, Checksum: e.Checksum}
		if g := e.Golden; g != nil {
			img.Golden = &rest.CachedGolden{Path: g.Path, Size: g.Size, AllocatedBytes: g.AllocatedBytes, Digest: g.Digest,
				Immutable: g.Immutable, CreatedAt: g.CreatedAt, VerifiedAt: g.VerifiedAt}
		}
		out.Images = append(out.Images, img)
	}
	writeJSON(w, http.StatusOK, out)
}

var hexDigestRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// deleteCachedImage asks the hypervisor's worker to remove an image from
// its cache: 200 when removed, 404 when not cached, 409 while a job uses it,
// 503 when the worker is not running.
func (s *Server) deleteCachedImage(w http.ResponseWriter, r *http.Request) {
	key := strings.ToLower(mux.Vars(r)["checksum"])
	if !hexDigestRE.MatchString(key) {
		writeError(w, http.StatusBadRequest, catInvalid, "checksum must be 64 hexadecimal digits (the cache key shown by GET /api/v1/cache/images)")
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
	if key, ok = s.scopedCacheKey(ctx, w, r, host, key); !ok {
		return
	}
	data, _ := json.Marshal(messaging.CacheDeleteRequest{Key: key, Caller: identity(r).Name})
	msg, err := s.nc.RequestWithContext(ctx, s.subjects.CacheDelete(host), data)
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) {
		writeError(w, http.StatusServiceUnavailable, catUnavailable, fmt.Sprintf("the worker of hypervisor %q is not running; only it can remove images from its cache", host))
		return
	}
	if err != nil {
		s.failNATS(w, r, "ask the worker to remove the image", err)
		return
	}
	var rep messaging.CacheDeleteReply
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		writeError(w, http.StatusInternalServerError, catInternal, "the worker's answer is not readable")
		return
	}
	switch rep.Result {
	case messaging.CacheDeleted:
		s.log.WithFields(map[string]any{"host": host, "key": key, "caller": identity(r).Name, "request_id": requestID(r)}).Info("cached image removed")
		writeJSON(w, http.StatusOK, rest.CacheDeleted{Status: "deleted", Checksum: key, Hypervisor: host})
	case messaging.CacheNotFound:
		writeError(w, http.StatusNotFound, "image not found", fmt.Sprintf("image %s is not in the cache of hypervisor %q", key, host))
	case messaging.CacheInUse:
		writeError(w, http.StatusConflict, catConflict, fmt.Sprintf("image %s is in use by a running job on hypervisor %q; try again when it ends", key, host))
	default:
		writeError(w, http.StatusInternalServerError, catInternal, "the worker could not remove the image: "+rep.Message)
	}
}

// scopedCacheKey checks that a caller whose scope limits images (volume
// names or image buckets) may remove the cached image named by key (a cache
// key or a content checksum, resolved as the worker does) and returns the
// entry's cache key, so the worker removes exactly the entry checked. It
// answers the request itself: 404 when no entry matches, 403 when the entry
// came from outside the scope. Unscoped callers pass key through.
func (s *Server) scopedCacheKey(ctx context.Context, w http.ResponseWriter, r *http.Request, host, key string) (string, bool) {
	id := identity(r)
	if !id.ImageScoped() {
		return key, true
	}
	if len(id.Buckets) == 0 { // scoped to volumes only: no cache entry is its own
		writeError(w, http.StatusForbidden, catForbidden, id.AllowCache(messaging.ImageRef{}).Error())
		return "", false
	}
	entry, err := s.state.Cache.Get(ctx, host, key)
	if errors.Is(err, kvstate.ErrCacheEntryNotFound) {
		var entries []kvstate.CacheEntry
		if entries, err = s.state.Cache.List(ctx, host); err == nil {
			err = kvstate.ErrCacheEntryNotFound
			for _, e := range entries {
				if e.Checksum == key {
					entry, err = e, nil
					break
				}
			}
		}
	}
	if errors.Is(err, kvstate.ErrCacheEntryNotFound) {
		writeError(w, http.StatusNotFound, "image not found", fmt.Sprintf("image %s is not in the cache of hypervisor %q", key, host))
		return "", false
	}
	if err != nil {
		s.failNATS(w, r, "read cache index", err)
		return "", false
	}
	ref, err := messaging.ParseImageURL(entry.SourceURL)
	if err == nil {
		err = id.AllowCache(ref)
	}
	if err != nil {
		// The message does not say where the image came from.
		writeError(w, http.StatusForbidden, catForbidden, fmt.Sprintf("%s may not remove image %s from the cache of hypervisor %q: it did not come from the image buckets of its scope (%s)", id.Name, key, host, id.Buckets))
		return "", false
	}
	return entry.Key, true
}
