package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

// virsh runs virsh against the system libvirtd.
func virsh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("virsh", append([]string{"-c", testenv.LibvirtURI}, args...)...).CombinedOutput()
	require.NoError(t, err, "virsh %s: %s", strings.Join(args, " "), out)
	return string(out)
}

// poolNames starts libvirtd if it is not running and returns names of the
// test's own for a volumes pool and an images pool.
func poolNames(t *testing.T, prefix string) (volPool, imgPool string) {
	t.Helper()
	testenv.Libvirtd(t)
	suffix := fmt.Sprintf("%d", time.Now().UnixNano()%1e9)
	return prefix + "-vols-" + suffix, prefix + "-images-" + suffix
}

// dirPool creates a transient dir pool in a new world-traversable directory
// (QEMU runs as libvirt-qemu) and destroys it when the test ends.
func dirPool(t *testing.T, name string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.Chmod(dir, 0o755))
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755))
	createDirPool(t, name, dir)
	return dir
}

// createDirPool creates the transient dir pool name in dir and destroys it
// when the test ends.
func createDirPool(t *testing.T, name, dir string) {
	t.Helper()
	virsh(t, "pool-create-as", name, "dir", "--target", dir)
	t.Cleanup(func() { _ = exec.Command("virsh", "-c", testenv.LibvirtURI, "pool-destroy", name).Run() })
}

// TestLibvirtBackend runs jobs through the libvirt backend against a real
// libvirtd with dir pools: a full job, the cache seen in the images pool,
// reuse, rollback, and refusal of a volume a running domain has attached.
func TestLibvirtBackend(t *testing.T) {
	t.Parallel()
	volPool, imgPool := poolNames(t, "it")
	dirPool(t, volPool)
	imagesDir := dirPool(t, imgPool)

	e := newEnv(t, envOptions{noWorker: true})
	e.startWorker("h1", slow, "PROVISIONER_VOLUME_BACKEND=libvirt", "PROVISIONER_LIBVIRT_POOL="+volPool, "PROVISIONER_LIBVIRT_IMAGES_POOL="+imgPool)
	qcow2, ref := image(t, 24<<20, 15)
	url := e.upload("images/lv.qcow2", qcow2, true)

	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-lv", "volume_size_gb": 1})
	j := e.waitStatus(id, "completed")
	require.Equal(t, imagesDir, filepath.Dir(j.ImagePath), "the cache is the images pool's directory")
	require.Contains(t, virsh(t, "vol-list", imgPool), filepath.Base(j.ImagePath), "virsh vol-list shows the cached image")
	require.Contains(t, virsh(t, "vol-list", volPool), "vm-lv")
	requireVolume(t, j.VolumePath, ref, gib)

	// Reuse: the same volume again, over content that must not survive.
	f, err := os.OpenFile(j.VolumePath, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte(strings.Repeat("garbage!", 1<<16)), 100<<20)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	id = e.submit(map[string]any{"image_url": url, "volume_name": "vm-lv", "volume_size_gb": 1})
	require.True(t, *e.waitStatus(id, "completed").CacheHit)
	requireVolume(t, j.VolumePath, ref, gib)

	// Rollback: a job cancelled while writing removes the volume it created
	// from the pool.
	id = e.submit(map[string]any{"image_url": url, "volume_name": "vm-rollback", "volume_size_gb": 1})
	e.waitJob(id, 30*time.Second, func(j job) bool { return j.Progress != nil && j.Progress.Stage == "populating" })
	require.Contains(t, virsh(t, "vol-list", volPool), "vm-rollback")
	r := e.do("POST", "/api/v1/jobs/"+id+"/cancel", nil)
	require.Equal(t, 200, r.Status, "%s", r.Body)
	require.Eventually(t, func() bool { return !strings.Contains(virsh(t, "vol-list", volPool), "vm-rollback") }, 15*time.Second, 100*time.Millisecond)

	// A volume attached to a running domain is refused and left untouched.
	testenv.QemuSystem(t)
	domain := strings.Replace(volPool, "-vols-", "-dom-", 1)
	xml := filepath.Join(t.TempDir(), "dom.xml")
	require.NoError(t, os.WriteFile(xml, []byte(fmt.Sprintf(`<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><emulator>%s</emulator>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>
<memballoon model='none'/></devices></domain>`, domain, testenv.QemuSystem(t), j.VolumePath)), 0o644))
	virsh(t, "create", xml)
	t.Cleanup(func() { _ = exec.Command("virsh", "-c", testenv.LibvirtURI, "destroy", domain).Run() })
	before, err := testenv.FileSHA256(j.VolumePath)
	require.NoError(t, err)
	id = e.submit(map[string]any{"image_url": url, "volume_name": "vm-lv", "volume_size_gb": 1})
	j3 := e.waitStatus(id, "failed")
	require.Equal(t, fmt.Sprintf(`volume "vm-lv" (%s) is attached to running domain %q; refusing to overwrite it`, j.VolumePath, domain), j3.Error)
	after, err := testenv.FileSHA256(j.VolumePath)
	require.NoError(t, err)
	require.Equal(t, before, after, "nothing was written")
}

// TestLibvirtCloudInitSeed writes a job's cloud-init seed into a libvirt
// pool volume: libvirt sees the volume (vol-dumpxml), it reads back as an
// ISO 9660 image labelled cidata with the job's documents, a domain gets it
// attached as its cdrom, and while that domain runs a reprovision refuses
// to overwrite the seed.
func TestLibvirtCloudInitSeed(t *testing.T) {
	t.Parallel()
	volPool, imgPool := poolNames(t, "it-seed")
	dirPool(t, volPool)
	dirPool(t, imgPool)
	e := newEnv(t, envOptions{noWorker: true})
	e.startWorker("h1", "PROVISIONER_VOLUME_BACKEND=libvirt", "PROVISIONER_LIBVIRT_POOL="+volPool, "PROVISIONER_LIBVIRT_IMAGES_POOL="+imgPool)
	qcow2, ref := image(t, 8<<20, 16)
	url := e.upload("images/seed.qcow2", qcow2, true)
	ci := map[string]any{"user_data": "#cloud-config\nhostname: lv-seed\n"}
	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-seed", "volume_size_gb": 1, "cloud_init": ci})
	j := e.waitStatus(id, "completed")
	requireVolume(t, j.VolumePath, ref, gib)

	xml := virsh(t, "vol-dumpxml", "--pool", volPool, "vm-seed-seed")
	require.Contains(t, xml, "<capacity unit='bytes'>4194304</capacity>")
	seedPath := e.do("GET", "/api/v1/jobs/"+id, nil).json(t)["seed_volume_path"].(string)
	require.Contains(t, xml, "<path>"+seedPath+"</path>")
	files, volid := readISO(t, seedPath)
	require.Equal(t, "cidata", volid)
	require.Equal(t, ci["user_data"], files["user-data"])
	require.Equal(t, "instance-id: "+id+"\n", files["meta-data"])
	if out, err := exec.Command("blkid", "-o", "value", "-s", "LABEL", seedPath).Output(); err == nil {
		require.Equal(t, "cidata", strings.TrimSpace(string(out)), "blkid sees the NoCloud label")
	}

	domain := strings.Replace(volPool, "-vols-", "-dom-", 1)
	domXML := filepath.Join(t.TempDir(), "dom.xml")
	require.NoError(t, os.WriteFile(domXML, []byte(fmt.Sprintf(`<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><emulator>%s</emulator>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>
<disk type='volume' device='cdrom'><driver name='qemu' type='raw'/><source pool='%s' volume='vm-seed-seed'/><target dev='hdc' bus='ide'/><readonly/></disk>
<memballoon model='none'/></devices></domain>`, domain, testenv.QemuSystem(t), j.VolumePath, volPool)), 0o644))
	virsh(t, "create", domXML)
	t.Cleanup(func() { _ = exec.Command("virsh", "-c", testenv.LibvirtURI, "destroy", domain).Run() })
	require.Regexp(t, `hdc\s+vm-seed-seed`, virsh(t, "domblklist", domain), "the domain has the seed attached")
	before, err := testenv.FileSHA256(seedPath)
	require.NoError(t, err)
	id = e.submit(map[string]any{"volume_name": "vm-seed", "cloud_init": map[string]any{"user_data": "#cloud-config\nhostname: other\n"}})
	failed := e.waitStatus(id, "failed")
	require.Contains(t, failed.Error, "is attached to running domain")
	after, err := testenv.FileSHA256(seedPath)
	require.NoError(t, err)
	require.Equal(t, before, after, "the seed in use was not written")
}
