//go:build cgo

package libvirt_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	golibvirt "libvirt.org/go/libvirt"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

// seq makes pool and domain names unique within the test process; the pid
// makes them unique among processes.
var seq atomic.Int64

// unique returns a libvirt object name for test t that no other test uses.
func unique(t *testing.T, kind string) string {
	base := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(base) > 40 {
		base = base[:40]
	}
	return fmt.Sprintf("lvptest-%s-%s-%d-%d", kind, base, os.Getpid(), seq.Add(1))
}

// testConn makes sure libvirtd runs and opens a connection for the test's
// own setup, closed when the test ends.
func testConn(t *testing.T) (*golibvirt.Connect, string) {
	t.Helper()
	uri := testenv.Libvirtd(t)
	conn, err := golibvirt.NewConnect(uri)
	require.NoError(t, err, "connect to %s", uri)
	t.Cleanup(func() { _, _ = conn.Close() })
	return conn, uri
}

// worldDir makes a temporary directory (and its parent, the test's temp
// root) traversable by everyone, so that QEMU, which libvirt runs as user
// libvirt-qemu, can reach the disk files in it.
func worldDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.Chmod(dir, 0o755))
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755))
	return dir
}

// definePool defines a dir pool in a new temporary directory, starts it when
// start is true, and destroys and undefines it when the test ends. It returns
// the pool's name and directory.
func definePool(t *testing.T, conn *golibvirt.Connect, start bool) (string, string) {
	t.Helper()
	name := unique(t, "pool")
	dir := worldDir(t)
	desc := fmt.Sprintf("<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>", name, dir)
	pool, err := conn.StoragePoolDefineXML(desc, 0)
	require.NoError(t, err, "define pool %s", name)
	t.Cleanup(func() {
		if active, err := pool.IsActive(); err == nil && active {
			if err := pool.Destroy(); err != nil {
				t.Errorf("destroy pool %s: %v", name, err)
			}
		}
		if err := pool.Undefine(); err != nil {
			t.Errorf("undefine pool %s: %v", name, err)
		}
		_ = pool.Free()
	})
	if start {
		require.NoError(t, pool.Create(0), "start pool %s", name)
	}
	return name, dir
}

// poolVolumes lists a pool's volume names through the API, like virsh
// vol-list.
func poolVolumes(t *testing.T, conn *golibvirt.Connect, poolName string) []string {
	t.Helper()
	pool, err := conn.LookupStoragePoolByName(poolName)
	require.NoError(t, err)
	defer pool.Free()
	vols, err := pool.ListAllStorageVolumes(0)
	require.NoError(t, err)
	var names []string
	for i := range vols {
		n, err := vols[i].GetName()
		require.NoError(t, err)
		names = append(names, n)
		_ = vols[i].Free()
	}
	return names
}

// startDomain starts a transient QEMU (TCG) domain with 64 MiB of memory,
// no OS and the given <disk> elements; it sits in the firmware, running. It
// is destroyed when the test ends (and by libvirtd if the test process dies
// first, as it was started with autodestroy).
func startDomain(t *testing.T, conn *golibvirt.Connect, name, disks string) *golibvirt.Domain {
	t.Helper()
	emulator := testenv.QemuSystem(t)
	desc := fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>%s</emulator>
    %s
    <memballoon model='none'/>
  </devices>
</domain>`, name, emulator, disks)
	dom, err := conn.DomainCreateXML(desc, golibvirt.DOMAIN_START_AUTODESTROY)
	require.NoError(t, err, "start domain %s", name)
	t.Cleanup(func() {
		destroyDomain(t, dom)
		_ = dom.Free()
	})
	return dom
}

// destroyDomain stops a transient domain (which removes it); one that is
// gone already is fine.
func destroyDomain(t *testing.T, dom *golibvirt.Domain) {
	t.Helper()
	err := dom.Destroy()
	if err != nil && !errors.Is(err, golibvirt.ERR_NO_DOMAIN) && !errors.Is(err, golibvirt.ERR_OPERATION_INVALID) {
		t.Errorf("destroy domain: %v", err)
	}
}

// fileDisk is a <disk> of a raw file.
func fileDisk(path, dev string) string {
	return fmt.Sprintf(`<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='%s' bus='virtio'/></disk>`, path, dev)
}

// volumeDisk is a <disk> of a storage pool's volume.
func volumeDisk(pool, vol, dev string) string {
	return fmt.Sprintf(`<disk type='volume' device='disk'><driver name='qemu' type='raw'/><source pool='%s' volume='%s'/><target dev='%s' bus='virtio'/></disk>`, pool, vol, dev)
}
