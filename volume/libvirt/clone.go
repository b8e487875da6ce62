//go:build cgo

package libvirt

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	golibvirt "libvirt.org/go/libvirt"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// In a dir pool on a file system with reflinks, the backend keeps each
// image's golden as a volume of the pool itself (libvirt clones with
// reflink only within a file system), named so that no job's volume can
// take the name (volume names never start with a dot):
//
//	.golden-owner                    the marker; its text is goldenMarker
//	.golden-<key>.raw                a sealed golden: mode 0444, immutable where possible
//	.golden-<key>.prepare-<random>   a golden being written
//	.<volume>.clone-<random>         a clone about to replace <volume>
//	.probe-<random>[.clone]          the start-up probe's volumes (removed at once)
//
// Every volume is made by libvirt (virStorageVolCreateXML, and
// virStorageVolCreateXMLFrom with VIR_STORAGE_VOL_CREATE_REFLINK for the
// clones: virsh vol-clone --reflink); goldens are sealed and renamed in the
// pool's directory, which is then refreshed.
const (
	goldenPrefix  = ".golden-"
	goldenExt     = ".raw"
	goldenPrepare = ".prepare-"
	markerFile    = ".golden-owner"
	goldenMarker  = "libvirt-volume-provisioner goldens, v1: the .golden-* volumes of this pool are the worker's; do not edit\n"
	cloneInfix    = ".clone-"
	probePrefix   = ".probe-"
)

// poolClones is what Open found out about clones in the pool.
type poolClones struct {
	ok     bool
	reason string // why not
}

var (
	_ volume.Cloner       = (*Backend)(nil)
	_ volume.DigestSealer = (*Backend)(nil)
)

// CloneSupport says whether volumes are reflink clones of goldens in this
// pool, as found when it was opened; reason says why not.
func (b *Backend) CloneSupport() (bool, string) { return b.clones.ok, b.clones.reason }

// DisableClones turns clones off (PROVISIONER_CLONES=off): every volume is
// converted into.
func (b *Backend) DisableClones(reason string) { b.clones = poolClones{reason: reason} }

func (b *Backend) checkClones() error {
	if !b.clones.ok {
		return fmt.Errorf("%w: %s", volume.ErrCloneUnsupported, b.clones.reason)
	}
	return nil
}

// probeClones finds out whether the pool can hold goldens and clone them
// with reflinks: a dir pool whose directory carries (or can be given) the
// marker, where libvirt clones a probe volume with reflink.
func (b *Backend) probeClones(ctx context.Context) poolClones {
	if b.s.poolType != "dir" {
		return poolClones{reason: fmt.Sprintf("libvirt storage pool %q is of type %s; volumes are reflink clones only in dir pools", b.s.poolName, b.s.poolType)}
	}
	marked, err := b.checkMarker()
	if err != nil {
		return poolClones{reason: err.Error()}
	}
	if err := b.probeReflink(ctx); err != nil {
		return poolClones{reason: err.Error()}
	}
	if !marked {
		if err := b.writeMarker(); err != nil {
			return poolClones{reason: err.Error()}
		}
	}
	return poolClones{ok: true}
}

// checkMarker reads the marker that makes the pool's .golden-* volumes the
// worker's; marked is false when there is none yet. A pool holding
// .golden-* files without it is left alone (an error).
func (b *Backend) checkMarker() (marked bool, err error) {
	marker := filepath.Join(b.s.poolPath, markerFile)
	got, err := os.ReadFile(marker)
	if err == nil {
		if string(got) != goldenMarker {
			return false, fmt.Errorf("%s does not hold the provisioner's marker; move it away to use clones", marker)
		}
		return true, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("read %s: %w", marker, err)
	}
	if found, _ := filepath.Glob(filepath.Join(b.s.poolPath, goldenPrefix+"*")); len(found) > 0 {
		return false, fmt.Errorf("libvirt storage pool %q holds %s without the provisioner's marker %s; move those away to use clones", b.s.poolName, filepath.Base(found[0]), markerFile)
	}
	return false, nil
}

// writeMarker writes the marker into the pool's directory.
func (b *Backend) writeMarker() error {
	marker := filepath.Join(b.s.poolPath, markerFile)
	f, err := os.OpenFile(marker, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return fmt.Errorf("mark libvirt storage pool %q for goldens: %w", b.s.poolName, err)
	}
	_, err = f.WriteString(goldenMarker)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(marker)
		return fmt.Errorf("mark libvirt storage pool %q for goldens: %w", b.s.poolName, err)
	}
	return nil
}

// probeReflink has libvirt clone a small volume with reflink, then removes
// both.
func (b *Backend) probeReflink(ctx context.Context) error {
	src := probePrefix + randomSuffix()
	dst := src + ".clone"
	defer func() { _ = b.removeFiles(context.WithoutCancel(ctx), src, dst) }()
	desc, err := b.rawXML(src, 64<<10, 0)
	if err != nil {
		return err
	}
	return b.s.do(ctx, func(_ *golibvirt.Connect, pool *golibvirt.StoragePool) error {
		vol, err := pool.StorageVolCreateXML(desc, 0)
		if err != nil {
			return fmt.Errorf("create a probe volume in libvirt storage pool %q: %w", b.s.poolName, clean(err))
		}
		defer vol.Free()
		p := filepath.Join(b.s.poolPath, src)
		if err := os.WriteFile(p, make([]byte, 64<<10), 0o600); err != nil {
			return fmt.Errorf("write the probe volume %s: %w", p, err)
		}
		cdesc, err := b.rawXML(dst, 64<<10, 0)
		if err != nil {
			return err
		}
		c, err := pool.StorageVolCreateXMLFrom(cdesc, vol, golibvirt.STORAGE_VOL_CREATE_REFLINK)
		if err != nil {
			return fmt.Errorf("libvirt cannot clone volumes with reflink in storage pool %q (%s, %s): %w; XFS made with reflink=1 and btrfs have reflinks",
				b.s.poolName, b.s.poolPath, fsutil.KindOf(b.s.poolPath), clean(err))
		}
		return c.Free()
	})
}

// fsName names the file system holding dir.

func randomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// rawXML is the XML of a raw file volume of capacity bytes of which
// allocation are allocated up front (0: sparse).
func (b *Backend) rawXML(name string, capacity, allocation int64) (string, error) {
	vx := volXML{
		Name:       name,
		Capacity:   &sizeXML{Unit: "bytes", Value: uint64(capacity)},
		Allocation: &sizeXML{Unit: "bytes", Value: uint64(allocation)},
		Target:     &volTargetXML{Format: &formatXML{Type: "raw"}},
	}
	out, err := xml.Marshal(vx)
	if err != nil {
		return "", fmt.Errorf("volume XML of %s: %w", b.describe(name), err)
	}
	return string(out), nil
}

// removeFiles removes the named files of the pool's directory (clearing an
// immutable flag first) and refreshes the pool; missing ones are fine.
func (b *Backend) removeFiles(ctx context.Context, names ...string) error {
	for _, n := range names {
		if strings.ContainsRune(n, '/') || n == "" || n == "." || n == ".." {
			return fmt.Errorf("remove %q from libvirt storage pool %q: not a file name", n, b.s.poolName)
		}
		if err := volume.RemoveGoldenFile(filepath.Join(b.s.poolPath, n)); err != nil {
			return err
		}
	}
	return b.Refresh(ctx)
}

func goldenName(key string) string { return goldenPrefix + key + goldenExt }

// PrepareGolden creates a sparse raw volume of size bytes in the pool, to
// write key's image into.
func (b *Backend) PrepareGolden(ctx context.Context, key string, size int64) (volume.Volume, error) {
	if err := b.checkClones(); err != nil {
		return volume.Volume{}, err
	}
	if err := volume.ValidGoldenKey(key); err != nil {
		return volume.Volume{}, err
	}
	name := goldenPrefix + key + goldenPrepare + randomSuffix()
	desc, err := b.rawXML(name, size, 0)
	if err != nil {
		return volume.Volume{}, err
	}
	var v volume.Volume
	err = b.s.do(ctx, func(_ *golibvirt.Connect, pool *golibvirt.StoragePool) error {
		vol, err := pool.StorageVolCreateXML(desc, 0)
		if err != nil {
			return fmt.Errorf("create golden of %s as %s: %w", key, b.describe(name), clean(err))
		}
		defer vol.Free()
		v, err = b.volume(name, vol)
		if err == nil && v.Size != size {
			err = fmt.Errorf("created %s with %d bytes; %d were asked for", b.describe(name), v.Size, size)
		}
		if err != nil {
			_ = vol.Delete(0)
		}
		return err
	})
	return v, err
}

// SealGolden flushes and hashes the prepared volume, makes it read-only and
// immutable, and renames it to .golden-<key>.raw.
func (b *Backend) SealGolden(ctx context.Context, key string, prepared volume.Volume) (volume.Golden, error) {
	return b.sealGolden(ctx, key, prepared, "")
}

// SealGoldenDigest is SealGolden for a golden hashed while it was written.
func (b *Backend) SealGoldenDigest(ctx context.Context, key string, prepared volume.Volume, digest string) (volume.Golden, error) {
	if digest == "" {
		return volume.Golden{}, fmt.Errorf("seal golden of %s: no digest given", key)
	}
	return b.sealGolden(ctx, key, prepared, digest)
}

func (b *Backend) sealGolden(ctx context.Context, key string, prepared volume.Volume, digest string) (volume.Golden, error) {
	if err := b.checkClones(); err != nil {
		return volume.Golden{}, err
	}
	if err := volume.ValidGoldenKey(key); err != nil {
		return volume.Golden{}, err
	}
	base := filepath.Base(prepared.Path)
	if filepath.Dir(prepared.Path) != filepath.Clean(b.s.poolPath) || !strings.HasPrefix(base, goldenPrefix+key+goldenPrepare) {
		return volume.Golden{}, fmt.Errorf("seal golden of %s: %s is not a golden being prepared in libvirt storage pool %q", key, prepared.Path, b.s.poolName)
	}
	g, err := volume.SealGoldenFile(ctx, key, prepared.Path, filepath.Join(b.s.poolPath, goldenName(key)), digest)
	if err != nil {
		return g, err
	}
	if err := b.Refresh(ctx); err != nil {
		return g, err
	}
	return g, nil
}

// RemoveGolden removes key's golden and the goldens being prepared for it.
func (b *Backend) RemoveGolden(ctx context.Context, key string) error {
	if err := volume.ValidGoldenKey(key); err != nil {
		return err
	}
	names := []string{goldenName(key)}
	prepared, _ := filepath.Glob(filepath.Join(b.s.poolPath, goldenPrefix+key+goldenPrepare+"*"))
	for _, p := range prepared {
		names = append(names, filepath.Base(p))
	}
	return b.removeFiles(ctx, names...)
}

// GoldenKeys lists the keys with a golden volume or one being prepared.
func (b *Backend) GoldenKeys(context.Context) ([]string, error) {
	if err := b.checkClones(); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(b.s.poolPath)
	if err != nil {
		return nil, fmt.Errorf("list goldens in %s: %w", b.s.poolPath, err)
	}
	return volume.GoldenKeysIn(ents, func(name string) (string, bool) {
		rest, ok := strings.CutPrefix(name, goldenPrefix)
		if !ok {
			return "", false
		}
		if key, sealed := strings.CutSuffix(rest, goldenExt); sealed {
			return key, true
		}
		if i := strings.Index(rest, goldenPrepare); i > 0 {
			return rest[:i], true
		}
		return "", false
	}), nil
}

// Clone makes the volume name a reflink clone of g (libvirt's
// virStorageVolCreateXMLFrom with VIR_STORAGE_VOL_CREATE_REFLINK) of size
// bytes; it fails if the name exists.
func (b *Backend) Clone(ctx context.Context, g volume.Golden, name string, size int64) (volume.Volume, error) {
	if err := messaging.ValidateVolumeName(name); err != nil {
		return volume.Volume{}, err
	}
	if size < g.Size {
		return volume.Volume{}, fmt.Errorf("clone %s: %d bytes is less than the image's %d; a clone is never shrunk", b.describe(name), size, g.Size)
	}
	v, err := b.cloneAs(ctx, g, name, size)
	if err != nil {
		return v, err
	}
	return v, b.Refresh(ctx)
}

// cloneAs has libvirt clone g into the new volume name and resize it to
// size bytes (virsh vol-clone --reflink, then vol-resize), and checks the
// result; on failure nothing of it is left. The clone is made at the
// golden's size: a reflink of a last block the golden fills only in part
// can only end at the clone's end; growing the clone afterwards zeroes the
// rest of that block.
func (b *Backend) cloneAs(ctx context.Context, g volume.Golden, name string, size int64) (volume.Volume, error) {
	if err := b.checkClones(); err != nil {
		return volume.Volume{}, err
	}
	desc, err := b.rawXML(name, g.Size, 0)
	if err != nil {
		return volume.Volume{}, err
	}
	var v volume.Volume
	err = b.s.do(ctx, func(_ *golibvirt.Connect, pool *golibvirt.StoragePool) (err error) {
		src, err := b.goldenVolume(ctx, pool, g)
		if err != nil {
			return err
		}
		defer src.Free()
		existing, err := b.lookup(ctx, pool, name)
		if err != nil {
			return err
		}
		if existing != nil {
			_ = existing.Free()
			return fmt.Errorf("clone %s: it already exists", b.describe(name))
		}
		vol, err := pool.StorageVolCreateXMLFrom(desc, src, golibvirt.STORAGE_VOL_CREATE_REFLINK)
		if err != nil {
			return fmt.Errorf("clone %s from golden %s with reflink: %w", b.describe(name), g.Path, clean(err))
		}
		defer vol.Free()
		defer func() {
			if err != nil {
				_ = vol.Delete(0)
			}
		}()
		if size > g.Size {
			if err := vol.Resize(uint64(size), 0); err != nil {
				return fmt.Errorf("grow the clone %s to %d bytes: %w", b.describe(name), size, clean(err))
			}
		}
		if v, err = b.volume(name, vol); err != nil {
			return err
		}
		if v.Size != size {
			return fmt.Errorf("cloned %s with %d bytes; %d were asked for", b.describe(name), v.Size, size)
		}
		return syncFile(v.Path)
	})
	return v, err
}

// goldenVolume finds g's volume in the pool and checks that its file is
// still g's size.
func (b *Backend) goldenVolume(ctx context.Context, pool *golibvirt.StoragePool, g volume.Golden) (*golibvirt.StorageVol, error) {
	name := filepath.Base(g.Path)
	if filepath.Dir(g.Path) != filepath.Clean(b.s.poolPath) || name != goldenName(g.Key) {
		return nil, fmt.Errorf("golden %s is not a golden of libvirt storage pool %q", g.Path, b.s.poolName)
	}
	st, err := os.Lstat(g.Path)
	if err != nil {
		return nil, fmt.Errorf("golden %s: %w", g.Path, err)
	}
	if !st.Mode().IsRegular() || st.Size() != g.Size {
		return nil, fmt.Errorf("golden %s is not the %d-byte file it was sealed as", g.Path, g.Size)
	}
	vol, err := b.lookup(ctx, pool, name)
	if err != nil {
		return nil, err
	}
	if vol == nil {
		return nil, fmt.Errorf("golden %s is not a volume of libvirt storage pool %q", g.Path, b.s.poolName)
	}
	return vol, nil
}

// Reclone replaces the existing volume vol with a fresh clone of g of
// vol's size: made under a temporary name, given vol's mode and owner, and
// renamed over vol, so that the name always holds the old volume or the
// whole new one.
func (b *Backend) Reclone(ctx context.Context, g volume.Golden, vol volume.Volume) (volume.Volume, error) {
	if err := messaging.ValidateVolumeName(vol.Name); err != nil {
		return volume.Volume{}, err
	}
	old, err := b.regularFile(vol)
	if err != nil {
		return volume.Volume{}, err
	}
	size := old.Size()
	if size < g.Size {
		return volume.Volume{}, fmt.Errorf("reclone %s: its %d bytes are less than the image's %d", b.describe(vol.Name), size, g.Size)
	}
	tmp := "." + vol.Name + cloneInfix + randomSuffix()
	nv, err := b.cloneAs(ctx, g, tmp, size)
	if err != nil {
		return volume.Volume{}, fmt.Errorf("reclone %s: %w", b.describe(vol.Name), err)
	}
	_ = os.Chmod(nv.Path, old.Mode().Perm())
	if sys, ok := old.Sys().(*syscall.Stat_t); ok {
		_ = os.Chown(nv.Path, int(sys.Uid), int(sys.Gid)) // a volume handed to another user stays theirs
	}
	// The volume may have been replaced meanwhile: only a regular file is
	// renamed over.
	if _, err := b.regularFile(vol); err != nil {
		_ = b.removeFiles(context.WithoutCancel(ctx), tmp)
		return volume.Volume{}, fmt.Errorf("reclone %s: it changed while it was being cloned; left as it is", b.describe(vol.Name))
	}
	if err := os.Rename(nv.Path, vol.Path); err != nil {
		_ = b.removeFiles(context.WithoutCancel(ctx), tmp)
		return volume.Volume{}, fmt.Errorf("reclone %s: %w", b.describe(vol.Name), err)
	}
	if err := fsutil.SyncDir(b.s.poolPath); err != nil {
		return volume.Volume{}, err
	}
	if err := b.Refresh(ctx); err != nil {
		return volume.Volume{}, err
	}
	return volume.Volume{Name: vol.Name, Path: vol.Path, Size: size}, nil
}

// regularFile checks that vol is a regular file of the pool's directory,
// not a symlink, and returns its Lstat.
func (b *Backend) regularFile(vol volume.Volume) (os.FileInfo, error) {
	if filepath.Dir(vol.Path) != filepath.Clean(b.s.poolPath) || filepath.Base(vol.Path) != vol.Name {
		return nil, fmt.Errorf("%s: %s is not a file of the pool's directory %s", b.describe(vol.Name), vol.Path, b.s.poolPath)
	}
	st, err := os.Lstat(vol.Path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", b.describe(vol.Name), err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %s is not a regular file (%s); refusing to touch it", b.describe(vol.Name), vol.Path, st.Mode().Type())
	}
	return st, nil
}

// syncFile flushes the file at p.
func syncFile(p string) error {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flush %s: %w", p, err)
	}
	return nil
}

var _ volume.SpaceReporter = (*Backend)(nil)

// FreeSpace is the free space of the file system holding a file pool's
// directory; a logical pool's is not known in bytes here
// (volume.ErrFreeSpaceUnknown: libvirt and LVM check it themselves).
func (b *Backend) FreeSpace(context.Context) (int64, string, error) {
	where := fmt.Sprintf("libvirt storage pool %q (%s)", b.s.poolName, b.s.poolPath)
	if !fileLike[b.s.poolType] || b.s.poolPath == "" {
		return 0, where, volume.ErrFreeSpaceUnknown
	}
	free, err := volume.FreeBytes(b.s.poolPath)
	return free, where, err
}

// checkCreateSpace refuses to create a fully allocated volume of size
// bytes in a file pool whose file system has less free.
func (b *Backend) checkCreateSpace(ctx context.Context, name string, size int64) error {
	free, where, err := b.FreeSpace(ctx)
	if errors.Is(err, volume.ErrFreeSpaceUnknown) {
		return nil
	}
	if err != nil {
		return err
	}
	if size > free {
		return fmt.Errorf("create %s: %w: it is allocated whole (%d MiB), and %s has %d MiB free",
			b.describe(name), volume.ErrNoSpace, size>>20, where, free>>20)
	}
	return nil
}
