package tests

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

// fsDirPool creates a transient dir pool in a directory of a new file
// system of kind (testenv.FileSystem, on a loop device), traversable by
// QEMU, and destroys it when the test ends.
func fsDirPool(t *testing.T, name, kind string, sizeMiB int64) string {
	t.Helper()
	mnt := testenv.FileSystemOfSize(t, kind, sizeMiB)
	for p := mnt; p != filepath.Dir(p) && p != os.TempDir(); p = filepath.Dir(p) {
		require.NoError(t, os.Chmod(p, 0o755)) // QEMU runs as libvirt-qemu
	}
	dir := filepath.Join(mnt, "pool")
	require.NoError(t, os.Mkdir(dir, 0o755))
	createDirPool(t, name, dir)
	return dir
}

// TestLibvirtDirPoolClones: with the libvirt backend on a dir pool on XFS
// with reflinks, the first job makes the image's golden volume in the pool
// and every volume is a reflink clone of it: byte-exact, independent,
// replaced whole when reprovisioned, refused while a running domain has it,
// and whole after the golden is evicted.
func TestLibvirtDirPoolClones(t *testing.T) {
	t.Parallel()
	volPool, imgPool := poolNames(t, "itc")
	volDir := fsDirPool(t, volPool, testenv.XFS, 512)
	dirPool(t, imgPool)
	e := newEnv(t, envOptions{noWorker: true})
	cs := e.cloningWorker(volDir, "images/lvc.qcow2", 40<<20, 95, "PROVISIONER_VOLUME_BACKEND=libvirt", "PROVISIONER_LIBVIRT_POOL="+volPool,
		"PROVISIONER_LIBVIRT_IMAGES_POOL="+imgPool, "PROVISIONER_SCRUB_INTERVAL=2s")
	w, url, qcow2, ref, vol := cs.w, cs.url, cs.qcow2, cs.ref, cs.vol

	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-1", "volume_size_gb": 1})
	j := e.waitStatus(id, "completed")
	require.True(t, e.cloned(id))
	require.Equal(t, vol("vm-1"), j.VolumePath)
	requireVolume(t, vol("vm-1"), ref, gib)
	images := e.do(http.MethodGet, "/api/v1/cache/images", nil).json(t)["images"].([]any)
	require.Len(t, images, 1)
	golden, ok := images[0].(map[string]any)["golden"].(map[string]any)
	require.True(t, ok, "the cache entry lists its golden: %v", images[0])
	goldenPath := golden["path"].(string)
	require.Equal(t, volDir, filepath.Dir(goldenPath))
	require.True(t, strings.HasPrefix(filepath.Base(goldenPath), ".golden-"), goldenPath)
	require.Equal(t, true, golden["immutable"])
	require.Contains(t, virsh(t, "vol-list", volPool), filepath.Base(goldenPath), "virsh vol-list shows the golden")
	requireVolume(t, goldenPath, ref, 40<<20)

	id2 := e.submit(map[string]any{"image_url": url, "volume_name": "vm-2", "volume_size_gb": 2})
	require.True(t, *e.waitStatus(id2, "completed").CacheHit)
	require.True(t, e.cloned(id2))
	requireVolume(t, vol("vm-2"), ref, 2*gib)
	require.Contains(t, virsh(t, "vol-info", "--pool", volPool, "vm-2"), "2.00 GiB")

	// Reprovisioning replaces a written-to volume with a fresh clone.
	scribble(t, vol("vm-1"))
	id3 := e.submit(map[string]any{"image_url": url, "volume_name": "vm-1", "volume_size_gb": 1})
	e.waitStatus(id3, "completed")
	require.True(t, e.cloned(id3))
	requireVolume(t, vol("vm-1"), ref, gib)
	requireVolume(t, vol("vm-2"), ref, 2*gib)
	require.NotContains(t, virsh(t, "vol-list", volPool), ".clone-", "no temporary clone is left in the pool")

	// A volume a running domain has attached is refused and left as it is.
	domain := strings.Replace(volPool, "-vols-", "-dom-", 1)
	xml := filepath.Join(t.TempDir(), "dom.xml")
	require.NoError(t, os.WriteFile(xml, []byte(fmt.Sprintf(`<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><emulator>%s</emulator>
<disk type='volume' device='disk'><driver name='qemu' type='raw'/><source pool='%s' volume='vm-2'/><target dev='vda' bus='virtio'/></disk>
<memballoon model='none'/></devices></domain>`, domain, testenv.QemuSystem(t), volPool)), 0o644))
	virsh(t, "create", xml)
	t.Cleanup(func() { _ = exec.Command("virsh", "-c", testenv.LibvirtURI, "destroy", domain).Run() })
	before, err := testenv.FileSHA256(vol("vm-2"))
	require.NoError(t, err)
	id4 := e.submit(map[string]any{"image_url": url, "volume_name": "vm-2", "volume_size_gb": 2})
	require.Contains(t, e.waitStatus(id4, "failed").Error, fmt.Sprintf("is attached to running domain %q", domain))
	after, err := testenv.FileSHA256(vol("vm-2"))
	require.NoError(t, err)
	require.Equal(t, before, after, "nothing was written")
	virsh(t, "destroy", domain)

	// Deleting the image deletes its golden volume; the clones stay whole.
	digest, err := testenv.FileSHA256(qcow2)
	require.NoError(t, err)
	r := e.do(http.MethodDelete, "/api/v1/cache/images/"+digest, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	require.NoFileExists(t, goldenPath)
	require.NotContains(t, virsh(t, "vol-list", volPool), filepath.Base(goldenPath))
	requireVolume(t, vol("vm-1"), ref, gib)
	requireVolume(t, vol("vm-2"), ref, 2*gib)
	id5 := e.submit(map[string]any{"image_url": url, "volume_name": "vm-3", "volume_size_gb": 1})
	e.waitStatus(id5, "completed")
	require.True(t, e.cloned(id5))
	requireVolume(t, vol("vm-3"), ref, gib)
	require.FileExists(t, goldenPath, "the next job made the golden again")

	// A golden changed behind the worker's back is found by the scrub and
	// removed from the pool; its clones stay as they are.
	out, err := exec.Command("chattr", "-i", goldenPath).CombinedOutput()
	require.NoError(t, err, "%s", out)
	f, err := os.OpenFile(goldenPath, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte{0x5a}, 4096)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.Eventually(t, func() bool {
		_, err := os.Stat(goldenPath)
		return os.IsNotExist(err)
	}, 60*time.Second, 200*time.Millisecond, "the scrub evicts the changed golden")
	require.Contains(t, w.output(), "cache scrub evicted files that no longer matched their digest")
	require.NotContains(t, virsh(t, "vol-list", volPool), filepath.Base(goldenPath))
	requireVolume(t, vol("vm-3"), ref, gib)
}

// TestLibvirtDirPoolWithoutReflinks: on a dir pool on ext4 the libvirt
// backend converts into every volume, as before, and keeps no golden; a
// volume that would not fit is refused before it is created.
func TestLibvirtDirPoolWithoutReflinks(t *testing.T) {
	t.Parallel()
	volPool, imgPool := poolNames(t, "itn")
	volDir := fsDirPool(t, volPool, testenv.Ext4, 3<<10) // volumes are allocated whole here
	dirPool(t, imgPool)
	e := newEnv(t, envOptions{noWorker: true})
	w := e.startWorker("h1", "PROVISIONER_VOLUME_BACKEND=libvirt", "PROVISIONER_LIBVIRT_POOL="+volPool, "PROVISIONER_LIBVIRT_IMAGES_POOL="+imgPool)
	require.Contains(t, w.output(), "clones are not possible here; every volume is converted into")
	require.Contains(t, w.output(), "libvirt cannot clone volumes with reflink")
	qcow2, ref := image(t, 24<<20, 96)
	url := e.upload("images/lvn.qcow2", qcow2, true)
	e.requireConvertedEachTime(t, url, ref, volDir)
	require.NotContains(t, virsh(t, "vol-list", volPool), ".golden")

	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-big", "volume_size_gb": 4})
	require.Contains(t, e.waitStatus(id, "failed").Error, "not enough free space: it is allocated whole (4096 MiB)")
	require.NotContains(t, virsh(t, "vol-list", volPool), "vm-big")
}

// TestLibvirtDirPoolGoldenEvictedByCap: a golden volume counts against the
// cache's cap with its image; the least recently used image is evicted with
// its golden, and the volumes cloned from it stay whole.
func TestLibvirtDirPoolGoldenEvictedByCap(t *testing.T) {
	t.Parallel()
	volPool, imgPool := poolNames(t, "itcap")
	volDir := fsDirPool(t, volPool, testenv.XFS, 512)
	dirPool(t, imgPool)
	e := newEnv(t, envOptions{noWorker: true})
	// Each image: about 13 MiB of qcow2 and 13 MiB of golden; two do not fit.
	e.startWorker("h1", "PROVISIONER_VOLUME_BACKEND=libvirt", "PROVISIONER_LIBVIRT_POOL="+volPool, "PROVISIONER_LIBVIRT_IMAGES_POOL="+imgPool,
		fmt.Sprintf("PROVISIONER_CACHE_MAX_BYTES=%d", 36<<20))
	qa, refA := image(t, 40<<20, 101)
	qb, refB := image(t, 40<<20, 102)
	urlA, urlB := e.upload("images/a.qcow2", qa, true), e.upload("images/b.qcow2", qb, true)

	id := e.submit(map[string]any{"image_url": urlA, "volume_name": "vm-a", "volume_size_gb": 1})
	e.waitStatus(id, "completed")
	require.True(t, e.cloned(id))
	goldensOf := func() []string {
		var out []string
		for _, img := range e.do(http.MethodGet, "/api/v1/cache/images", nil).json(t)["images"].([]any) {
			if g, ok := img.(map[string]any)["golden"].(map[string]any); ok {
				out = append(out, g["path"].(string))
			}
		}
		return out
	}
	goldenA := goldensOf()
	require.Len(t, goldenA, 1)

	id = e.submit(map[string]any{"image_url": urlB, "volume_name": "vm-b", "volume_size_gb": 1})
	e.waitStatus(id, "completed")
	require.True(t, e.cloned(id))
	require.NoFileExists(t, goldenA[0], "image a was evicted with its golden")
	require.NotContains(t, virsh(t, "vol-list", volPool), filepath.Base(goldenA[0]))
	goldenB := goldensOf()
	require.Len(t, goldenB, 1)
	require.NotEqual(t, goldenA, goldenB)
	requireVolume(t, filepath.Join(volDir, "vm-a"), refA, gib)
	requireVolume(t, filepath.Join(volDir, "vm-b"), refB, gib)
}
