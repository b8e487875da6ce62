package tests

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestTruncatedImageFailsAndLeavesNothing: an image whose header is fine but
// whose data is cut short (qemu-img convert would read the missing clusters
// as zeros and write a broken disk) fails the job before any volume exists,
// and leaves nothing in the cache.
func TestTruncatedImageFailsAndLeavesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	qcow2, _ := image(t, 16<<20, 29)
	data, err := os.ReadFile(qcow2)
	require.NoError(t, err)
	cut := filepath.Join(t.TempDir(), "cut.qcow2")
	require.NoError(t, os.WriteFile(cut, data[:len(data)/2], 0o644))
	url := e.upload("images/cut.qcow2", cut, true) // its .sha256 matches the truncated file

	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-cut", "volume_size_gb": 1})
	j := e.waitStatus(id, "failed")
	require.Contains(t, j.Error, "the image is corrupt or truncated: qemu-img check found")
	require.NoFileExists(t, e.volumePath("h1", "vm-cut"))
	require.EqualValues(t, 0, e.do(http.MethodGet, "/api/v1/cache/images", nil).json(t)["count"])
	entries := cacheDirEntries(t, e.cacheDirs["h1"])
	require.Empty(t, entries)
}

// TestRedirectDoesNotEscapeTheEndpoint: an object store that answers with a
// redirect to another host does not send the worker there.
func TestRedirectDoesNotEscapeTheEndpoint(t *testing.T) {
	t.Parallel()
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(other.Close)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirector.Close)
	endpoint := strings.TrimPrefix(redirector.URL, "http://")

	e := newEnv(t, envOptions{noWorker: true, apiEnv: []string{"PROVISIONER_IMAGE_ENDPOINTS=" + endpoint}})
	e.startWorker("h1", "MINIO_ENDPOINT="+endpoint)
	id := e.submit(map[string]any{"image_url": "http://" + endpoint + "/images/x.qcow2", "volume_name": "vm-redirect", "volume_size_gb": 1})
	j := e.waitStatus(id, "failed")
	require.NotEmpty(t, j.Error)
	require.Zero(t, elsewhere.Load(), "the worker followed a redirect to another host")
	require.NoFileExists(t, e.volumePath("h1", "vm-redirect"))
}

// TestCorruptCacheHitFailsTheJob: a cached image whose bytes changed on disk
// is caught by the digest check that runs while the image converts; the job
// fails, its volume is removed, the entry is dropped, and the next job
// downloads the image again.
func TestCorruptCacheHitFailsTheJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	qcow2, ref := image(t, 24<<20, 31)
	url := e.upload("images/rot.qcow2", qcow2, true)
	first := e.waitStatus(e.submit(map[string]any{"image_url": url, "volume_name": "vm-r1", "volume_size_gb": 1}), "completed")

	f, err := os.OpenFile(first.ImagePath, os.O_RDWR, 0)
	require.NoError(t, err)
	st, err := f.Stat()
	require.NoError(t, err)
	b := make([]byte, 1)
	_, err = f.ReadAt(b, st.Size()-100)
	require.NoError(t, err)
	b[0] ^= 0xFF
	_, err = f.WriteAt(b, st.Size()-100)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	j := e.waitStatus(e.submit(map[string]any{"image_url": url, "volume_name": "vm-r2", "volume_size_gb": 1}), "failed")
	require.Contains(t, j.Error, "verify the cached image: the cached image no longer matches its checksum")
	require.NoFileExists(t, e.volumePath("h1", "vm-r2"), "the volume the job created is rolled back")
	require.EqualValues(t, 0, e.do(http.MethodGet, "/api/v1/cache/images", nil).json(t)["count"])

	third := e.waitStatus(e.submit(map[string]any{"image_url": url, "volume_name": "vm-r3", "volume_size_gb": 1}), "completed")
	require.False(t, *third.CacheHit)
	requireVolume(t, e.volumePath("h1", "vm-r3"), ref, gib)
}
