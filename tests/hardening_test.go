package tests

import (
	"bufio"
	"errors"
	"io"
	"net"
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

// TestSecretsLineWithoutKidIsNotPrinted: a secrets-file line that lacks
// "kid:" is the secret itself; neither bin/api nor bin/api token create may
// print it when they refuse the file (or the inline variable).
func TestSecretsLineWithoutKidIsNotPrinted(t *testing.T) {
	t.Parallel()
	secret := auth.NewSecret()
	path := filepath.Join(t.TempDir(), "secrets")
	require.NoError(t, os.WriteFile(path, []byte(secret+"\n"), 0o600))
	port, err := testenv.FreePort()
	require.NoError(t, err)
	for name, env := range map[string]string{"file": "PROVISIONER_TOKEN_SECRETS_FILE=" + path, "variable": "PROVISIONER_TOKEN_SECRETS=" + secret} {
		for _, args := range [][]string{nil, {"token", "create", "--key-id", "ops"}} {
			cmd := exec.Command(filepath.Join(binDir, "api"), args...)
			cmd.Env = append(os.Environ(), env, "PROVISIONER_HTTP_ADDR=127.0.0.1:"+itoa(port), "PROVISIONER_DATA_DIR="+t.TempDir())
			out, err := cmd.CombinedOutput()
			require.Error(t, err, "%s %v accepted the entry: %s", name, args, out)
			require.Contains(t, string(out), "token secret entry 1: want <kid>:<base64 secret>", "%s %v", name, args)
			require.NotContains(t, string(out), secret, "%s %v printed the secret", name, args)
			require.NotContains(t, string(out), secret[:12], "%s %v printed part of the secret", name, args)
		}
	}
}

// TestWorkerHTTPClosesIdleConnections: a keep-alive connection to the
// worker's HTTP endpoints that stays idle is closed by the worker.
func TestWorkerHTTPClosesIdleConnections(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	port, err := testenv.FreePort()
	require.NoError(t, err)
	addr := "127.0.0.1:" + itoa(port)
	e.startWorker("h1", "PROVISIONER_HTTP_ADDR="+addr, "PROVISIONER_HTTP_IDLE_TIMEOUT=1s")
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	_, err = io.WriteString(conn, "GET /livez HTTP/1.1\r\nHost: "+addr+"\r\n\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, resp.Body)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)

	start := time.Now()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = br.ReadByte()
	require.ErrorIs(t, err, io.EOF, "the idle connection was not closed by the worker")
	require.Less(t, time.Since(start), 5*time.Second)
}

// TestVolumeNamesWithEmptyKeyTokensAre400: names such as ".hidden" or
// "a..b" would make an invalid KV key; they are a 400 naming volume_name,
// not a 503.
func TestVolumeNamesWithEmptyKeyTokensAre400(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	url := "http://" + e.minio.Endpoint + "/" + e.bucket + "/x.qcow2"
	for _, name := range []string{".hidden", "a..b", "a.", "x...y"} {
		requireError(t, e.do(http.MethodPost, "/api/v1/jobs", map[string]any{"image_url": url, "volume_name": name, "volume_size_gb": 1}), 400, "invalid request",
			`volume_name: "`+name+`" must not start or end with '.' or hold ".."`)
	}
}

// TestPercentAgreesWithBytes follows a cold job and then a warm one (a
// cache hit) event by event: the percentage rises only with the bytes of a
// measured stage, never on entering a stage (populating at 52% with 0 bytes
// written) or in one that measures nothing (inspecting, creating_volume).
func TestPercentAgreesWithBytes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	e.startWorker("h1", slow)
	qcow2, _ := image(t, 24<<20, 23)
	url := e.upload("images/pct.qcow2", qcow2, true)
	for _, vol := range []string{"vm-pct-cold", "vm-pct-warm"} {
		id := e.submit(map[string]any{"image_url": url, "volume_name": vol, "volume_size_gb": 1})
		events := readSSE(t, e, id)
		require.Equal(t, "completed", events[len(events)-1].Data.Status, vol)
		for i := 1; i < len(events)-1; i++ {
			prev, cur := events[i-1].Data, events[i].Data
			// A rise is earned by bytes in the same stage, or by the rest of a
			// measured stage that ended between two (rate-limited) events.
			if cur.Percent > prev.Percent {
				require.True(t, (cur.Stage == prev.Stage && cur.Bytes > prev.Bytes) || (cur.Stage != prev.Stage && prev.Total > 0),
					"%s: percent rose from %d (%s, %d bytes) to %d (%s, %d/%d bytes) with no bytes to show for it", vol,
					prev.Percent, prev.Stage, prev.Bytes, cur.Percent, cur.Stage, cur.Bytes, cur.Total)
			}
		}
	}
}

// TestCleanShutdownLogsNoDisconnect: stopping the API closes its NATS
// connection on purpose; that is not logged as "NATS disconnected".
func TestCleanShutdownLogsNoDisconnect(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.api.stop()
	require.NoError(t, waitErr(e.api))
	log := e.api.output()
	require.Contains(t, log, `"msg":"shutting down"`)
	require.NotContains(t, log, "NATS disconnected")
}

// waitErr is how the process ended: nil for exit status 0.
func waitErr(p *proc) error {
	<-p.done
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return errors.New(strings.TrimSpace(ee.String()))
	}
	return p.err
}
