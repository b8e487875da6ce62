package tests

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

const gib = int64(1) << 30

// image makes a compressed qcow2 of virtual size bytes and returns it with
// qemu-img convert's own raw output of it, the reference a volume must match.
func image(t *testing.T, size int64, seed uint64) (qcow2, ref string) {
	t.Helper()
	dir := t.TempDir()
	qcow2, _ = testenv.QCOW2Image(t, dir, size, seed)
	ref = filepath.Join(dir, "qemu-img-output.raw")
	out, err := exec.Command(testenv.QemuImg(t), "convert", "-f", "qcow2", "-O", "raw", qcow2, ref).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return qcow2, ref
}

func TestProvisionThenCacheHit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	qcow2, ref := image(t, 48<<20, 1)
	url := e.upload("images/base.qcow2", qcow2, true)

	r := e.do(http.MethodPost, "/api/v1/jobs", map[string]any{"image_url": url, "volume_name": "vm-1", "volume_size_gb": 1, "correlation_id": "corr-1"}, "X-Request-ID", "req-abc")
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	require.Equal(t, "req-abc", r.Header.Get("X-Request-ID"))
	require.Equal(t, "application/json", r.Header.Get("Content-Type"))
	id := r.json(t)["job_id"].(string)

	j := e.waitStatus(id, "completed")
	require.NotNil(t, j.CacheHit)
	require.False(t, *j.CacheHit)
	require.Equal(t, 100, j.Progress.Percent)
	require.Equal(t, 1, j.Attempt)
	require.Equal(t, "h1", j.Hypervisor)
	require.FileExists(t, j.ImagePath)
	require.Equal(t, e.volumePath("h1", "vm-1"), j.VolumePath)
	requireVolume(t, e.volumePath("h1", "vm-1"), ref, gib)
	full := e.do(http.MethodGet, "/api/v1/jobs/"+id, nil).json(t)
	require.Equal(t, "corr-1", full["correlation_id"])

	// The second volume comes from the cache.
	id2 := e.submit(map[string]any{"image_url": url, "volume_name": "vm-2", "volume_size_gb": 2})
	j2 := e.waitStatus(id2, "completed")
	require.True(t, *j2.CacheHit)
	require.Equal(t, j.ImagePath, j2.ImagePath)
	requireVolume(t, e.volumePath("h1", "vm-2"), ref, 2*gib)

	digest, err := testenv.FileSHA256(qcow2)
	require.NoError(t, err)
	list := e.do(http.MethodGet, "/api/v1/cache/images", nil)
	require.Equal(t, http.StatusOK, list.Status)
	body := list.json(t)
	require.EqualValues(t, 1, body["count"])
	require.EqualValues(t, 0, body["offset"])
	require.EqualValues(t, 100, body["limit"])
	images := body["images"].([]any)
	require.Len(t, images, 1)
	img := images[0].(map[string]any)
	require.Equal(t, digest, img["checksum"])
	require.Equal(t, j.ImagePath, img["path"])
	st, err := os.Stat(qcow2)
	require.NoError(t, err)
	require.EqualValues(t, st.Size(), img["size"])

	page := e.do(http.MethodGet, "/api/v1/cache/images?offset=1&limit=5", nil).json(t)
	require.EqualValues(t, 1, page["count"])
	require.Empty(t, page["images"])
}

func TestReprovisionOverGarbage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	qcow2, ref := image(t, 32<<20, 2)
	url := e.upload("images/re.qcow2", qcow2, true)

	// A volume of exactly the requested size, full of garbage, is reused.
	require.NoError(t, os.MkdirAll(e.volDirs["h1"], 0o755))
	garbage := make([]byte, 1<<20)
	for i := range garbage {
		garbage[i] = byte(i*7 + 1)
	}
	f, err := os.Create(e.volumePath("h1", "vm-old"))
	require.NoError(t, err)
	for off := int64(0); off < gib; off += int64(len(garbage)) {
		_, err := f.Write(garbage)
		require.NoError(t, err)
	}
	require.NoError(t, f.Close())

	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-old", "volume_size_gb": 1})
	e.waitStatus(id, "completed")
	requireVolume(t, e.volumePath("h1", "vm-old"), ref, gib)

	// A volume far from the requested size is refused and left untouched.
	id = e.submit(map[string]any{"image_url": url, "volume_name": "vm-old", "volume_size_gb": 2})
	j := e.waitStatus(id, "failed")
	require.Contains(t, j.Error, "outside the ±5%")
	requireVolume(t, e.volumePath("h1", "vm-old"), ref, gib)
}

// TestRawImages: raw images into new volumes with both converters, cold
// (downloaded and verified whole, then copied) and from the cache,
// byte-exact. (image_type defaults to qcow2, so raw is declared.)
func TestRawImages(t *testing.T) {
	t.Parallel()
	for i, conv := range []string{"native", "qemu-img"} {
		t.Run(conv, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOptions{noWorker: true})
			e.startWorker("h1", "PROVISIONER_CONVERTER="+conv)
			raw := filepath.Join(t.TempDir(), "disk.raw")
			require.NoError(t, testenv.RawImage(raw, 6<<20, uint64(40+i)))
			url := e.upload("images/disk.raw", raw, true)
			for j, cached := range []bool{false, true} {
				vol := fmt.Sprintf("vm-raw-%d", j)
				id := e.submit(map[string]any{"image_url": url, "image_type": "raw", "volume_name": vol, "volume_size_gb": 1})
				require.Equal(t, cached, *e.waitStatus(id, "completed").CacheHit)
				requireVolume(t, e.volumePath("h1", vol), raw, gib)
			}
		})
	}
}

// uploadWrongChecksum uploads an 8 MiB-virtual image as object with a
// .sha256 that does not match it, and returns its URL.
func (e *env) uploadWrongChecksum(t *testing.T, object string, seed uint64) string {
	t.Helper()
	qcow2, _ := image(t, 8<<20, seed)
	url := e.upload(object, qcow2, false)
	require.NoError(t, e.minio.PutBytes(t.Context(), e.bucket, object+".sha256",
		[]byte("1111111111111111111111111111111111111111111111111111111111111111  "+path.Base(object)+"\n")))
	return url
}

func TestChecksumMismatchCachesNothingAndRollsBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	url := e.uploadWrongChecksum(t, "images/bad.qcow2", 3)

	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-bad", "volume_size_gb": 1})
	j := e.waitStatus(id, "failed")
	require.Contains(t, j.Error, "checksum mismatch")
	require.NoFileExists(t, e.volumePath("h1", "vm-bad"))
	entries := cacheDirEntries(t, e.cacheDirs["h1"])
	require.Empty(t, entries, "the cache directory must hold nothing")
	require.EqualValues(t, 0, e.do(http.MethodGet, "/api/v1/cache/images", nil).json(t)["count"])
}

// TestChecksumMismatchLeavesExistingVolume: a cold image is streamed only
// into a volume the job creates; an existing volume is written only once
// the download verified, so a bad download leaves it byte for byte as it was.
func TestChecksumMismatchLeavesExistingVolume(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	url := e.uploadWrongChecksum(t, "images/bad-reuse.qcow2", 33)

	require.NoError(t, os.MkdirAll(e.volDirs["h1"], 0o755))
	path := e.volumePath("h1", "vm-keep")
	f, err := os.Create(path)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(gib))
	marker := []byte("the old disk, which must survive a failed job")
	for _, off := range []int64{0, 4 << 20, gib - int64(len(marker))} {
		_, err := f.WriteAt(marker, off)
		require.NoError(t, err)
	}
	require.NoError(t, f.Close())
	before, err := testenv.FileSHA256(path)
	require.NoError(t, err)

	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-keep", "volume_size_gb": 1})
	j := e.waitStatus(id, "failed")
	require.Contains(t, j.Error, "checksum mismatch")
	after, err := testenv.FileSHA256(path)
	require.NoError(t, err)
	require.Equal(t, before, after, "the existing volume was written")
	entries := cacheDirEntries(t, e.cacheDirs["h1"])
	require.Empty(t, entries, "the cache directory must hold nothing")
}

func TestBackingFileRefusedNothingWritten(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	dir := t.TempDir()
	qemuImg := testenv.QemuImg(t)
	base := filepath.Join(dir, "base.qcow2")
	over := filepath.Join(dir, "over.qcow2")
	out, err := exec.Command(qemuImg, "create", "-f", "qcow2", base, "16M").CombinedOutput()
	require.NoError(t, err, "%s", out)
	out, err = exec.Command(qemuImg, "create", "-f", "qcow2", "-b", base, "-F", "qcow2", over).CombinedOutput()
	require.NoError(t, err, "%s", out)
	url := e.upload("images/over.qcow2", over, true)

	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-over", "volume_size_gb": 1})
	j := e.waitStatus(id, "failed")
	require.Contains(t, j.Error, "backing file")
	require.NoFileExists(t, e.volumePath("h1", "vm-over"))
	entries := cacheDirEntries(t, e.cacheDirs["h1"])
	require.Empty(t, entries)
}

func TestCacheFetch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	qcow2, _ := image(t, 8<<20, 4)
	url := e.upload("images/nosum.qcow2", qcow2, false) // no .sha256: keyed by URL
	r := e.do(http.MethodPost, "/api/v1/cache/fetch", map[string]any{"image_url": url})
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	j := e.waitStatus(r.json(t)["job_id"].(string), "completed")
	require.False(t, *j.CacheHit)
	digest, err := testenv.FileSHA256(qcow2)
	require.NoError(t, err)
	list := e.do(http.MethodGet, "/api/v1/cache/images?hypervisor=h1", nil).json(t)
	require.EqualValues(t, 1, list["count"])
	require.Equal(t, digest, list["images"].([]any)[0].(map[string]any)["checksum"])

	// A job for the same URL is then a cache hit.
	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-f", "volume_size_gb": 1})
	require.True(t, *e.waitStatus(id, "completed").CacheHit)
}

// TestConverters runs jobs through both converters: byte-exact on a new
// volume (a cold image, which the native converter streams while it
// downloads) and over a volume full of garbage (a cache hit).
func TestConverters(t *testing.T) {
	t.Parallel()
	for i, conv := range []string{"native", "qemu-img"} {
		t.Run(conv, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOptions{noWorker: true})
			w := e.startWorker("h1", "PROVISIONER_CONVERTER="+conv)
			qcow2, ref := image(t, 40<<20, uint64(30+i))
			url := e.upload("images/conv.qcow2", qcow2, true)
			id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-conv", "volume_size_gb": 1})
			j := e.waitStatus(id, "completed")
			require.False(t, *j.CacheHit)
			requireVolume(t, e.volumePath("h1", "vm-conv"), ref, gib)
			const streamed = "converting the image while it downloads"
			if conv == "native" {
				require.Contains(t, w.output(), streamed)
			} else {
				require.NotContains(t, w.output(), streamed)
			}

			f, err := os.OpenFile(e.volumePath("h1", "vm-conv"), os.O_WRONLY, 0)
			require.NoError(t, err)
			garbage := make([]byte, 1<<20)
			for i := range garbage {
				garbage[i] = 0x5A
			}
			for off := int64(0); off < 64<<20; off += 1 << 20 {
				_, err := f.WriteAt(garbage, off)
				require.NoError(t, err)
			}
			require.NoError(t, f.Close())
			id = e.submit(map[string]any{"image_url": url, "volume_name": "vm-conv", "volume_size_gb": 1})
			require.True(t, *e.waitStatus(id, "completed").CacheHit)
			requireVolume(t, e.volumePath("h1", "vm-conv"), ref, gib)
		})
	}
}
