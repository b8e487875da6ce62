package main

import (
	"context"
	"fmt"

	"github.com/libvirt-volume-provisioner/provisioner/volume/lvm"

	"github.com/libvirt-volume-provisioner/provisioner/volume/file"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// backendConfig selects and configures the volume backend.
type backendConfig struct {
	kind        string
	clones      string
	volumeDir   string
	vg          string
	thinPool    string
	thinMaxUsed int
	libvirtURI  string
	libvirtPool string
	imagesPool  string
	cacheDir    string
}

// volumes is the opened backend and the cache directory that goes with it.
type volumes struct {
	backend volume.Backend
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
		open := file.New
		switch c.clones {
		case "auto":
		case "off":
			open = file.NewWithoutClones
		default:
			return v, fmt.Errorf("PROVISIONER_CLONES=%q: want auto or off", c.clones)
		}
		b, err := open(c.volumeDir)
		if err != nil {
			return v, err
		}
		v.backend, v.where = b, c.volumeDir
	case "lvm":
		b, err := openLVM(c)
		if err != nil {
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

// openLVM opens the lvm backend: thick LVs in PROVISIONER_LVM_VG, or with
// PROVISIONER_LVM_THINPOOL thin snapshots of a golden per image in that
// pool (whose VG is then the volumes').
func openLVM(c backendConfig) (*lvm.Backend, error) {
	vg, pool := c.vg, ""
	if c.thinPool != "" {
		pvg, p, err := lvm.ParseThinPool(c.thinPool)
		if err != nil {
			return nil, fmt.Errorf("PROVISIONER_LVM_THINPOOL: %w", err)
		}
		if vg != "" && vg != pvg {
			return nil, fmt.Errorf("PROVISIONER_LVM_THINPOOL=%s is not in PROVISIONER_LVM_VG=%s: thin volumes live in their pool's volume group", c.thinPool, vg)
		}
		vg, pool = pvg, p
	}
	if vg == "" {
		return nil, fmt.Errorf("PROVISIONER_LVM_VG is not set: the lvm backend needs a volume group")
	}
	if c.thinMaxUsed < 1 || c.thinMaxUsed > 100 {
		return nil, fmt.Errorf("PROVISIONER_LVM_THINPOOL_MAX_USED_PERCENT=%d: want 1 to 100", c.thinMaxUsed)
	}
	b, err := lvm.New(vg)
	if err != nil {
		return nil, err
	}
	if err := b.CheckVolumeGroup(context.Background()); err != nil {
		return nil, err
	}
	if pool == "" {
		return b, nil
	}
	b.Pool, b.PoolMaxUsed = pool, float64(c.thinMaxUsed)/100
	if err := b.CheckThinPool(context.Background()); err != nil {
		return nil, err
	}
	return b, nil
}
