//go:build cgo

package libvirt

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDomainSources(t *testing.T) {
	t.Parallel()
	const desc = `<domain type='kvm'><name>web-1</name><devices>
  <disk type='file' device='disk'>
    <source file='/var/lib/libvirt/images/overlay.qcow2'/>
    <backingStore type='file'><format type='qcow2'/><source file='/images/mid.qcow2'/>
      <backingStore type='block'><format type='raw'/><source dev='/dev/vg0/base'/><backingStore/></backingStore>
    </backingStore>
    <mirror type='file' job='copy'><format type='raw'/><source file='/images/copy.raw'/></mirror>
    <target dev='vda' bus='virtio'/>
  </disk>
  <disk type='block' device='disk'><source dev='/dev/vg0/vm-2'/><target dev='vdb'/></disk>
  <disk type='volume' device='disk'><source pool='vms' volume='vm-3'/><target dev='vdc'/></disk>
  <disk type='file' device='cdrom'><target dev='hdc'/></disk>
  <disk type='network' device='disk'><source protocol='rbd' name='rbd/vm-4'/><target dev='vdd'/></disk>
  <interface type='network'><source network='default'/></interface>
</devices></domain>`
	got, err := domainSources(desc)
	require.NoError(t, err)
	require.Equal(t, []diskSource{
		{File: "/var/lib/libvirt/images/overlay.qcow2"},
		{File: "/images/mid.qcow2"},
		{Dev: "/dev/vg0/base"},
		{File: "/images/copy.raw"},
		{Dev: "/dev/vg0/vm-2"},
		{Pool: "vms", Volume: "vm-3"},
	}, got)
}
