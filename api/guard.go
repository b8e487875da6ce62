package api

import (
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
)

// Error category of a request body in another format than JSON.
const catMediaType = "unsupported media type"

// probePaths are the health and metrics endpoints: Prometheus and load
// balancers call them by whatever address or name their target list holds,
// so they are exempt from the Host check (they are read-only and open
// without authentication anyway). The Origin check still applies.
var probePaths = map[string]bool{"/health": true, "/healthz": true, "/livez": true, "/readyz": true, "/metrics": true}

// corsAllowHeaders are the request headers a configured cross-origin caller
// may send.
const corsAllowHeaders = "Authorization, Content-Type, X-API-Token, Idempotency-Key, X-Request-ID, X-Content-SHA256, traceparent, tracestate"

// corsExposeHeaders are the response headers a cross-origin caller may read.
const corsExposeHeaders = "X-Request-ID, Location, Idempotent-Replayed"

// guard holds what the request guard allows: Host names and cross-origin
// origins.
type guard struct {
	// hosts are the allowed Host names (lower case, no port).
	hosts map[string]bool
	// origins are the browser origins allowed to call cross-origin.
	origins map[string]bool
}

// newGuard builds the allowed Host set from the listen address (its host;
// on loopback also localhost and the loopback addresses; on a wildcard
// address also the machine's host name) and the configured names, and the
// allowed origins from the configured ones.
func newGuard(listen string, hosts, origins []string) guard {
	g := guard{hosts: map[string]bool{}, origins: map[string]bool{}}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		host = listen
	}
	host = normalHost(host)
	ip := net.ParseIP(host)
	switch {
	case host == "localhost" || (ip != nil && ip.IsLoopback()):
		for _, h := range []string{host, "localhost", "127.0.0.1", "::1"} {
			g.hosts[h] = true
		}
	case host == "" || (ip != nil && ip.IsUnspecified()):
		if name, err := os.Hostname(); err == nil {
			g.hosts[normalHost(name)] = true
		}
	default:
		g.hosts[host] = true
	}
	for _, h := range hosts {
		if h = normalHost(strings.TrimSpace(h)); h != "" {
			g.hosts[h] = true
		}
	}
	for _, o := range origins {
		if o = normalOrigin(o); o != "" {
			g.origins[o] = true
		}
	}
	return g
}

// normalHost lower-cases a host name and drops brackets and a trailing dot.
func normalHost(h string) string {
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// normalOrigin is an origin as browsers send it: lower case, no trailing slash.
func normalOrigin(o string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(o)), "/")
}

// allowHost reports whether the request's Host names this API: an allowed
// name, or the address the connection arrived on. An empty Host (HTTP/1.0)
// passes: browsers always send one.
func (g guard) allowHost(r *http.Request) bool {
	if r.Host == "" {
		return true
	}
	host, _, err := net.SplitHostPort(r.Host)
	if err != nil {
		host = r.Host
	}
	host = normalHost(host)
	if g.hosts[host] {
		return true
	}
	ip := net.ParseIP(host)
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if ip == nil || !ok {
		return false
	}
	tcp, ok := local.(*net.TCPAddr)
	return ok && tcp.IP.Equal(ip)
}

// sameOrigin reports whether a browser origin is the API's own: its host
// and port are the request's Host (the scheme is not compared, so a
// TLS-terminating proxy in front keeps working).
func sameOrigin(origin string, r *http.Request) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	return strings.EqualFold(u.Host, r.Host)
}

// guard refuses, in the error format and before any handler reads the body:
// a Host that does not name this API (DNS rebinding; 403), a cross-origin
// request from an origin not configured for CORS (CSRF; 403), a declared
// body larger than the cap (413, so a client sending Expect: 100-continue
// never sends it) and a body that is not application/json (415, which a
// browser cannot send cross-origin without a CORS preflight). It answers the
// CORS preflight of a configured origin itself.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !probePaths[r.URL.Path] && !s.allowed.allowHost(r) {
			s.refuse(w, r, http.StatusForbidden, catForbidden, fmt.Sprintf("Host %q does not name this API; an operator can allow it in PROVISIONER_ALLOWED_HOSTS", r.Host))
			return
		}
		if origin := r.Header.Get("Origin"); origin != "" && !sameOrigin(origin, r) {
			if !s.allowed.origins[normalOrigin(origin)] {
				s.refuse(w, r, http.StatusForbidden, catForbidden, fmt.Sprintf("cross-origin requests from %q are not allowed; an operator can allow the origin in PROVISIONER_CORS_ORIGINS", origin))
				return
			}
			if corsHeaders(w, r) {
				return
			}
		}
		if isContentPath(r.URL.Path) {
			// An upload: any bytes, capped by its own handler.
			next.ServeHTTP(w, r)
			return
		}
		if r.ContentLength > s.cfg.MaxBodyBytes {
			s.refuse(w, r, http.StatusRequestEntityTooLarge, catInvalid, fmt.Sprintf("request body is larger than %d bytes", s.cfg.MaxBodyBytes))
			return
		}
		if r.ContentLength != 0 && !jsonBody(r) {
			s.refuse(w, r, http.StatusUnsupportedMediaType, catMediaType, fmt.Sprintf("request body must be JSON with Content-Type: application/json, not %q", r.Header.Get("Content-Type")))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// corsHeaders sets the CORS headers of an allowed cross-origin request and
// answers its preflight itself (true when it did).
func corsHeaders(w http.ResponseWriter, r *http.Request) bool {
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", r.Header.Get("Origin"))
	h.Add("Vary", "Origin")
	if r.Method != http.MethodOptions || r.Header.Get("Access-Control-Request-Method") == "" {
		h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
		return false
	}
	h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE")
	h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
	return true
}

// jsonBody reports whether the request declares a JSON body.
func jsonBody(r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && mt == "application/json"
}

// refuse answers a request the guard refused, and logs why.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, code int, category, message string) {
	s.log.WithFields(map[string]any{"request_id": requestID(r), "method": r.Method, "path": r.URL.Path, "host": r.Host,
		"origin": r.Header.Get("Origin"), "status": code, "reason": message}).Warn("request refused")
	writeError(w, code, category, message)
}
