package main

import (
	"context"
	"fmt"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline"
)

// backendConfig selects and configures the volume backend.
type backendConfig struct {
	kind        string
	clones      string
	volumeDir   string
	vg          string
	libvirtURI  string
	libvirtPool string
	imagesPool  string
	cacheDir    string
}

// volumes is the opened backend and the cache directory that goes with it.
type volumes struct {
	backend pipeline.Backend
	// cacheDir is PROVISIONER_CACHE_DIR, or the images pool's directory
	// with the libvirt backend.
	cacheDir string
	// where names where the volumes are, for the log.
	where string
	// refreshCache, when set, runs after the cache changed.
	refreshCache func(context.Context) error
	close        func()
}

func openBackend(c backendConfig) (volumes, error) {
	v := volumes{cacheDir: c.cacheDir, close: func() {}}
	switch c.kind {
	case "file":
		open := pipeline.NewFileBackend
		switch c.clones {
		case "auto":
		case "off":
			open = pipeline.NewFileBackendWithoutClones
		default:
			return v, fmt.Errorf("PROVISIONER_CLONES=%q: want auto or off", c.clones)
		}
		b, err := open(c.volumeDir)
		if err != nil {
			return v, err
		}
		v.backend, v.where = b, c.volumeDir
	case "lvm":
		if c.vg == "" {
			return v, fmt.Errorf("PROVISIONER_LVM_VG is not set: the lvm backend needs a volume group")
		}
		b, err := pipeline.NewLVMBackend(c.vg)
		if err != nil {
			return v, err
		}
		if err := b.CheckVolumeGroup(context.Background()); err != nil {
			return v, err
		}
		v.backend, v.where = b, "volume group "+c.vg
	case "libvirt":
		return openLibvirt(c)
	default:
		return v, fmt.Errorf("PROVISIONER_VOLUME_BACKEND=%q is not supported (supported: file, lvm, libvirt)", c.kind)
	}
	return v, nil
}
