package auth

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// Identity is an authenticated caller and what it may touch.
type Identity struct {
	// Name is recorded as the job's caller: "token:<kid>/<sub>",
	// "cert:<matched name>" or "anonymous".
	Name string
	// Hypervisors, when not empty, are the only hosts it may use.
	Hypervisors []string
	// Buckets, when not empty, are the only image sources (buckets or
	// bucket/prefix) it may submit jobs from, on top of the server's own
	// PROVISIONER_IMAGE_BUCKETS.
	Buckets messaging.ImageSources
	volumes *regexp.Regexp
}

// Anonymous is the identity of callers when authentication is off.
var Anonymous = Identity{Name: "anonymous"}

// AllowHost says whether the identity may use host; the error is meant for
// the caller (403).
func (id Identity) AllowHost(host string) error {
	if len(id.Hypervisors) == 0 || slices.Contains(id.Hypervisors, host) {
		return nil
	}
	return fmt.Errorf("%s may not use hypervisor %q (allowed: %s)", id.Name, host, strings.Join(id.Hypervisors, ", "))
}

// AllowVolume says whether the identity may write volume name (403).
func (id Identity) AllowVolume(name string) error {
	if id.volumes == nil || id.volumes.MatchString(name) {
		return nil
	}
	return fmt.Errorf("%s may not write volume %q (allowed: names matching %s)", id.Name, name, id.volumes)
}

// AllowImage says whether the identity may use an image from ref's bucket
// (403).
func (id Identity) AllowImage(ref messaging.ImageRef) error {
	if id.Buckets.Allows(ref) {
		return nil
	}
	return fmt.Errorf("%s may not use images from %s (allowed: %s)", id.Name, id.Buckets.Describe(ref), id.Buckets)
}

// ImageScoped reports whether the identity's scope limits which images it
// may touch (a volume pattern or image buckets): such an identity may touch
// a cache entry only after AllowCache accepted the entry's source.
func (id Identity) ImageScoped() bool { return id.volumes != nil || len(id.Buckets) > 0 }

// AllowCache says whether the identity may fetch an image from ref into a
// host's cache, or remove an image that came from ref (403). An identity
// scoped to volume names may touch the cache only when its scope also names
// image buckets, and then only for images from them.
func (id Identity) AllowCache(ref messaging.ImageRef) error {
	if id.volumes != nil && len(id.Buckets) == 0 {
		return fmt.Errorf("%s is scoped to volumes matching %s and may not fetch or remove cached images (its scope names no image buckets)", id.Name, id.volumes)
	}
	return id.AllowImage(ref)
}

// AllowJob says whether the identity may read, cancel or watch an existing
// job of kind, for volume, from imageURL (403). A provision job must be for
// a volume in scope; a cache fetch job follows AllowCache. The message does
// not name the job's volume or image, which the caller may not see.
func (id Identity) AllowJob(jobID, kind, volume, imageURL string) error {
	if kind == messaging.KindCacheFetch {
		if id.volumes == nil && len(id.Buckets) == 0 {
			return nil
		}
		if ref, err := messaging.ParseImageURL(imageURL); err == nil && id.AllowCache(ref) == nil {
			return nil
		}
		return fmt.Errorf("%s may not use job %s: it fetches an image outside its scope", id.Name, jobID)
	}
	if id.volumes == nil || id.volumes.MatchString(volume) {
		return nil
	}
	return fmt.Errorf("%s may not use job %s: its volume is outside its scope (names matching %s)", id.Name, jobID, id.volumes)
}

// Client is an allowed client certificate identity and its scope.
type Client struct {
	// Name matches a verified certificate: "cn:<common name>",
	// "dns:<DNS SAN>", "uri:<URI SAN>" or "email:<email SAN>".
	Name        string   `json:"name"`
	Hypervisors []string `json:"hypervisors,omitempty"`
	// Volumes, when set, is a regular expression volume names must match;
	// it is anchored (^…$).
	Volumes string `json:"volumes,omitempty"`
	// Buckets, when set, are the image sources ("bucket" or
	// "bucket/prefix") the client may use.
	Buckets []string `json:"buckets,omitempty"`
}

// Policy is the allowlist of client certificate identities.
type Policy struct {
	Clients []Client `json:"clients"`
}

// LoadPolicy reads a policy from a JSON file.
func LoadPolicy(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("client policy: %w", err)
	}
	var p Policy
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("client policy %s: %w", path, err)
	}
	for _, c := range p.Clients {
		kind, _, ok := strings.Cut(c.Name, ":")
		if !ok || !slices.Contains([]string{"cn", "dns", "uri", "email"}, kind) {
			return nil, fmt.Errorf("client policy %s: name %q must start with cn:, dns:, uri: or email:", path, c.Name)
		}
		if _, err := anchored(c.Volumes); err != nil {
			return nil, fmt.Errorf("client policy %s: volumes of %q: %w", path, c.Name, err)
		}
		if _, err := parseBuckets(c.Buckets); err != nil {
			return nil, fmt.Errorf("client policy %s: buckets of %q: %w", path, c.Name, err)
		}
	}
	return &p, nil
}

// parseBuckets reads a scope's image sources.
func parseBuckets(entries []string) (messaging.ImageSources, error) {
	var out messaging.ImageSources
	for _, e := range entries {
		src, err := messaging.ParseImageSource(e)
		if err != nil {
			return nil, err
		}
		out = append(out, src)
	}
	return out, nil
}

func anchored(pattern string) (*regexp.Regexp, error) {
	if pattern == "" {
		return nil, nil
	}
	return regexp.Compile("^(?:" + pattern + ")$")
}

// certNames are the names a certificate can be allowed by.
func certNames(cert *x509.Certificate) []string {
	names := []string{"cn:" + cert.Subject.CommonName}
	for _, d := range cert.DNSNames {
		names = append(names, "dns:"+d)
	}
	for _, u := range cert.URIs {
		names = append(names, "uri:"+u.String())
	}
	for _, e := range cert.EmailAddresses {
		names = append(names, "email:"+e)
	}
	return names
}

// Error is an authentication (401) or authorization (403) failure.
type Error struct {
	Code    int
	Message string
}

func (e *Error) Error() string { return e.Message }

// Authenticator checks REST callers.
type Authenticator struct {
	// Keys verify API tokens; empty means tokens are not accepted.
	Keys Keys
	// Policy allows client certificates; nil means none are.
	Policy *Policy
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Enabled reports whether any authentication is configured.
func (a *Authenticator) Enabled() bool { return a != nil && (len(a.Keys) > 0 || a.Policy != nil) }

// Authenticate finds the caller of r: a verified client certificate on the
// policy first, then an API token (X-API-Token, or Authorization: Bearer).
func (a *Authenticator) Authenticate(r *http.Request) (Identity, error) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.PeerCertificates) > 0 {
		cert := r.TLS.PeerCertificates[0]
		if a.Policy != nil {
			names := certNames(cert)
			for _, c := range a.Policy.Clients {
				if slices.Contains(names, c.Name) {
					re, _ := anchored(c.Volumes)
					buckets, _ := parseBuckets(c.Buckets) // checked by LoadPolicy
					return Identity{Name: "cert:" + strings.TrimPrefix(c.Name, "cn:"), Hypervisors: c.Hypervisors, Buckets: buckets, volumes: re}, nil
				}
			}
		}
		return Identity{}, &Error{Code: http.StatusForbidden, Message: fmt.Sprintf("client certificate %q is not on the allowlist", cert.Subject.String())}
	}
	token := r.Header.Get("X-API-Token")
	if token == "" {
		if h := r.Header.Get("Authorization"); h != "" {
			scheme, rest, _ := strings.Cut(h, " ")
			if !strings.EqualFold(scheme, "Bearer") {
				return Identity{}, &Error{Code: http.StatusUnauthorized, Message: "Authorization must use the Bearer scheme"}
			}
			token = strings.TrimSpace(rest)
		}
	}
	if token == "" {
		return Identity{}, &Error{Code: http.StatusUnauthorized, Message: "authentication required: present a client certificate or an API token (X-API-Token or Authorization: Bearer)"}
	}
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	c, err := a.Keys.Verify(token, now())
	if err != nil {
		msg := "invalid API token: " + err.Error()
		if errors.Is(err, ErrNoSecrets) {
			msg = "API tokens are not accepted by this server"
		}
		return Identity{}, &Error{Code: http.StatusUnauthorized, Message: msg}
	}
	re, _ := regexp.Compile(c.Volumes)
	if c.Volumes != "" {
		re, _ = anchored(c.Volumes)
	}
	buckets, _ := parseBuckets(c.Buckets) // checked by Verify
	return Identity{Name: "token:" + c.KeyID + "/" + c.Subject, Hypervisors: c.Hypervisors, Buckets: buckets, volumes: re}, nil
}
