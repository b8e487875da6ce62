package tests

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/auth"
	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

// TestScopeVolumeOnJobEndpoints reproduces the scope attack: a
// token scoped to web-.* on hv-01 read, cancelled (which removed the volume
// the job created) and watched a db-1 job. Every job endpoint now answers
// 403 for a job outside the volume scope, and the db-1 job runs to its end.
// Cache fetches and deletes follow the bucket part of a scope.
func TestScopeVolumeOnJobEndpoints(t *testing.T) {
	t.Parallel()
	s := newSecureEnv(t)
	noCert := s.client
	s.client = s.withCert("ci-bot") // unscoped: the operator
	// as sends a request with a token (a client certificate would win).
	as := func(token, method, path string, body any) response {
		t.Helper()
		return s.as(noCert, method, path, body, "X-API-Token", token)
	}
	s.startWorker("hv-01", "PROVISIONER_WRITE_LIMIT=2097152") // the db-1 job runs for seconds
	qcow2, ref := image(t, 32<<20, 41)
	other := "o" + s.bucket // a second bucket, outside the web token's image scope
	dbURL, dbDigest, err := s.minio.PutImage(context.Background(), other, "db.qcow2", qcow2, true)
	require.NoError(t, err)
	webQcow2, _ := image(t, 4<<20, 42)
	webURL := s.upload("web.qcow2", webQcow2, true)

	db := s.submit(map[string]any{"image_url": dbURL, "volume_name": "db-1", "volume_size_gb": 1, "hypervisor": "hv-01"})
	s.waitStatus(db, "running")

	web := s.token(t, auth.Claims{KeyID: "ops", Subject: "web", Hypervisors: []string{"hv-01"}, Volumes: "web-.*"})
	outOfScope := "token:ops/web may not use job " + db + ": its volume is outside its scope (names matching ^(?:web-.*)$)"
	// All three are tried before any is checked, so that without the scope
	// check the cancel's effect shows: the job ends cancelled and its volume
	// is gone.
	get := as(web, http.MethodGet, "/api/v1/jobs/"+db, nil)
	cancel := as(web, http.MethodPost, "/api/v1/jobs/"+db+"/cancel", nil)
	events := as(web, http.MethodGet, "/api/v1/jobs/"+db+"/events", nil)
	final := s.waitJob(db, time.Minute, func(j job) bool { return j.Status == "completed" || j.Status == "failed" || j.Status == "cancelled" })
	_, volErr := os.Stat(s.volumePath("hv-01", "db-1"))
	t.Logf("as web-.*: GET %d, cancel %d, events %d; the db-1 job ended %s; volume: %v", get.Status, cancel.Status, events.Status, final.Status, volErr)
	requireError(t, get, 403, "forbidden", outOfScope)
	requireError(t, cancel, 403, "forbidden", outOfScope)
	requireError(t, events, 403, "forbidden", outOfScope)
	require.Equal(t, "completed", final.Status, "error %q", final.Error)
	requireVolume(t, s.volumePath("hv-01", "db-1"), ref, gib)

	// Its own jobs it reads as before.
	r := as(web, http.MethodPost, "/api/v1/jobs", map[string]any{"image_url": webURL, "volume_name": "web-1", "volume_size_gb": 1, "hypervisor": "hv-01"})
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	own := r.json(t)["job_id"].(string)
	require.Equal(t, http.StatusOK, as(web, http.MethodGet, "/api/v1/jobs/"+own, nil).Status)
	s.waitStatus(own, "completed")

	// A volume scope without image buckets keeps the token out of the cache.
	noCache := "token:ops/web is scoped to volumes matching ^(?:web-.*)$ and may not fetch or remove cached images (its scope names no image buckets)"
	requireError(t, as(web, http.MethodPost, "/api/v1/cache/fetch", map[string]any{"image_url": webURL, "hypervisor": "hv-01"}), 403, "forbidden", noCache)
	requireError(t, as(web, http.MethodDelete, "/api/v1/cache/images/"+dbDigest+"?hypervisor=hv-01", nil), 403, "forbidden", noCache)

	// With a bucket list it may fetch from, and remove images of, its buckets only.
	webImages := s.token(t, auth.Claims{KeyID: "ops", Subject: "web-images", Hypervisors: []string{"hv-01"}, Volumes: "web-.*", Buckets: []string{s.bucket}})
	requireError(t, as(webImages, http.MethodPost, "/api/v1/cache/fetch", map[string]any{"image_url": dbURL, "hypervisor": "hv-01"}),
		403, "forbidden", `token:ops/web-images may not use images from bucket "`+other+`" (allowed: `+s.bucket+`)`)
	requireError(t, as(webImages, http.MethodDelete, "/api/v1/cache/images/"+dbDigest+"?hypervisor=hv-01", nil),
		403, "forbidden", `token:ops/web-images may not remove image `+dbDigest+` from the cache of hypervisor "hv-01": it did not come from the image buckets of its scope (`+s.bucket+`)`)
	r = as(webImages, http.MethodPost, "/api/v1/cache/fetch", map[string]any{"image_url": webURL, "hypervisor": "hv-01"})
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	fetch := r.json(t)["job_id"].(string)
	require.Equal(t, http.StatusOK, as(webImages, http.MethodGet, "/api/v1/jobs/"+fetch, nil).Status)
	requireError(t, as(web, http.MethodGet, "/api/v1/jobs/"+fetch, nil), 403, "forbidden",
		"token:ops/web may not use job "+fetch+": it fetches an image outside its scope")
	s.waitStatus(fetch, "completed")
	webDigest, err := testenv.FileSHA256(webQcow2)
	require.NoError(t, err)
	r = as(webImages, http.MethodDelete, "/api/v1/cache/images/"+webDigest+"?hypervisor=hv-01", nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)

	// A provision job's image must come from the token's buckets too.
	requireError(t, as(webImages, http.MethodPost, "/api/v1/jobs", map[string]any{"image_url": dbURL, "volume_name": "web-2", "volume_size_gb": 1, "hypervisor": "hv-01"}),
		403, "forbidden", `token:ops/web-images may not use images from bucket "`+other+`" (allowed: `+s.bucket+`)`)
	_, err = os.Stat(s.volumePath("hv-01", "web-2"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// TestAllowImageBuckets reproduces the image-source attack: any object the worker's
// MinIO credentials could read was copied into a volume. With
// PROVISIONER_IMAGE_BUCKETS the API refuses an image from another bucket
// (400, naming image_url), and the worker fails such a job published
// straight to NATS before anything is downloaded or written.
func TestAllowImageBuckets(t *testing.T) {
	t.Parallel()
	allowed := "a" + strconv.FormatInt(time.Now().UnixNano(), 36)
	e := newEnv(t, envOptions{noWorker: true, apiEnv: []string{"PROVISIONER_IMAGE_BUCKETS=" + allowed}})
	e.startWorker("h1", "PROVISIONER_IMAGE_BUCKETS="+allowed)
	qcow2, ref := image(t, 4<<20, 43)
	goodURL, _, err := e.minio.PutImage(context.Background(), allowed, "golden.qcow2", qcow2, true)
	require.NoError(t, err)
	secret, _ := image(t, 4<<20, 44)
	secretURL := e.upload("secret.qcow2", secret, true) // the test's own bucket: not on the list

	refused := `image_url: bucket "` + e.bucket + `" is not an allowed image source (allowed: ` + allowed + `)`
	requireError(t, e.do(http.MethodPost, "/api/v1/jobs", map[string]any{"image_url": secretURL, "volume_name": "stolen", "volume_size_gb": 1}), 400, "invalid request", refused)
	requireError(t, e.do(http.MethodPost, "/api/v1/cache/fetch", map[string]any{"image_url": secretURL}), 400, "invalid request", refused)

	// Straight to NATS, past the API.
	js, err := jetstream.New(e.connectNATS())
	require.NoError(t, err)
	id := uuid.NewString()
	body, _ := json.Marshal(map[string]any{"job_id": id, "image_url": secretURL, "volume_name": "stolen", "volume_size_gb": 1})
	msg := nats.NewMsg("provisioner.jobs.h1." + id)
	msg.Data = body
	_, err = js.PublishMsg(t.Context(), msg, jetstream.WithMsgID(id))
	require.NoError(t, err)
	j := e.waitStatus(id, "failed")
	require.Equal(t, `image_url names bucket "`+e.bucket+`", which is not an image source this worker may read (PROVISIONER_IMAGE_BUCKETS=`+allowed+`); use an image from one of those, or ask the operator to allow it`, j.Error)
	_, err = os.Stat(e.volumePath("h1", "stolen"))
	require.ErrorIs(t, err, os.ErrNotExist, "no volume was created")
	cached, err := os.ReadDir(e.cacheDirs["h1"])
	require.NoError(t, err)
	for _, f := range cached {
		require.NotContains(t, f.Name(), "secret", "nothing of the refused image was cached")
	}
	require.EqualValues(t, 0, e.do(http.MethodGet, "/api/v1/cache/images", nil).json(t)["count"])

	// The allowed bucket still works.
	good := e.submit(map[string]any{"image_url": goodURL, "volume_name": "vm-1", "volume_size_gb": 1})
	e.waitStatus(good, "completed")
	requireVolume(t, e.volumePath("h1", "vm-1"), ref, gib)
}

// TestAllowDemoWorkerReadOnly: the MinIO user scripts/run.sh (make run, make
// demo) gives the worker, made by tools/miniouser exactly as run.sh runs it,
// reads the images bucket and nothing else: another bucket is refused, and
// so is every write.
func TestAllowDemoWorkerReadOnly(t *testing.T) {
	t.Parallel()
	m := requireMinIO(t)
	ctx := context.Background()
	tool := filepath.Join(t.TempDir(), "miniouser")
	out, err := exec.Command("go", "build", "-C", "../tools/miniouser", "-o", tool, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
	images, other, user := "img"+suffix, "oth"+suffix, "worker-"+suffix
	qcow2, _ := image(t, 1<<20, 45)
	_, _, err = m.PutImage(ctx, other, "private.qcow2", qcow2, false)
	require.NoError(t, err)
	cmd := exec.Command(tool, "-endpoint", m.Endpoint, "-bucket", images, "-user", user)
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+m.AccessKey, "MINIO_ROOT_PASSWORD="+m.SecretKey, "MINIO_USER_SECRET=secret-"+suffix)
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	_, _, err = m.PutImage(ctx, images, "demo/base.qcow2", qcow2, true) // the bucket exists now; root uploads
	require.NoError(t, err)

	c, err := minio.New(m.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(user, "secret-"+suffix, "")})
	require.NoError(t, err)
	obj, err := c.GetObject(ctx, images, "demo/base.qcow2", minio.GetObjectOptions{})
	require.NoError(t, err)
	defer obj.Close()
	data, err := io.ReadAll(obj)
	require.NoError(t, err, "the worker reads the images bucket")
	require.NotEmpty(t, data)
	_, err = c.StatObject(ctx, images, "demo/missing.qcow2", minio.StatObjectOptions{})
	require.Equal(t, "NoSuchKey", minio.ToErrorResponse(err).Code, "a missing image is reported as missing, not as denied")

	_, err = c.StatObject(ctx, other, "private.qcow2", minio.StatObjectOptions{})
	require.Equal(t, "AccessDenied", minio.ToErrorResponse(err).Code, "another bucket: %v", err)
	_, err = c.PutObject(ctx, images, "demo/evil.qcow2", strings.NewReader("x"), 1, minio.PutObjectOptions{})
	require.Equal(t, "AccessDenied", minio.ToErrorResponse(err).Code, "writing: %v", err)
	require.Equal(t, "AccessDenied", minio.ToErrorResponse(c.RemoveObject(ctx, images, "demo/base.qcow2", minio.RemoveObjectOptions{})).Code, "deleting")
	require.Equal(t, "AccessDenied", minio.ToErrorResponse(c.MakeBucket(ctx, "new"+suffix, minio.MakeBucketOptions{})).Code, "creating buckets")
}
