//go:build cgo

package libvirt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
	golibvirt "libvirt.org/go/libvirt"
)

// diskSource is a <source> (or <mirror>) of a domain's disk: a file, a block
// device, or a storage pool's volume.
type diskSource struct {
	File   string `xml:"file,attr"`
	Dev    string `xml:"dev,attr"`
	Pool   string `xml:"pool,attr"`
	Volume string `xml:"volume,attr"`
}

// backingStore is a layer under a disk's image; the chain nests.
type backingStore struct {
	Source *diskSource   `xml:"source"`
	Next   *backingStore `xml:"backingStore"`
}

// domainXML is the part of a domain's XML description read here.
type domainXML struct {
	Disks []struct {
		Source  *diskSource   `xml:"source"`
		Backing *backingStore `xml:"backingStore"`
		Mirror  *struct {
			diskSource
			Source *diskSource `xml:"source"`
		} `xml:"mirror"`
	} `xml:"devices>disk"`
}

// domainSources lists every storage a domain's disks use: each disk's
// source, the layers of its backing chain, and a block job's mirror.
func domainSources(desc string) ([]diskSource, error) {
	var dx domainXML
	if err := xml.Unmarshal([]byte(desc), &dx); err != nil {
		return nil, err
	}
	var out []diskSource
	add := func(s *diskSource) {
		if s != nil && (s.File != "" || s.Dev != "" || s.Volume != "") {
			out = append(out, *s)
		}
	}
	for _, d := range dx.Disks {
		add(d.Source)
		for bs := d.Backing; bs != nil; bs = bs.Next {
			add(bs.Source)
		}
		if m := d.Mirror; m != nil {
			add(&m.diskSource)
			add(m.Source)
		}
	}
	return out, nil
}

// pathMatcher tells whether a path names the same file as a volume's path:
// the same string, the same path once symlinks are resolved, or the same
// file (device and inode).
type pathMatcher struct {
	path     string
	resolved string
	st       os.FileInfo
}

func newPathMatcher(path string) pathMatcher {
	m := pathMatcher{path: filepath.Clean(path)}
	if r, err := filepath.EvalSymlinks(path); err == nil {
		m.resolved = r
	}
	if st, err := os.Stat(path); err == nil {
		m.st = st
	}
	return m
}

func (m pathMatcher) matches(p string) bool {
	if p == "" {
		return false
	}
	if filepath.Clean(p) == m.path {
		return true
	}
	if m.resolved != "" {
		if r, err := filepath.EvalSymlinks(p); err == nil && r == m.resolved {
			return true
		}
	}
	if m.st != nil {
		if st, err := os.Stat(p); err == nil && os.SameFile(st, m.st) {
			return true
		}
	}
	return false
}

// CheckNotInUse returns an error when a running (or paused) domain has vol
// attached: a disk whose source file or device is vol's path (compared also
// with symlinks resolved), or whose source is this pool's volume vol.Name,
// or another pool's volume with vol's path. Backing chains and block-copy
// mirrors count as attached. Domains that are defined but shut off do not.
func (b *Backend) CheckNotInUse(ctx context.Context, vol volume.Volume) error {
	if vol.Path == "" {
		return fmt.Errorf("check whether %s is in use: the volume has no path", b.describe(vol.Name))
	}
	m := newPathMatcher(vol.Path)
	return b.s.doIdempotent(ctx, func(conn *golibvirt.Connect, _ *golibvirt.StoragePool) error {
		doms, err := conn.ListAllDomains(golibvirt.CONNECT_LIST_DOMAINS_ACTIVE)
		if err != nil {
			return fmt.Errorf("check whether %s is in use: list running domains: %w", b.describe(vol.Name), clean(err))
		}
		defer func() {
			for i := range doms {
				_ = doms[i].Free()
			}
		}()
		for i := range doms {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("check whether %s is in use: %w", b.describe(vol.Name), err)
			}
			dom := &doms[i]
			name, err := dom.GetName()
			if err != nil {
				return fmt.Errorf("check whether %s is in use: name of a running domain: %w", b.describe(vol.Name), clean(err))
			}
			desc, err := dom.GetXMLDesc(0)
			if errors.Is(err, golibvirt.ERR_NO_DOMAIN) {
				continue // it went away since the listing
			}
			if err != nil {
				return fmt.Errorf("check whether %s is in use: describe running domain %q: %w", b.describe(vol.Name), name, clean(err))
			}
			sources, err := domainSources(desc)
			if err != nil {
				return fmt.Errorf("check whether %s is in use: parse the XML of running domain %q: %w", b.describe(vol.Name), name, err)
			}
			for _, s := range sources {
				if b.sourceIs(conn, s, vol, m) {
					return &volume.InUseError{Volume: vol.Name, Action: "overwrite",
						Reason: fmt.Sprintf("volume %q (%s) is attached to running domain %q", vol.Name, vol.Path, name)}
				}
			}
		}
		return nil
	})
}

// sourceIs tells whether disk source s is the volume vol.
func (b *Backend) sourceIs(conn *golibvirt.Connect, s diskSource, vol volume.Volume, m pathMatcher) bool {
	if m.matches(s.File) || m.matches(s.Dev) {
		return true
	}
	if s.Volume == "" {
		return false
	}
	if s.Pool == b.s.poolName && s.Volume == vol.Name {
		return true
	}
	// Another pool's volume may still be the same file or device.
	pool, err := conn.LookupStoragePoolByName(s.Pool)
	if err != nil {
		return false
	}
	defer pool.Free()
	other, err := pool.LookupStorageVolByName(s.Volume)
	if err != nil {
		return false
	}
	defer other.Free()
	p, err := other.GetPath()
	return err == nil && m.matches(p)
}
