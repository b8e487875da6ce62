package tests

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

// cloned reports the record's cloned flag.
// cloneSetup is a worker whose volumes are reflink clones and an image
// uploaded for it.
type cloneSetup struct {
	w          *proc
	url        string // the image's URL
	qcow2, ref string // the image, and the raw disk it holds
	vol        func(name string) string
}

// cloningWorker starts h1's worker with env, requires it to say its
// volumes are reflink clones, and uploads a new image of size bytes as
// object; vol is the path of a volume in volDir by name.
func (e *env) cloningWorker(volDir, object string, size int64, seed uint64, env ...string) cloneSetup {
	e.t.Helper()
	w := e.startWorker("h1", env...)
	require.Contains(e.t, w.output(), "volumes are reflink clones of a golden per image")
	qcow2, ref := image(e.t, size, seed)
	return cloneSetup{w: w, url: e.upload(object, qcow2, true), qcow2: qcow2, ref: ref,
		vol: func(name string) string { return filepath.Join(volDir, name) }}
}

func (e *env) cloned(id string) bool {
	e.t.Helper()
	v, _ := e.do(http.MethodGet, "/api/v1/jobs/"+id, nil).json(e.t)["cloned"].(bool)
	return v
}

// scribble overwrites the first MiB of the file at p with 0xa5.
func scribble(t *testing.T, p string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	require.NoError(t, err)
	junk := make([]byte, 1<<20)
	for i := range junk {
		junk[i] = 0xa5
	}
	_, err = f.WriteAt(junk, 0)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

func TestReflinkVolumesAreClonesOfAGolden(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	volDir := filepath.Join(testenv.FileSystem(t, testenv.XFS), "volumes")
	cs := e.cloningWorker(volDir, "images/base.qcow2", 48<<20, 91, "PROVISIONER_VOLUME_DIR="+volDir)
	w, url, qcow2, ref, vol := cs.w, cs.url, cs.qcow2, cs.ref, cs.vol

	// The first job makes the golden (streamed while downloading), then clones.
	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-1", "volume_size_gb": 1})
	j := e.waitStatus(id, "completed")
	require.False(t, *j.CacheHit)
	require.True(t, e.cloned(id))
	require.Equal(t, vol("vm-1"), j.VolumePath)
	requireVolume(t, vol("vm-1"), ref, gib)
	require.NotContains(t, w.output(), "not hashed while it was written", "the golden was hashed while it was written, not read back")
	images := e.do(http.MethodGet, "/api/v1/cache/images", nil).json(t)["images"].([]any)
	require.Len(t, images, 1)
	golden, ok := images[0].(map[string]any)["golden"].(map[string]any)
	require.True(t, ok, "the cache entry lists its golden: %v", images[0])
	goldenPath := golden["path"].(string)
	require.True(t, strings.HasPrefix(goldenPath, filepath.Join(volDir, ".golden")+"/"), goldenPath)
	require.Equal(t, true, golden["immutable"])
	requireVolume(t, goldenPath, ref, 48<<20)

	// Later jobs clone, at any size.
	id2 := e.submit(map[string]any{"image_url": url, "volume_name": "vm-2", "volume_size_gb": 2})
	j2 := e.waitStatus(id2, "completed")
	require.True(t, *j2.CacheHit)
	require.True(t, e.cloned(id2))
	requireVolume(t, vol("vm-2"), ref, 2*gib)

	// Reprovisioning replaces a written-to volume with a fresh clone; the
	// other clone is untouched.
	scribble(t, vol("vm-1"))
	id3 := e.submit(map[string]any{"image_url": url, "volume_name": "vm-1", "volume_size_gb": 1})
	e.waitStatus(id3, "completed")
	require.True(t, e.cloned(id3))
	requireVolume(t, vol("vm-1"), ref, gib)
	requireVolume(t, vol("vm-2"), ref, 2*gib)

	// A full verification checks the image and the golden, then clones.
	id4 := e.submit(map[string]any{"image_url": url, "volume_name": "vm-3", "volume_size_gb": 1, "verify": "full"})
	e.waitStatus(id4, "completed")
	require.True(t, e.cloned(id4))
	require.Equal(t, "full", e.do(http.MethodGet, "/api/v1/jobs/"+id4, nil).json(t)["verify"])
	requireVolume(t, vol("vm-3"), ref, gib)

	// A volume a running VM holds (QEMU locks its disks) is refused.
	f, err := os.OpenFile(vol("vm-2"), os.O_RDWR, 0)
	require.NoError(t, err)
	lk := unix.Flock_t{Type: unix.F_RDLCK, Start: 100, Len: 1}
	require.NoError(t, unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk))
	scribble(t, vol("vm-2"))
	id5 := e.submit(map[string]any{"image_url": url, "volume_name": "vm-2", "volume_size_gb": 2})
	j5 := e.waitStatus(id5, "failed")
	require.Contains(t, j5.Error, `volume "vm-2" is in use`)
	require.NoError(t, f.Close())
	data, err := os.ReadFile(vol("vm-2"))
	require.NoError(t, err)
	require.Equal(t, byte(0xa5), data[0], "the volume in use was left as it was")

	// Deleting the image deletes its golden; the clones stay whole.
	digest, err := testenv.FileSHA256(qcow2)
	require.NoError(t, err)
	r := e.do(http.MethodDelete, "/api/v1/cache/images/"+digest, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	require.NoFileExists(t, goldenPath)
	requireVolume(t, vol("vm-1"), ref, gib)
	requireVolume(t, vol("vm-3"), ref, gib)

	// The next job downloads it again and makes a new golden.
	id6 := e.submit(map[string]any{"image_url": url, "volume_name": "vm-4", "volume_size_gb": 1})
	j6 := e.waitStatus(id6, "completed")
	require.False(t, *j6.CacheHit)
	require.True(t, e.cloned(id6))
	requireVolume(t, vol("vm-4"), ref, gib)
	require.FileExists(t, goldenPath)

	// A cache fetch job (prewarm) makes the golden too: the next job only clones.
	r = e.do(http.MethodDelete, "/api/v1/cache/images/"+digest, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	require.NoFileExists(t, goldenPath)
	r = e.do(http.MethodPost, "/api/v1/cache/fetch", map[string]any{"image_url": url})
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	e.waitStatus(r.json(t)["job_id"].(string), "completed")
	require.FileExists(t, goldenPath)
	id7 := e.submit(map[string]any{"image_url": url, "volume_name": "vm-5", "volume_size_gb": 1})
	j7 := e.waitStatus(id7, "completed")
	require.True(t, *j7.CacheHit)
	require.True(t, e.cloned(id7))
	requireVolume(t, vol("vm-5"), ref, gib)
}

// requireConvertedEachTime provisions vm-1, vm-2 and vm-1 again (1 GiB,
// in volDir) from url, the first a miss, and requires every job converted
// into, none cloned, each volume reading as ref, and no golden listed with
// the cached image.
func (e *env) requireConvertedEachTime(t *testing.T, url, ref, volDir string) {
	t.Helper()
	for i, name := range []string{"vm-1", "vm-2", "vm-1"} {
		id := e.submit(map[string]any{"image_url": url, "volume_name": name, "volume_size_gb": 1})
		j := e.waitStatus(id, "completed")
		require.Equal(t, i > 0, *j.CacheHit)
		require.False(t, e.cloned(id))
		requireVolume(t, filepath.Join(volDir, name), ref, gib)
	}
	images := e.do(http.MethodGet, "/api/v1/cache/images", nil).json(t)["images"].([]any)
	require.NotContains(t, images[0], "golden")
}

// TestVolumesWithoutReflinksAreConverted: on ext4 the file backend says
// clones are not possible, converts into every volume, and keeps no golden.
func TestVolumesWithoutReflinksAreConverted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	volDir := filepath.Join(testenv.FileSystem(t, testenv.Ext4), "volumes")
	w := e.startWorker("h1", "PROVISIONER_VOLUME_DIR="+volDir)
	require.Contains(t, w.output(), "clones are not possible here; every volume is converted into")
	require.Contains(t, w.output(), "(ext4) has no reflinks")
	qcow2, ref := image(t, 48<<20, 92)
	url := e.upload("images/base.qcow2", qcow2, true)
	e.requireConvertedEachTime(t, url, ref, volDir)
	require.NoDirExists(t, filepath.Join(volDir, ".golden"))
}

// TestGoldenOnlyFromAVerifiedImage: a cold image is converted into its
// golden while it downloads, but a download whose digest does not match
// leaves no golden, no volume and nothing cached.
func TestGoldenOnlyFromAVerifiedImage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	volDir := filepath.Join(testenv.FileSystem(t, testenv.XFS), "volumes")
	e.startWorker("h1", "PROVISIONER_VOLUME_DIR="+volDir)
	url := e.uploadWrongChecksum(t, "images/bad.qcow2", 93)

	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-bad", "volume_size_gb": 1})
	j := e.waitStatus(id, "failed")
	require.Contains(t, j.Error, "checksum mismatch")
	require.NoFileExists(t, filepath.Join(volDir, "vm-bad"))
	goldens, err := os.ReadDir(filepath.Join(volDir, ".golden"))
	require.NoError(t, err)
	for _, g := range goldens {
		require.Equal(t, "owner", g.Name(), "only the directory's marker is left: no golden, no golden being made")
	}
	require.EqualValues(t, 0, e.do(http.MethodGet, "/api/v1/cache/images", nil).json(t)["count"])
}
