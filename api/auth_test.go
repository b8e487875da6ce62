package api

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/auth"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// withTokens configures token authentication with one secret, and returns
// a function that mints a token of that secret for claims.
func withTokens(t *testing.T) (func(*Config), func(auth.Claims) map[string]string) {
	t.Helper()
	keys, err := auth.ParseKeys("k1:" + auth.NewSecret())
	require.NoError(t, err)
	configure := func(c *Config) { c.Auth = &auth.Authenticator{Keys: keys} }
	mint := func(c auth.Claims) map[string]string {
		c.KeyID, c.Expires = "k1", time.Now().Add(time.Hour).Unix()
		tok, err := keys.Mint(c)
		require.NoError(t, err)
		return map[string]string{rest.HeaderToken: tok}
	}
	return configure, mint
}

func TestAuthenticationRefusals(t *testing.T) {
	t.Parallel()
	configure, mint := withTokens(t)
	tb := setup(t, configure)
	for _, tc := range []struct {
		name    string
		header  map[string]string
		message string
	}{
		{"no credentials", nil, "authentication required: present a client certificate or an API token (X-API-Token or Authorization: Bearer)"},
		{"not a token", map[string]string{rest.HeaderToken: "pvt1.nonsense"}, "invalid API token: "},
		{"not Bearer", map[string]string{"Authorization": "Basic dTpw"}, "Authorization must use the Bearer scheme"},
		{"another server's token", map[string]string{rest.HeaderToken: func() string {
			_, other := withTokens(t)
			return other(auth.Claims{Subject: "eve"})[rest.HeaderToken]
		}()}, "invalid API token: token signature does not match"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rr := tb.do(t, request{method: http.MethodPost, path: "/api/v1/jobs", body: jobBody, header: tc.header})
			msg := apiError(t, rr, http.StatusUnauthorized, catUnauthorized)
			require.Contains(t, msg, tc.message)
			require.Equal(t, `Bearer realm="provisioner"`, rr.Header().Get("WWW-Authenticate"))
		})
	}
	require.Empty(t, keys(t, tb.buckets.Jobs), "no job from an unauthenticated request")

	for _, open := range []string{"/api/v1/openapi.yaml", "/health", "/readyz"} {
		require.Equal(t, http.StatusOK, tb.do(t, request{method: http.MethodGet, path: open}).Code, open+" needs no credentials")
	}
	bearer := map[string]string{"Authorization": "Bearer " + mint(auth.Claims{Subject: "ci"})[rest.HeaderToken]}
	id := accepted(t, tb.do(t, request{method: http.MethodPost, path: "/api/v1/jobs", body: jobBody, header: bearer}))
	require.Equal(t, "token:k1/ci", tb.record(t, testHost, id).Caller, "the token's subject is the caller")
}

func TestScopeRefusals(t *testing.T) {
	t.Parallel()
	configure, mint := withTokens(t)
	tb := setup(t, configure)
	registerHost(t, tb.buckets, "h2", time.Now())
	admin := mint(auth.Claims{Subject: "admin"})
	onH2 := mint(auth.Claims{Subject: "h2-only", Hypervisors: []string{"h2"}})
	webOnly := mint(auth.Claims{Subject: "web", Volumes: "web-.*"})
	otherBucket := mint(auth.Claims{Subject: "other", Buckets: []string{"other"}})

	id := accepted(t, tb.do(t, request{method: http.MethodPost, path: "/api/v1/jobs", body: jobBody, header: admin}))
	for _, tc := range []struct {
		name, method, path, body string
		header                   map[string]string
		message                  string
	}{
		{"submit to another host", http.MethodPost, "/api/v1/jobs", strings.Replace(jobBody, "vm-1", "vm-5", 1), onH2, `token:k1/h2-only may not use hypervisor "h1" (allowed: h2)`},
		{"submit another volume", http.MethodPost, "/api/v1/jobs", strings.Replace(jobBody, "vm-1", "vm-5", 1), webOnly, `token:k1/web may not write volume "vm-5" (allowed: names matching`},
		{"submit from another bucket", http.MethodPost, "/api/v1/jobs", strings.Replace(jobBody, "vm-1", "vm-5", 1), otherBucket, "token:k1/other may not use images from"},
		{"read a job on another host", http.MethodGet, "/api/v1/jobs/" + id, "", onH2, `may not use hypervisor "h1"`},
		{"read a job of another volume", http.MethodGet, "/api/v1/jobs/" + id, "", webOnly, "token:k1/web may not use job " + id + ": its volume is outside its scope"},
		{"cancel a job on another host", http.MethodPost, "/api/v1/jobs/" + id + "/cancel", "", onH2, `may not use hypervisor "h1"`},
		{"list another host's jobs", http.MethodGet, "/api/v1/jobs?hypervisor=h1", "", onH2, `may not use hypervisor "h1"`},
		{"list another host's cache", http.MethodGet, "/api/v1/cache/images?hypervisor=h1", "", onH2, `may not use hypervisor "h1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rr := tb.do(t, request{method: tc.method, path: tc.path, body: tc.body, header: tc.header})
			require.Contains(t, apiError(t, rr, http.StatusForbidden, catForbidden), tc.message)
		})
	}
	require.Equal(t, []string{testHost + "." + id}, keys(t, tb.buckets.Jobs), "no refused submission records a job")
	require.Equal(t, kvstate.StatusPending, tb.record(t, testHost, id).Status, "the refused cancel changed nothing")

	rr := tb.do(t, request{method: http.MethodGet, path: "/api/v1/hosts", header: onH2})
	require.Equal(t, http.StatusOK, rr.Code)
	var hosts rest.HostList
	require.NoError(t, json.Unmarshal(rr.Body.Bytes(), &hosts))
	require.Len(t, hosts.Hosts, 1, "a scoped caller sees its hosts only")
	require.Equal(t, "h2", hosts.Hosts[0].Name)
}

// An Idempotency-Key is the caller's own: another caller's request with
// the same key is a submission of its own, not a replay (nor a 422).
func TestIdempotencyKeysArePerCaller(t *testing.T) {
	t.Parallel()
	configure, mint := withTokens(t)
	tb := setup(t, configure)
	alice, bob := mint(auth.Claims{Subject: "alice"}), mint(auth.Claims{Subject: "bob"})
	post := func(header map[string]string, vol string) string {
		h := map[string]string{HeaderIdempotencyKey: "same-key"}
		for k, v := range header {
			h[k] = v
		}
		rr := tb.do(t, request{method: http.MethodPost, path: "/api/v1/jobs", body: strings.Replace(jobBody, "vm-1", vol, 1), header: h})
		require.Empty(t, rr.Header().Get(rest.HeaderIdempotentReplayed))
		return accepted(t, rr)
	}
	a, b := post(alice, "vm-a"), post(bob, "vm-b")
	require.NotEqual(t, a, b)
	require.Equal(t, "token:k1/bob", tb.record(t, testHost, b).Caller)
}
