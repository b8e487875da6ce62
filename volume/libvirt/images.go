//go:build cgo

package libvirt

import (
	"context"
	"fmt"

	golibvirt "libvirt.org/go/libvirt"
)

// ImagesPool is the libvirt storage pool (of type dir, fs or netfs) whose
// directory holds the image cache. Refreshing it after the cache changes
// makes libvirt list the cached images (virsh vol-list <pool>). It is safe
// for concurrent use.
type ImagesPool struct {
	s *session
}

// OpenImagesPool connects to libvirt at uri and uses the storage pool named
// name, which must exist, be active and keep its volumes as files in a
// directory. Close it when done.
func OpenImagesPool(uri, name string) (*ImagesPool, error) {
	s, err := openSession(uri, name)
	if err != nil {
		return nil, err
	}
	if !fileLike[s.poolType] {
		_ = s.close()
		return nil, fmt.Errorf("libvirt storage pool %q at %s is of type %q; the images pool must be of type dir, fs or netfs", name, uri, s.poolType)
	}
	if s.poolPath == "" {
		_ = s.close()
		return nil, fmt.Errorf("libvirt storage pool %q at %s has no target path", name, uri)
	}
	return &ImagesPool{s: s}, nil
}

// Dir is the pool's target directory, to be used as the cache directory.
func (p *ImagesPool) Dir() string { return p.s.poolPath }

// Name is the pool's name.
func (p *ImagesPool) Name() string { return p.s.poolName }

// URI is the libvirt connection URI.
func (p *ImagesPool) URI() string { return p.s.uri }

// Refresh makes libvirt re-read the pool's directory (virsh pool-refresh).
func (p *ImagesPool) Refresh(ctx context.Context) error {
	return p.s.doIdempotent(ctx, func(_ *golibvirt.Connect, pool *golibvirt.StoragePool) error {
		return p.s.refresh(ctx, pool)
	})
}

// Close closes the libvirt connection.
func (p *ImagesPool) Close() error { return p.s.close() }
