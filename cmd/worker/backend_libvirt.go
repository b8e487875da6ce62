//go:build cgo

package main

import (
	"fmt"

	"github.com/libvirt-volume-provisioner/provisioner/volume/libvirt"
)

// openLibvirt opens the libvirt backend's pool and the images pool, whose
// directory becomes the image cache.
func openLibvirt(c backendConfig) (volumes, error) {
	v := volumes{close: func() {}}
	if c.libvirtPool == "" {
		return v, fmt.Errorf("PROVISIONER_LIBVIRT_POOL is not set: the libvirt backend needs the pool of its volumes")
	}
	var opts []libvirt.Option
	switch c.clones {
	case "auto":
	case "off":
		opts = append(opts, libvirt.WithoutClones("PROVISIONER_CLONES=off"))
	default:
		return v, fmt.Errorf("PROVISIONER_CLONES=%q: want auto or off", c.clones)
	}
	b, err := libvirt.Open(c.libvirtURI, c.libvirtPool, opts...)
	if err != nil {
		return v, err
	}
	images, err := libvirt.OpenImagesPool(c.libvirtURI, c.imagesPool)
	if err != nil {
		_ = b.Close()
		return v, err
	}
	v.backend, v.where = b, fmt.Sprintf("libvirt storage pool %s (%s)", b.Pool(), c.libvirtURI)
	v.cacheDir = images.Dir()
	v.refreshCache = images.Refresh
	v.close = func() {
		_ = images.Close()
		_ = b.Close()
	}
	return v, nil
}
