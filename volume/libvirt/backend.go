//go:build cgo

package libvirt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"os"

	golibvirt "libvirt.org/go/libvirt"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// Backend keeps volumes in a libvirt storage pool of type dir, fs, netfs
// (raw files) or logical (LVM logical volumes). It is safe for concurrent
// use; its libvirt calls are serialized on one connection.
type Backend struct {
	s      *session
	clones poolClones
}

// Option is an optional setting of Open.
type Option func(*openOptions)

type openOptions struct {
	noClones string // why clones are off; "" probes them
}

// WithoutClones opens the backend with clones off (reason says why, e.g.
// PROVISIONER_CLONES=off): every volume is converted into, and the pool is
// not probed for reflinks.
func WithoutClones(reason string) Option {
	return func(o *openOptions) { o.noClones = reason }
}

var (
	_ volume.Backend    = (*Backend)(nil)
	_ volume.UseChecker = (*Backend)(nil)
	_ volume.Refresher  = (*Backend)(nil)
)

// rawFormats are the formats libvirt probes in a file that is raw bytes:
// "iso" is a raw file holding an ISO 9660 file system (a cloud-init seed,
// uploaded content), which libvirt names by its signature.
var rawFormats = map[string]bool{"raw": true, "iso": true}

// fileLike are the pool types whose volumes are files in a directory.
var fileLike = map[string]bool{"dir": true, "fs": true, "netfs": true}

// Open connects to libvirt at uri (e.g. qemu:///system) and uses the storage
// pool named pool, which must exist, be active, and be of type dir, fs,
// netfs or logical. In a dir pool it finds out, once, whether libvirt can
// clone volumes there with reflink (CloneSupport). Close the Backend when
// done.
func Open(uri, pool string, opts ...Option) (*Backend, error) {
	var o openOptions
	for _, opt := range opts {
		opt(&o)
	}
	s, err := openSession(uri, pool)
	if err != nil {
		return nil, err
	}
	if !fileLike[s.poolType] && s.poolType != "logical" {
		_ = s.close()
		return nil, fmt.Errorf("libvirt storage pool %q at %s is of type %q; volumes can be kept only in pools of type dir, fs, netfs or logical", pool, uri, s.poolType)
	}
	b := &Backend{s: s}
	if o.noClones != "" {
		b.clones = poolClones{reason: o.noClones}
	} else {
		b.clones = b.probeClones(context.Background())
	}
	return b, nil
}

// Close closes the libvirt connection.
func (b *Backend) Close() error { return b.s.close() }

// URI is the libvirt connection URI.
func (b *Backend) URI() string { return b.s.uri }

// Pool is the storage pool's name.
func (b *Backend) Pool() string { return b.s.poolName }

// PoolType is the storage pool's type: dir, fs, netfs or logical.
func (b *Backend) PoolType() string { return b.s.poolType }

// volXML is a storage volume's XML description: what Create sends, and the
// part of what libvirt describes that Lookup reads.
type volXML struct {
	XMLName    xml.Name      `xml:"volume"`
	Name       string        `xml:"name"`
	Capacity   *sizeXML      `xml:"capacity,omitempty"`
	Allocation *sizeXML      `xml:"allocation,omitempty"`
	Target     *volTargetXML `xml:"target,omitempty"`
}

type sizeXML struct {
	Unit  string `xml:"unit,attr,omitempty"`
	Value uint64 `xml:",chardata"`
}

type volTargetXML struct {
	Path   string     `xml:"path,omitempty"`
	Format *formatXML `xml:"format,omitempty"`
}

type formatXML struct {
	Type string `xml:"type,attr"`
}

// describe is the volume name in errors.
func (b *Backend) describe(name string) string {
	return fmt.Sprintf("volume %q in libvirt storage pool %q", name, b.s.poolName)
}

// lookup finds vol name in pool, refreshing the pool once when libvirt does
// not know it, so that a volume made behind libvirt's back is found too. vol
// is nil when there is none; the caller frees it.
func (b *Backend) lookup(ctx context.Context, pool *golibvirt.StoragePool, name string) (*golibvirt.StorageVol, error) {
	vol, err := pool.LookupStorageVolByName(name)
	if errors.Is(err, golibvirt.ERR_NO_STORAGE_VOL) {
		if err := b.s.refresh(ctx, pool); err != nil {
			return nil, err
		}
		vol, err = pool.LookupStorageVolByName(name)
	}
	if errors.Is(err, golibvirt.ERR_NO_STORAGE_VOL) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", b.describe(name), clean(err))
	}
	return vol, nil
}

// volume reads a volume's path, capacity and format, and checks that its
// bytes may be written as a raw disk: a raw regular file (not a symlink) in
// a file pool, a block device in a logical pool.
func (b *Backend) volume(name string, vol *golibvirt.StorageVol) (volume.Volume, error) {
	path, err := vol.GetPath()
	if err != nil {
		return volume.Volume{}, fmt.Errorf("path of %s: %w", b.describe(name), clean(err))
	}
	info, err := vol.GetInfo()
	if err != nil {
		return volume.Volume{}, fmt.Errorf("size of %s: %w", b.describe(name), clean(err))
	}
	desc, err := vol.GetXMLDesc(0)
	if err != nil {
		return volume.Volume{}, fmt.Errorf("describe %s: %w", b.describe(name), clean(err))
	}
	var vx volXML
	if err := xml.Unmarshal([]byte(desc), &vx); err != nil {
		return volume.Volume{}, fmt.Errorf("parse the XML of %s: %w", b.describe(name), err)
	}
	if fileLike[b.s.poolType] {
		if vx.Target != nil && vx.Target.Format != nil && !rawFormats[vx.Target.Format.Type] {
			return volume.Volume{}, fmt.Errorf("%s (%s) has format %s; only raw volumes can be written; refusing to touch it", b.describe(name), path, vx.Target.Format.Type)
		}
		st, err := os.Lstat(path)
		if err != nil {
			return volume.Volume{}, fmt.Errorf("%s: %w", b.describe(name), err)
		}
		switch {
		case st.Mode()&os.ModeSymlink != 0:
			return volume.Volume{}, fmt.Errorf("%s: %s is a symlink; refusing to touch it", b.describe(name), path)
		case !st.Mode().IsRegular():
			return volume.Volume{}, fmt.Errorf("%s: %s is not a regular file (%s); refusing to touch it", b.describe(name), path, st.Mode().Type())
		}
	} else {
		st, err := os.Stat(path)
		if err != nil {
			return volume.Volume{}, fmt.Errorf("%s: %w", b.describe(name), err)
		}
		if st.Mode().Type() != os.ModeDevice {
			return volume.Volume{}, fmt.Errorf("%s: %s is not a block device (%s); refusing to touch it", b.describe(name), path, st.Mode().Type())
		}
	}
	return volume.Volume{Name: name, Path: path, Size: int64(info.Capacity)}, nil
}

// Lookup finds the volume name in the pool; ok is false when there is none.
// A volume that is not raw, or whose path is a symlink or not a regular file
// (a block device in a logical pool), is an error.
func (b *Backend) Lookup(ctx context.Context, name string) (volume.Volume, bool, error) {
	if err := messaging.ValidateVolumeName(name); err != nil {
		return volume.Volume{}, false, err
	}
	var (
		v  volume.Volume
		ok bool
	)
	err := b.s.doIdempotent(ctx, func(_ *golibvirt.Connect, pool *golibvirt.StoragePool) error {
		vol, err := b.lookup(ctx, pool, name)
		if err != nil || vol == nil {
			return err
		}
		defer vol.Free()
		v, err = b.volume(name, vol)
		ok = err == nil
		return err
	})
	return v, ok, err
}

// createXML is the XML of a new raw volume of size bytes, fully allocated
// (so that a logical pool makes a plain LV, never a sparse snapshot LV).
func (b *Backend) createXML(name string, size int64) (string, error) {
	vx := volXML{
		Name:       name,
		Capacity:   &sizeXML{Unit: "bytes", Value: uint64(size)},
		Allocation: &sizeXML{Unit: "bytes", Value: uint64(size)},
	}
	if fileLike[b.s.poolType] {
		vx.Target = &volTargetXML{Format: &formatXML{Type: "raw"}}
	}
	out, err := xml.Marshal(vx)
	if err != nil {
		return "", fmt.Errorf("volume XML of %s: %w", b.describe(name), err)
	}
	return string(out), nil
}

// Create makes the volume name of exactly size bytes, fully allocated and
// reading as zeros, then refreshes the pool. It fails if the name exists.
func (b *Backend) Create(ctx context.Context, name string, size int64) (volume.Volume, error) {
	if err := messaging.ValidateVolumeName(name); err != nil {
		return volume.Volume{}, err
	}
	if size <= 0 {
		return volume.Volume{}, fmt.Errorf("create %s: size %d is not positive", b.describe(name), size)
	}
	if err := b.checkCreateSpace(ctx, name, size); err != nil {
		return volume.Volume{}, err
	}
	desc, err := b.createXML(name, size)
	if err != nil {
		return volume.Volume{}, err
	}
	var v volume.Volume
	err = b.s.do(ctx, func(_ *golibvirt.Connect, pool *golibvirt.StoragePool) (err error) {
		existing, err := b.lookup(ctx, pool, name)
		if err != nil {
			return fmt.Errorf("create %s: %w", b.describe(name), err)
		}
		if existing != nil {
			_ = existing.Free()
			return fmt.Errorf("create %s: it already exists", b.describe(name))
		}
		vol, err := pool.StorageVolCreateXML(desc, 0)
		if errors.Is(err, golibvirt.ERR_STORAGE_VOL_EXIST) {
			return fmt.Errorf("create %s: it already exists", b.describe(name))
		}
		if err != nil {
			return fmt.Errorf("create %s of %d bytes: %w", b.describe(name), size, clean(err))
		}
		defer vol.Free()
		defer func() {
			if err != nil {
				_ = vol.Delete(0)
				_ = pool.Refresh(0)
			}
		}()
		if v, err = b.volume(name, vol); err != nil {
			return fmt.Errorf("created %s: %w", b.describe(name), err)
		}
		if v.Size != size {
			return fmt.Errorf("created %s with %d bytes; %d were asked for", b.describe(name), v.Size, size)
		}
		return b.s.refresh(ctx, pool)
	})
	if err != nil {
		return volume.Volume{}, err
	}
	return v, nil
}

// Delete removes the volume name and refreshes the pool; a missing volume is
// not an error.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if err := messaging.ValidateVolumeName(name); err != nil {
		return err
	}
	return b.s.doIdempotent(ctx, func(_ *golibvirt.Connect, pool *golibvirt.StoragePool) error {
		vol, err := b.lookup(ctx, pool, name)
		if err != nil || vol == nil {
			return err
		}
		defer vol.Free()
		if err := vol.Delete(0); err != nil {
			return fmt.Errorf("delete %s: %w", b.describe(name), clean(err))
		}
		return b.s.refresh(ctx, pool)
	})
}

// Refresh makes libvirt re-read the pool (virsh pool-refresh), so that its
// volumes' sizes and allocations are current after a write.
func (b *Backend) Refresh(ctx context.Context) error {
	return b.s.doIdempotent(ctx, func(_ *golibvirt.Connect, pool *golibvirt.StoragePool) error {
		return b.s.refresh(ctx, pool)
	})
}
