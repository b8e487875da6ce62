package api

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/libvirt-volume-provisioner/provisioner/auth"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// Error categories of authentication and authorization failures.
const (
	catUnauthorized = "unauthorized"
	catForbidden    = "forbidden"
)

const identityKey ctxKey = 1

// openPaths under /api/v1 need no authentication.
var openPaths = map[string]bool{"/api/v1/openapi.yaml": true}

// authenticate requires an identity on /api/v1 (health, metrics and the
// API document stay open). With no authenticator every caller is
// anonymous.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := auth.Anonymous
		if s.cfg.Auth.Enabled() && strings.HasPrefix(r.URL.Path, "/api/v1/") && !openPaths[r.URL.Path] {
			var err error
			id, err = s.cfg.Auth.Authenticate(r)
			if err != nil {
				var ae *auth.Error
				code, msg := http.StatusUnauthorized, err.Error()
				if errors.As(err, &ae) {
					code = ae.Code
				}
				cat := catUnauthorized
				if code == http.StatusForbidden {
					cat = catForbidden
				}
				if code == http.StatusUnauthorized {
					w.Header().Set("WWW-Authenticate", `Bearer realm="provisioner"`)
				}
				s.log.WithFields(map[string]any{"request_id": requestID(r), "path": r.URL.Path, "status": code, "reason": msg}).Warn("request refused")
				writeError(w, code, cat, msg)
				return
			}
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), identityKey, id)))
	})
}

func identity(r *http.Request) auth.Identity {
	if id, ok := r.Context().Value(identityKey).(auth.Identity); ok {
		return id
	}
	return auth.Anonymous
}

// allowHost answers 403 itself when the caller may not use host.
func allowHost(w http.ResponseWriter, r *http.Request, host string) bool {
	if err := identity(r).AllowHost(host); err != nil {
		writeError(w, http.StatusForbidden, catForbidden, err.Error())
		return false
	}
	return true
}

// allowSubmission answers 403 itself when the caller's scope does not cover
// the job m from ref: the volume and the image's bucket of a provision job,
// AllowCache for a cache fetch.
func allowSubmission(w http.ResponseWriter, r *http.Request, m messaging.Job, ref messaging.ImageRef) bool {
	id := identity(r)
	var err error
	switch {
	case m.Kind == messaging.KindCacheFetch:
		err = id.AllowCache(ref)
	default:
		err = id.AllowVolume(m.VolumeName)
		if seed := m.SeedVolume(); err == nil && seed != "" {
			err = id.AllowVolume(seed)
		}
		if err == nil && m.ImageURL != "" {
			err = id.AllowImage(ref)
		}
	}
	if err != nil {
		writeError(w, http.StatusForbidden, catForbidden, err.Error())
		return false
	}
	return true
}
