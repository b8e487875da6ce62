package tests

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/auth"
)

// tokenTransport adds an API token to every request.
type tokenTransport struct{ token string }

func (tt tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-API-Token", tt.token)
	return http.DefaultTransport.RoundTrip(r)
}

// TestSecretsNeverLeak runs jobs that succeed, fail and are cancelled with
// token authentication on, then looks for every secret in the logs, job
// records and events: token secrets, the token itself, the MinIO secret key
// and the NATS nkey seeds.
func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	secret := auth.NewSecret()
	secretsPath := filepath.Join(dir, "secrets")
	require.NoError(t, os.WriteFile(secretsPath, []byte("ops:"+secret+"\n"), 0o600))
	keys, err := auth.ParseKeys("ops:" + secret)
	require.NoError(t, err)
	token, err := keys.Mint(auth.Claims{KeyID: "ops", Subject: "ci", Expires: time.Now().Add(time.Hour).Unix()})
	require.NoError(t, err)

	e := newEnv(t, envOptions{noWorker: true, client: &http.Client{Transport: tokenTransport{token}}, apiEnv: []string{
		"PROVISIONER_TOKEN_SECRETS_FILE=" + secretsPath, "PROVISIONER_LOG_LEVEL=debug"}})
	e.startWorker("h1", slow, "PROVISIONER_LOG_LEVEL=debug")
	nc := e.connectNATS()
	var mu sync.Mutex
	var events []string
	sub, err := nc.Subscribe("provisioner.events.>", func(m *nats.Msg) {
		mu.Lock()
		events = append(events, string(m.Data))
		mu.Unlock()
	})
	require.NoError(t, err)
	defer sub.Unsubscribe()

	qcow2, _ := image(t, 32<<20, 18)
	url := e.upload("images/secret.qcow2", qcow2, true)
	ok := e.submit(map[string]any{"image_url": url, "volume_name": "vm-s1", "volume_size_gb": 1})
	require.NoError(t, e.minio.PutBytes(t.Context(), e.bucket, "images/bad.qcow2", []byte("not a qcow2")))
	bad := e.submit(map[string]any{"image_url": "http://" + e.minio.Endpoint + "/" + e.bucket + "/images/bad.qcow2", "volume_name": "vm-s2", "volume_size_gb": 1})
	cancelled := e.submit(map[string]any{"image_url": url, "volume_name": "vm-s3", "volume_size_gb": 1})
	require.Equal(t, http.StatusOK, e.do(http.MethodPost, "/api/v1/jobs/"+cancelled+"/cancel", nil).Status)
	e.waitStatus(ok, "completed")
	e.waitStatus(bad, "failed")
	// A refused token is logged as refused, without the token.
	e.client = &http.Client{Transport: tokenTransport{token + "x"}}
	require.Equal(t, http.StatusUnauthorized, e.do(http.MethodGet, "/api/v1/jobs/"+ok, nil).Status)
	e.client = &http.Client{Transport: tokenTransport{token}}

	var records []string
	for _, id := range []string{ok, bad, cancelled} {
		r := e.do(http.MethodGet, "/api/v1/jobs/"+id, nil)
		require.Equal(t, http.StatusOK, r.Status)
		records = append(records, string(r.Body))
		var rec map[string]any
		require.NoError(t, json.Unmarshal(r.Body, &rec))
		require.Equal(t, "token:ops/ci", rec["caller"])
	}
	mu.Lock()
	defer mu.Unlock()
	haystacks := map[string]string{
		"api log": e.api.output(), "worker log": e.workers["h1"].output(),
		"job records": strings.Join(records, "\n"), "events": strings.Join(events, "\n"),
	}
	needles := map[string]string{"token secret": secret, "API token": token, "token signature": token[strings.LastIndex(token, ".")+1:],
		"MinIO secret key": e.minio.SecretKey}
	for _, name := range []string{"api.nk", "worker.nk", "admin.nk"} {
		seed, err := os.ReadFile(e.credential(name))
		require.NoError(t, err)
		needles["nkey seed "+name] = strings.TrimSpace(string(seed))
	}
	for hname, hay := range haystacks {
		require.NotEmpty(t, hay, hname)
		for nname, needle := range needles {
			require.NotEmpty(t, needle)
			require.NotContains(t, hay, needle, "%s found in the %s", nname, hname)
		}
	}
	require.Contains(t, haystacks["api log"], `"msg":"request refused"`)
}
