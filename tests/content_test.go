package tests

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// contentCap is the upload cap the content tests run the API with.
const contentCap = 3<<20 + 123

// uploadBody PUTs body to volume's content on h1; size -1 sends it chunked
// (no Content-Length).
func (e *env) uploadBody(volume string, body []byte, size int64, headers ...string) response {
	e.t.Helper()
	var rd io.Reader = bytes.NewReader(body)
	if size < 0 {
		rd = io.MultiReader(rd) // hides the length: chunked
	}
	req, err := http.NewRequest(http.MethodPut, e.apiURL+"/api/v1/volumes/h1/"+volume+"/content", rd)
	require.NoError(e.t, err)
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	return e.send(req, headers...)
}

// contentObjects counts what h1's content bucket holds: objects not
// deleted, and chunk messages (0 when the bucket does not exist).
func (e *env) contentObjects(js jetstream.JetStream) int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	store, err := js.ObjectStore(ctx, messaging.ContentBucket("h1"))
	if err != nil {
		return 0
	}
	objs, err := store.List(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoObjectsFound) {
		require.NoError(e.t, err)
	}
	s, err := js.Stream(ctx, messaging.ContentStream("h1"))
	require.NoError(e.t, err)
	info, err := s.Info(ctx, jetstream.WithSubjectFilter("$O."+messaging.ContentBucket("h1")+".C.>"))
	require.NoError(e.t, err)
	if n := len(objs) + len(info.State.Subjects); n > 0 {
		e.t.Logf("content bucket: %d objects, chunk subjects %v", len(objs), info.State.Subjects)
		return n
	}
	return 0
}

// jobCount is the number of job records of h1.
func (e *env) jobCount() int {
	e.t.Helper()
	r := e.do(http.MethodGet, "/api/v1/jobs?hypervisor=h1&limit=1000", nil)
	require.Equal(e.t, http.StatusOK, r.Status, "%s", r.Body)
	return int(r.json(e.t)["count"].(float64))
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// requireContent checks a volume holds content followed by zeros to size.
func requireContent(t *testing.T, path string, content []byte, size int64) {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.EqualValues(t, size, len(data))
	require.True(t, bytes.Equal(content, data[:len(content)]), "volume differs from the upload")
	require.True(t, bytes.Equal(data[len(content):], make([]byte, len(data)-len(content))), "bytes after the upload are not zero")
}

func TestUploadContent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{apiEnv: []string{"PROVISIONER_CONTENT_MAX_BYTES=" + strconv.Itoa(contentCap)}})
	js, err := jetstream.New(e.connectNATS())
	require.NoError(t, err)
	waitEmpty := func() {
		t.Helper()
		require.Eventually(t, func() bool { return e.contentObjects(js) == 0 }, 20*time.Second, 100*time.Millisecond, "the content bucket keeps an upload")
	}

	// 0 bytes: a 1 MiB volume of zeros.
	r := e.uploadBody("up-empty", nil, 0)
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	j := e.waitStatus(r.json(t)["job_id"].(string), "completed")
	requireContent(t, e.volumePath("h1", "up-empty"), nil, 1<<20)
	require.Equal(t, e.volumePath("h1", "up-empty"), j.VolumePath)
	waitEmpty()

	// Exactly the cap, with its checksum, through the Idempotency-Key.
	full := make([]byte, contentCap)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range full {
		full[i] = byte(rng.Uint32())
	}
	r = e.uploadBody("up-full", full, int64(len(full)), "X-Content-SHA256", sha(full), "Idempotency-Key", "up-full-1")
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	id := r.json(t)["job_id"].(string)
	again := e.uploadBody("up-full", full, int64(len(full)), "X-Content-SHA256", sha(full), "Idempotency-Key", "up-full-1")
	require.Equal(t, http.StatusAccepted, again.Status, "%s", again.Body)
	require.Equal(t, id, again.json(t)["job_id"])
	require.Equal(t, "true", again.Header.Get("Idempotent-Replayed"))
	e.waitStatus(id, "completed")
	requireContent(t, e.volumePath("h1", "up-full"), full, 4<<20)
	rec := e.do(http.MethodGet, "/api/v1/jobs/"+id, nil).json(t)
	require.Equal(t, "content", rec["kind"])
	require.Equal(t, sha(full), rec["content"].(map[string]any)["sha256"])
	waitEmpty()

	// Reuse: smaller content into the same volume, with a chunked body;
	// nothing of the old content survives.
	small := []byte("a seed that is much smaller")
	r = e.uploadBody("up-full", small, -1)
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	e.waitStatus(r.json(t)["job_id"].(string), "completed")
	requireContent(t, e.volumePath("h1", "up-full"), small, 4<<20)
	waitEmpty()

	jobs := e.jobCount()
	over := append(full, 'x')
	// cap + 1: 413 declared, 413 counted (chunked), nothing stored, no job.
	r = e.uploadBody("up-over", over, int64(len(over)))
	require.Equal(t, http.StatusRequestEntityTooLarge, r.Status, "%s", r.Body)
	r = e.uploadBody("up-over", over, -1)
	require.Equal(t, http.StatusRequestEntityTooLarge, r.Status, "%s", r.Body)
	require.Contains(t, r.json(t)["message"], "nothing was stored")
	// A wrong checksum header is refused; a malformed one too.
	r = e.uploadBody("up-sum", small, int64(len(small)), "X-Content-SHA256", sha(full))
	require.Equal(t, http.StatusBadRequest, r.Status, "%s", r.Body)
	require.Contains(t, r.json(t)["message"], "X-Content-SHA256")
	r = e.uploadBody("up-sum", small, int64(len(small)), "X-Content-SHA256", "abc")
	require.Equal(t, http.StatusBadRequest, r.Status, "%s", r.Body)
	// Bad names and sizes.
	r = e.uploadBody("snapshot-1", small, int64(len(small)))
	require.Equal(t, http.StatusBadRequest, r.Status, "%s", r.Body)
	require.Contains(t, r.json(t)["message"], "volume_name")
	req, _ := http.NewRequest(http.MethodPut, e.apiURL+"/api/v1/volumes/h1/up-x/content?volume_size_gb=0", bytes.NewReader(small))
	require.Equal(t, http.StatusBadRequest, e.send(req).Status)
	// Interrupted uploads: the connection closes before the declared length.
	for _, sent := range []int{0, 1000, 2 << 20} {
		interruptUpload(t, e, "up-cut", contentCap, full[:sent])
	}
	require.Never(t, func() bool { return e.contentObjects(js) != 0 }, 2*time.Second, 100*time.Millisecond, "a refused upload left something stored")
	require.Equal(t, jobs, e.jobCount(), "a refused upload made a job")
	require.NoFileExists(t, e.volumePath("h1", "up-over"))
	require.NoFileExists(t, e.volumePath("h1", "up-cut"))

	// A job that fails at the worker (the existing volume is too small
	// for the content) leaves the volume as it was and nothing stored.
	r = e.uploadBody("up-empty", full[:2<<20], 2<<20)
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	j = e.waitStatus(r.json(t)["job_id"].(string), "failed")
	require.Contains(t, j.Error, "fewer than the 2097152 bytes of content")
	requireContent(t, e.volumePath("h1", "up-empty"), nil, 1<<20)
	waitEmpty()
}

// interruptUpload sends a PUT declaring size bytes, then only part, and
// closes the connection.
func interruptUpload(t *testing.T, e *env, volume string, size int, part []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.apiURL, "http://"))
	require.NoError(t, err)
	head := fmt.Sprintf("PUT /api/v1/volumes/h1/%s/content HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", volume, size)
	_, err = conn.Write(append([]byte(head), part...))
	require.NoError(t, err)
	time.Sleep(200 * time.Millisecond)
	require.NoError(t, conn.Close())
}
