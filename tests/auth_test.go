package tests

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/auth"
	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

// secureEnv runs the API with TLS, client certificates (allowlist: cn:ci-bot
// for all hosts, cn:web-deployer for h1 and volumes web-*) and two active
// token secrets.
type secureEnv struct {
	*env
	ca       *testenv.CA
	keys     auth.Keys
	dir      string
	withCert func(cn string) *http.Client
}

func newSecureEnv(t *testing.T) *secureEnv {
	t.Helper()
	dir := t.TempDir()
	ca := testenv.NewCA(t, "provisioner test CA")
	srvCert, srvKey := ca.Issue(t, "api", true)
	certPath, keyPath := testenv.WriteFiles(t, dir, "api", srvCert, srvKey)
	caPath := filepath.Join(dir, "ca.crt")
	require.NoError(t, os.WriteFile(caPath, ca.CertPEM, 0o644))
	policy := filepath.Join(dir, "policy.json")
	require.NoError(t, os.WriteFile(policy, []byte(`{"clients": [
		{"name": "cn:ci-bot"},
		{"name": "cn:web-deployer", "hypervisors": ["h1"], "volumes": "web-.*"}]}`), 0o644))
	secrets := "ops:" + auth.NewSecret() + "\nold:" + auth.NewSecret() + "\n"
	secretsPath := filepath.Join(dir, "secrets")
	require.NoError(t, os.WriteFile(secretsPath, []byte(secrets), 0o600))
	keys, err := auth.ParseKeys(secrets)
	require.NoError(t, err)

	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: testenv.ClientTLS(t, ca, nil, nil)}, Timeout: 30 * time.Second}
	e := newEnv(t, envOptions{client: noCert, tls: true, apiEnv: []string{
		"PROVISIONER_TLS_CERT=" + certPath, "PROVISIONER_TLS_KEY=" + keyPath,
		"PROVISIONER_CLIENT_CA=" + caPath, "PROVISIONER_CLIENT_POLICY=" + policy,
		"PROVISIONER_TOKEN_SECRETS_FILE=" + secretsPath,
	}})
	return &secureEnv{env: e, ca: ca, keys: keys, dir: dir, withCert: func(cn string) *http.Client {
		c, k := ca.Issue(t, cn, false)
		return &http.Client{Transport: &http.Transport{TLSClientConfig: testenv.ClientTLS(t, ca, c, k)}, Timeout: 30 * time.Second}
	}}
}

func (s *secureEnv) token(t *testing.T, c auth.Claims) string {
	t.Helper()
	if c.Expires == 0 {
		c.Expires = time.Now().Add(time.Hour).Unix()
	}
	tok, err := s.keys.Mint(c)
	require.NoError(t, err)
	return tok
}

// as sends a request with another client.
func (s *secureEnv) as(client *http.Client, method, path string, body any, headers ...string) response {
	s.t.Helper()
	saved := s.client
	s.client = client
	defer func() { s.client = saved }()
	return s.do(method, path, body, headers...)
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	s := newSecureEnv(t)
	qcow2, _ := image(t, 4<<20, 16)
	url := s.upload("images/auth.qcow2", qcow2, true)
	job := map[string]any{"image_url": url, "volume_name": "web-1", "volume_size_gb": 1}

	// Open endpoints need nothing.
	for _, p := range []string{"/health", "/healthz", "/livez", "/readyz", "/metrics"} {
		require.Equal(t, http.StatusOK, s.do(http.MethodGet, p, nil).Status, p)
	}
	// Nothing presented.
	requireError(t, s.do(http.MethodPost, "/api/v1/jobs", job), 401, "unauthorized",
		"authentication required: present a client certificate or an API token (X-API-Token or Authorization: Bearer)")
	requireError(t, s.do(http.MethodGet, "/api/v1/cache/images", nil), 401, "unauthorized",
		"authentication required: present a client certificate or an API token (X-API-Token or Authorization: Bearer)")

	// Tokens: X-API-Token and Bearer, from either active secret.
	tok := s.token(t, auth.Claims{KeyID: "ops", Subject: "ci"})
	r := s.do(http.MethodPost, "/api/v1/jobs", job, "X-API-Token", tok)
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	id := r.json(t)["job_id"].(string)
	rec := s.do(http.MethodGet, "/api/v1/jobs/"+id, nil, "Authorization", "Bearer "+s.token(t, auth.Claims{KeyID: "old", Subject: "reader"}))
	require.Equal(t, http.StatusOK, rec.Status)
	require.Equal(t, "token:ops/ci", rec.json(t)["caller"], "the caller is recorded on the job")

	// Expired, tampered and unknown tokens.
	expired := s.token(t, auth.Claims{KeyID: "ops", Subject: "ci", Expires: time.Now().Add(-time.Minute).Unix()})
	r = s.do(http.MethodGet, "/api/v1/jobs/"+id, nil, "X-API-Token", expired)
	require.Equal(t, 401, r.Status)
	require.True(t, strings.HasPrefix(r.json(t)["message"].(string), "invalid API token: token expired at "), "%s", r.Body)
	parts := strings.Split(tok, ".")
	tampered := parts[0] + "." + parts[1] + "x." + parts[2]
	requireError(t, s.do(http.MethodGet, "/api/v1/jobs/"+id, nil, "X-API-Token", tampered), 401, "unauthorized", "invalid API token: malformed token")
	other, err := auth.ParseKeys("ops:" + auth.NewSecret())
	require.NoError(t, err)
	forged, err := other.Mint(auth.Claims{KeyID: "ops", Subject: "ci", Expires: time.Now().Add(time.Hour).Unix()})
	require.NoError(t, err)
	requireError(t, s.do(http.MethodGet, "/api/v1/jobs/"+id, nil, "X-API-Token", forged), 401, "unauthorized", "invalid API token: token signature does not match")
	unknown, err := auth.Keys{"nope": []byte(strings.Repeat("s", 32))}.Mint(auth.Claims{KeyID: "nope", Expires: time.Now().Add(time.Hour).Unix()})
	require.NoError(t, err)
	requireError(t, s.do(http.MethodGet, "/api/v1/jobs/"+id, nil, "X-API-Token", unknown), 401, "unauthorized", "invalid API token: token signed with an unknown key id")
	requireError(t, s.do(http.MethodGet, "/api/v1/jobs/"+id, nil, "Authorization", "Basic Zm9vOmJhcg=="), 401, "unauthorized", "Authorization must use the Bearer scheme")

	// Scopes: a token limited to h2 and to web-* volumes.
	scoped := s.token(t, auth.Claims{KeyID: "ops", Subject: "h2-only", Hypervisors: []string{"h2"}, Volumes: "web-.*"})
	requireError(t, s.do(http.MethodPost, "/api/v1/jobs", job, "X-API-Token", scoped), 403, "forbidden", `token:ops/h2-only may not use hypervisor "h1" (allowed: h2)`)
	requireError(t, s.do(http.MethodGet, "/api/v1/jobs/"+id, nil, "X-API-Token", scoped), 403, "forbidden", `token:ops/h2-only may not use hypervisor "h1" (allowed: h2)`)
	webOnly := s.token(t, auth.Claims{KeyID: "ops", Subject: "web", Volumes: "web-.*"})
	requireError(t, s.do(http.MethodPost, "/api/v1/jobs", map[string]any{"image_url": url, "volume_name": "db-1", "volume_size_gb": 1}, "X-API-Token", webOnly),
		403, "forbidden", `token:ops/web may not write volume "db-1" (allowed: names matching ^(?:web-.*)$)`)

	// Client certificates: allowed, scoped, and verified but not allowed.
	r = s.as(s.withCert("ci-bot"), http.MethodPost, "/api/v1/jobs", map[string]any{"image_url": url, "volume_name": "any-name", "volume_size_gb": 1})
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	certJob := r.json(t)["job_id"].(string)
	require.Equal(t, "cert:ci-bot", s.as(s.withCert("ci-bot"), http.MethodGet, "/api/v1/jobs/"+certJob, nil).json(t)["caller"])
	requireError(t, s.as(s.withCert("web-deployer"), http.MethodPost, "/api/v1/jobs", map[string]any{"image_url": url, "volume_name": "db-2", "volume_size_gb": 1}),
		403, "forbidden", `cert:web-deployer may not write volume "db-2" (allowed: names matching ^(?:web-.*)$)`)
	requireError(t, s.as(s.withCert("intruder"), http.MethodGet, "/api/v1/jobs/"+id, nil), 403, "forbidden", `client certificate "CN=intruder" is not on the allowlist`)

	// A certificate from another CA fails the TLS handshake.
	rogue := testenv.NewCA(t, "rogue")
	rc, rk := rogue.Issue(t, "ci-bot", false)
	tc := testenv.ClientTLS(t, s.ca, rc, rk)
	// A Go client does not offer a certificate the server's CA list does not
	// name: the request then carries no identity.
	requireError(t, s.as(&http.Client{Transport: &http.Transport{TLSClientConfig: tc}}, http.MethodGet, "/api/v1/cache/images", nil), 401, "unauthorized",
		"authentication required: present a client certificate or an API token (X-API-Token or Authorization: Bearer)")
	// Forced onto the server, it fails verification and the handshake.
	forced := tc.Clone()
	pair := tc.Certificates[0]
	forced.Certificates = nil
	forced.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	_, err = (&http.Client{Transport: &http.Transport{TLSClientConfig: forced}}).Get(s.apiURL + "/api/v1/cache/images")
	require.Error(t, err)

	// Plain HTTP is not served.
	resp, err := http.Get(strings.Replace(s.apiURL, "https://", "http://", 1) + "/api/v1/cache/images")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, "Go's TLS server answers a plain request with 400 and nothing else")
	s.client = s.withCert("ci-bot")
	s.waitStatus(id, "completed")
}

func TestAPIRefusesInsecureNonLoopback(t *testing.T) {
	t.Parallel()
	port, err := testenv.FreePort()
	require.NoError(t, err)
	out, err := exec.Command(filepath.Join(binDir, "api"), "-http-addr", "0.0.0.0:"+itoa(port), "-data-dir", t.TempDir()).CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "refusing to listen on 0.0.0.0:"+itoa(port)+" without TLS")

	dir := t.TempDir()
	ca := testenv.NewCA(t, "ca")
	c, k := ca.Issue(t, "api", true)
	cp, kp := testenv.WriteFiles(t, dir, "api", c, k)
	out, err = exec.Command(filepath.Join(binDir, "api"), "-http-addr", "0.0.0.0:"+itoa(port), "-data-dir", t.TempDir(), "-tls-cert", cp, "-tls-key", kp).CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "refusing to listen on 0.0.0.0:"+itoa(port)+" without authentication")
}

func TestTokenCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out, err := exec.Command(filepath.Join(binDir, "api"), "token", "secret", "--key-id", "ops").Output()
	require.NoError(t, err)
	secrets := filepath.Join(dir, "secrets")
	require.NoError(t, os.WriteFile(secrets, out, 0o600))
	cmd := exec.Command(filepath.Join(binDir, "api"), "token", "create", "--key-id", "ops", "--ttl", "2h", "--subject", "deploy", "--hypervisors", "h1,h2")
	cmd.Env = append(os.Environ(), "PROVISIONER_TOKEN_SECRETS_FILE="+secrets)
	tok, err := cmd.Output()
	require.NoError(t, err)
	keys, err := auth.LoadKeys(secrets)
	require.NoError(t, err)
	c, err := keys.Verify(strings.TrimSpace(string(tok)), time.Now())
	require.NoError(t, err)
	require.Equal(t, "deploy", c.Subject)
	require.Equal(t, []string{"h1", "h2"}, c.Hypervisors)
	require.InDelta(t, time.Now().Add(2*time.Hour).Unix(), c.Expires, 5)
	payload, _ := json.Marshal(c)
	require.NotContains(t, string(payload), "secret")

	require.NoError(t, os.Chmod(secrets, 0o644))
	cmd = exec.Command(cmd.Path, cmd.Args[1:]...)
	cmd.Env = append(os.Environ(), "PROVISIONER_TOKEN_SECRETS_FILE="+secrets)
	out, err = cmd.CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "is readable by group or others (mode -rw-r--r--); chmod 600 it")
}
