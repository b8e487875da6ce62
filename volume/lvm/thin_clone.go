package lvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// PrepareGolden creates a thin LV of size bytes (rounded up to whole
// extents) in the pool, named .prepare-<key>, after checking that the pool
// has room for all of it: the most data a golden can take. A new thin LV
// reads as zeros and the returned Volume says so, so the converter writes
// only the image's data into it.
func (b *Backend) PrepareGolden(ctx context.Context, key string, size int64) (volume.Volume, error) {
	if err := b.thinReady(); err != nil {
		return volume.Volume{}, err
	}
	if err := volume.ValidGoldenKey(key); err != nil {
		return volume.Volume{}, err
	}
	if size <= 0 {
		return volume.Volume{}, fmt.Errorf("golden of %s: size %d is not positive", key, size)
	}
	name := lvPreparePrefix + key
	lvs, u, err := b.scan(ctx)
	if err != nil {
		return volume.Volume{}, err
	}
	if err := b.roomFor(u, size, "the image's golden ("+strconv.FormatInt(size, 10)+" bytes of disk)"); err != nil {
		return volume.Volume{}, err
	}
	if _, ok := lvs[name]; ok { // left by an attempt that stopped
		if err := b.change(ctx, lvremoveArgs(b.VG, name)...); err != nil {
			return volume.Volume{}, fmt.Errorf("lvremove %s/%s: %w", b.VG, name, err)
		}
	}
	err = b.change(ctx, lvmCommand("lvcreate", "--yes", "--type", "thin", "--thinpool", b.Pool,
		"--virtualsize", strconv.FormatInt(size, 10)+"b", "--name", name, "--activate", "y", b.VG)...)
	if err != nil {
		return volume.Volume{}, fmt.Errorf("create golden LV %s/%s: %w", b.VG, name, err)
	}
	got, err := deviceBytes(b.lvPath(name))
	if err == nil && got < size {
		err = fmt.Errorf("lvcreate %s/%s made an LV of %d bytes, not one of %d", b.VG, name, got, size)
	}
	if err != nil {
		_ = b.removeLV(context.WithoutCancel(ctx), name)
		return volume.Volume{}, fmt.Errorf("create golden LV %s/%s: %w", b.VG, name, err)
	}
	return volume.Volume{Name: name, Path: b.lvPath(name), Size: got, ReadsAsZeros: true}, nil
}

// scan reads every LV of the VG in one lvs, and the pool's usage.
func (b *Backend) scan(ctx context.Context) (map[string]thinLV, ThinPoolUsage, error) {
	lvs, err := b.thinLVs(ctx, "")
	if err != nil {
		return nil, ThinPoolUsage{}, err
	}
	m := make(map[string]thinLV, len(lvs))
	for _, lv := range lvs {
		m[lv.Name] = lv
	}
	pool, ok := m[b.Pool]
	if !ok || !pool.pool() {
		return nil, ThinPoolUsage{}, fmt.Errorf("%s is not a thin pool", b.PoolName())
	}
	return m, ThinPoolUsage{Pool: b.PoolName(), DataBytes: pool.Size, MetadataBytes: pool.MetaSize, DataUsed: pool.DataUsed, MetadataUsed: pool.MetaUsed}, nil
}

// SealGolden flushes and hashes the prepared LV, makes it read-only
// (lvchange -p r) and renames it .golden-<key>, replacing an older golden
// of key.
func (b *Backend) SealGolden(ctx context.Context, key string, prepared volume.Volume) (volume.Golden, error) {
	return b.sealGolden(ctx, key, prepared, "")
}

// SealGoldenDigest is SealGolden with the golden's digest computed while
// it was written (volume.GoldenHasher): the golden is not read back.
func (b *Backend) SealGoldenDigest(ctx context.Context, key string, prepared volume.Volume, digest string) (volume.Golden, error) {
	if digest == "" {
		return volume.Golden{}, fmt.Errorf("seal golden of %s: no digest given", key)
	}
	return b.sealGolden(ctx, key, prepared, digest)
}

var _ volume.DigestSealer = (*Backend)(nil)

// sealGolden seals prepared; digest "" reads the golden back to hash it.
func (b *Backend) sealGolden(ctx context.Context, key string, prepared volume.Volume, digest string) (volume.Golden, error) {
	if err := b.thinReady(); err != nil {
		return volume.Golden{}, err
	}
	if err := volume.ValidGoldenKey(key); err != nil {
		return volume.Golden{}, err
	}
	name, final := lvPreparePrefix+key, lvGoldenPrefix+key
	if prepared.Name != name {
		return volume.Golden{}, fmt.Errorf("seal golden of %s: %s is not a golden being prepared", key, prepared.Name)
	}
	lvs, _, err := b.scan(ctx)
	lv, ok := lvs[name]
	if err == nil && (!ok || !lv.thin() || lv.Pool != b.Pool) {
		err = fmt.Errorf("%s/%s is not a thin LV of pool %s", b.VG, name, b.Pool)
	}
	if err != nil {
		return volume.Golden{}, fmt.Errorf("seal golden of %s: %w", key, err)
	}
	if err := ensureFlushed(lv.Path); err != nil {
		return volume.Golden{}, fmt.Errorf("flush golden of %s: %w", key, err)
	}
	if digest == "" {
		if digest, err = hashLV(ctx, lv); err != nil {
			return volume.Golden{}, fmt.Errorf("hash golden of %s: %w", key, err)
		}
	}
	if err := b.change(ctx, lvmCommand("lvchange", "--yes", "--permission", "r", b.VG+"/"+name)...); err != nil {
		return volume.Golden{}, fmt.Errorf("make golden of %s read-only: %w", key, err)
	}
	if _, ok := lvs[final]; ok {
		if err := b.change(ctx, lvremoveArgs(b.VG, final)...); err != nil {
			return volume.Golden{}, fmt.Errorf("remove the older golden of %s: %w", key, err)
		}
	}
	if err := b.change(ctx, lvmCommand("lvrename", b.VG, name, final)...); err != nil {
		return volume.Golden{}, fmt.Errorf("move golden of %s into place: %w", key, err)
	}
	return volume.Golden{Key: key, Path: b.lvPath(final), Size: lv.Size, Digest: digest}, nil
}

// RemoveGolden removes key's golden LV and one being prepared. Snapshots of
// it are whole thin LVs of their own and stay as they are.
func (b *Backend) RemoveGolden(ctx context.Context, key string) error {
	if err := b.thinReady(); err != nil {
		return err
	}
	if err := volume.ValidGoldenKey(key); err != nil {
		return err
	}
	lvs, _, err := b.scan(ctx)
	if err != nil {
		return fmt.Errorf("remove golden of %s: %w", key, err)
	}
	args := lvmCommand("lvremove", "--yes")
	for _, name := range []string{lvGoldenPrefix + key, lvPreparePrefix + key} {
		if _, ok := lvs[name]; ok {
			args = append(args, b.VG+"/"+name)
		}
	}
	if len(args) == 2 {
		return nil
	}
	if err := b.change(ctx, args...); err != nil {
		return fmt.Errorf("remove golden of %s: %w", key, err)
	}
	return nil
}

// GoldenKeys lists the keys that have a golden LV or one being prepared.
func (b *Backend) GoldenKeys(ctx context.Context) ([]string, error) {
	if err := b.thinReady(); err != nil {
		return nil, err
	}
	lvs, err := b.thinLVs(ctx, "")
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, lv := range lvs {
		key, ok := strings.CutPrefix(lv.Name, lvGoldenPrefix)
		if !ok {
			key, ok = strings.CutPrefix(lv.Name, lvPreparePrefix)
		}
		if ok && volume.ValidGoldenKey(key) == nil {
			seen[key] = true
		}
	}
	return sortedKeys(seen), nil
}

// golden finds g's LV: a read-only thin LV of the pool of g.Size.
func (b *Backend) golden(ctx context.Context, g volume.Golden) (thinLV, error) {
	lv, ok, err := b.thinLV(ctx, lvGoldenPrefix+g.Key)
	if err != nil {
		return thinLV{}, err
	}
	if !ok {
		return b.checkGolden(g, nil)
	}
	return b.checkGolden(g, &lv)
}

// checkGolden checks that lv (nil: none) is g's golden LV as sealed.
func (b *Backend) checkGolden(g volume.Golden, found *thinLV) (thinLV, error) {
	name := lvGoldenPrefix + g.Key
	if volume.ValidGoldenKey(g.Key) != nil || g.Path != b.lvPath(name) {
		return thinLV{}, fmt.Errorf("%s is not the golden LV of %s in %s", g.Path, g.Key, b.VG)
	}
	if found == nil {
		return thinLV{}, fmt.Errorf("golden LV %s/%s does not exist", b.VG, name)
	}
	lv := *found
	switch {
	case !lv.thin() || lv.Pool != b.Pool || !lv.readOnly() || !lv.Active:
		return thinLV{}, fmt.Errorf("golden LV %s/%s is not a read-only thin LV of pool %s (lv_attr %s)", b.VG, name, b.Pool, lv.Attr)
	case lv.Size != g.Size:
		return thinLV{}, fmt.Errorf("golden LV %s/%s is %d bytes, not the %d it was sealed with", b.VG, name, lv.Size, g.Size)
	}
	return lv, nil
}

// snapshot makes LV name a thin snapshot of the golden LV src, writable,
// without the activation-skip flag thin snapshots otherwise carry, active,
// and extended to size; tags are added to it. A snapshot it made but could
// not finish is removed.
func (b *Backend) snapshot(ctx context.Context, src thinLV, name string, size int64, tags ...string) (thinLV, error) {
	args := lvmCommand("lvcreate", "--yes", "--snapshot", "--setactivationskip", "n", "--activate", "y",
		"--permission", "rw", "--name", name)
	for _, t := range tags {
		args = append(args, "--addtag", t)
	}
	if err := b.change(ctx, append(args, b.VG+"/"+src.Name)...); err != nil {
		return thinLV{}, fmt.Errorf("snapshot %s/%s as %s: %w", b.VG, src.Name, name, err)
	}
	bg := context.WithoutCancel(ctx)
	var err error
	if size > src.Size {
		err = b.change(bg, lvmCommand("lvextend", "--yes", "--size", strconv.FormatInt(size, 10)+"b", b.VG+"/"+name)...)
	}
	// lvcreate and lvextend said what they made; the device says the rest.
	lv := thinLV{lvInfo: lvInfo{Name: name, VG: b.VG, Path: b.lvPath(name), Size: size, Active: true}, Pool: b.Pool}
	if err == nil {
		if got, serr := deviceBytes(lv.Path); serr != nil || got != size {
			err = fmt.Errorf("snapshot %s/%s: its device is %d bytes, not %d (%v)", b.VG, name, got, size, serr)
		}
	}
	if err != nil {
		if rerr := b.removeLV(bg, name); rerr != nil {
			err = fmt.Errorf("%w (and removing it failed: %v)", err, rerr)
		}
		return thinLV{}, err
	}
	return lv, nil
}

// Clone makes volume name a thin snapshot of g's golden LV, extended to
// size. It allocates no data in the pool; it is refused when the pool is
// already fuller than it may be.
func (b *Backend) Clone(ctx context.Context, g volume.Golden, name string, size int64) (volume.Volume, error) {
	if err := b.checkName(name); err != nil {
		return volume.Volume{}, err
	}
	if err := b.thinReady(); err != nil {
		return volume.Volume{}, err
	}
	if size < g.Size {
		return volume.Volume{}, fmt.Errorf("clone volume %s/%s: %d bytes is less than the golden's %d; a clone is never shrunk", b.VG, name, size, g.Size)
	}
	// One report of the VG answers every check: a warm job's cost is a few
	// LVM commands, so each one saved counts.
	src, err := b.cloneSource(ctx, g, name)
	if err != nil {
		return volume.Volume{}, fmt.Errorf("clone volume %s/%s: %w", b.VG, name, err)
	}
	lv, err := b.snapshot(ctx, src, name, size)
	if err != nil {
		return volume.Volume{}, fmt.Errorf("clone volume %s/%s: %w", b.VG, name, err)
	}
	return volume.Volume{Name: name, Path: lv.Path, Size: lv.Size}, nil
}

// cloneSource reads the VG once and checks that name is free, that the
// pool has room and that g's golden LV is as sealed; it returns the golden.
func (b *Backend) cloneSource(ctx context.Context, g volume.Golden, name string) (thinLV, error) {
	lvs, u, err := b.scan(ctx)
	if err != nil {
		return thinLV{}, err
	}
	if _, ok := lvs[name]; ok {
		return thinLV{}, errors.New("it already exists")
	}
	if err := b.roomFor(u, 0, "a snapshot"); err != nil {
		return thinLV{}, err
	}
	if src, ok := lvs[lvGoldenPrefix+g.Key]; ok {
		return b.checkGolden(g, &src)
	}
	return b.checkGolden(g, nil)
}

// Reclonable reports whether the existing volume vol is replaced by a fresh
// snapshot when it is provisioned again: a thin LV of the pool is; a thick
// LV is converted into, as without a thin pool.
func (b *Backend) Reclonable(ctx context.Context, vol volume.Volume) (bool, error) {
	if err := b.checkName(vol.Name); err != nil {
		return false, err
	}
	if b.thinReady() != nil {
		return false, nil
	}
	lv, ok, err := b.thinLV(ctx, vol.Name)
	if err != nil || !ok {
		return false, err
	}
	return lv.thin() && lv.Pool == b.Pool, nil
}

// Reclone replaces the thin volume vol by a fresh snapshot of g of vol's
// size: the snapshot is made whole as .clone-<r> first, then the old
// volume is renamed .old-<r>, the snapshot takes its name, and the old one
// is removed. LVM has no atomic exchange: between the two renames (one
// metadata commit) the name is absent, never half-written, and
// ReconcileThin finishes a swap a crash interrupted there. An open volume
// is refused.
func (b *Backend) Reclone(ctx context.Context, g volume.Golden, vol volume.Volume) (volume.Volume, error) {
	if err := b.checkName(vol.Name); err != nil {
		return volume.Volume{}, err
	}
	if err := b.thinReady(); err != nil {
		return volume.Volume{}, err
	}
	lvs, u, err := b.scan(ctx)
	if err != nil {
		return volume.Volume{}, err
	}
	cur, err := b.recloneTarget(lvs, vol.Name, g.Size)
	if err != nil {
		return volume.Volume{}, err
	}
	if err := b.roomFor(u, 0, "a snapshot"); err != nil {
		return volume.Volume{}, err
	}
	var src thinLV
	if found, ok := lvs[lvGoldenPrefix+g.Key]; ok {
		src, err = b.checkGolden(g, &found)
	} else {
		src, err = b.checkGolden(g, nil)
	}
	if err != nil {
		return volume.Volume{}, fmt.Errorf("reclone volume %s/%s: %w", b.VG, vol.Name, err)
	}
	r := randomSuffix()
	tmp, old := lvClonePrefix+r, lvOldPrefix+r
	lv, err := b.snapshot(ctx, src, tmp, cur.Size, lvVolumeTag+vol.Name)
	if err != nil {
		return volume.Volume{}, fmt.Errorf("reclone volume %s/%s: %w", b.VG, vol.Name, err)
	}
	if err := b.swap(ctx, vol.Name, tmp, old); err != nil {
		return volume.Volume{}, err
	}
	return volume.Volume{Name: vol.Name, Path: b.lvPath(vol.Name), Size: lv.Size}, nil
}

// recloneTarget checks that LV name (of lvs) is a thin LV of the pool, not open,
// and at least size bytes.
func (b *Backend) recloneTarget(lvs map[string]thinLV, name string, size int64) (thinLV, error) {
	cur, ok := lvs[name]
	switch {
	case !ok:
		return thinLV{}, fmt.Errorf("reclone volume %s/%s: it does not exist", b.VG, name)
	case !cur.thin() || cur.Pool != b.Pool:
		return thinLV{}, fmt.Errorf("reclone volume %s/%s: %w: it is not a thin LV of pool %s", b.VG, name, volume.ErrCloneUnsupported, b.Pool)
	case cur.Open:
		return thinLV{}, &InUseError{VG: b.VG, LV: name, Action: "overwrite"}
	case cur.Size < size:
		return thinLV{}, fmt.Errorf("reclone volume %s/%s: its %d bytes are less than the golden's %d", b.VG, name, cur.Size, size)
	}
	return cur, nil
}

// swap gives the whole snapshot tmp the name of volume name, whose old LV
// goes (as old, then removed). Once started it is not stopped by ctx.
func (b *Backend) swap(ctx context.Context, name, tmp, old string) error {
	bg := context.WithoutCancel(ctx)
	if cur, ok, err := b.lv(bg, name); err != nil || !ok || cur.Open {
		_ = b.removeLV(bg, tmp)
		if err == nil && cur.Open {
			err = &InUseError{VG: b.VG, LV: name, Action: "overwrite"}
		} else if err == nil {
			err = fmt.Errorf("reclone volume %s/%s: it went while its snapshot was made", b.VG, name)
		}
		return err
	}
	if err := b.change(bg, lvmCommand("lvrename", b.VG, name, old)...); err != nil {
		_ = b.removeLV(bg, tmp)
		return fmt.Errorf("reclone volume %s/%s: move the old volume aside: %w", b.VG, name, err)
	}
	if err := b.change(bg, lvmCommand("lvrename", b.VG, tmp, name)...); err != nil {
		if rerr := b.change(bg, lvmCommand("lvrename", b.VG, old, name)...); rerr != nil {
			return fmt.Errorf("reclone volume %s/%s: rename the snapshot: %w (and putting the old volume back failed: %v; ReconcileThin finishes the swap)", b.VG, name, err, rerr)
		}
		_ = b.removeLV(bg, tmp)
		return fmt.Errorf("reclone volume %s/%s: rename the snapshot: %w; the old volume is back", b.VG, name, err)
	}
	// The swap is done; an old LV that cannot go now is ReconcileThin's.
	_ = b.change(bg, lvremoveArgs(b.VG, old)...)
	return nil
}

// deviceBytes is the size of the block device at path.
func deviceBytes(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Seek(0, io.SeekEnd)
}

// ThinReconcile says what ReconcileThin did.
type ThinReconcile struct {
	// Completed counts swaps of a fresh snapshot into a volume's name
	// that a stop had interrupted.
	Completed int
	// Removed counts snapshots and old volumes left by interrupted swaps.
	Removed int
}

// ReconcileThin, at start (no job running), finishes or undoes what an
// interrupted Reclone left: a .clone-<r> whose volume's name is missing
// while .old-<r> holds the old volume takes the name; other .clone-<r> and
// .old-<r> LVs are removed.
func (b *Backend) ReconcileThin(ctx context.Context) (ThinReconcile, error) {
	var sum ThinReconcile
	if err := b.thinReady(); err != nil {
		return sum, err
	}
	lvs, err := b.thinLVs(ctx, "")
	if err != nil {
		return sum, err
	}
	names := map[string]bool{}
	for _, lv := range lvs {
		names[lv.Name] = true
	}
	for _, lv := range lvs {
		r, ok := strings.CutPrefix(lv.Name, lvClonePrefix)
		if !ok {
			continue
		}
		vol, tagged := lv.tag(lvVolumeTag)
		if tagged && b.checkName(vol) == nil && !names[vol] && names[lvOldPrefix+r] {
			if err := b.change(ctx, lvmCommand("lvrename", b.VG, lv.Name, vol)...); err != nil {
				return sum, fmt.Errorf("finish replacing volume %s/%s: %w", b.VG, vol, err)
			}
			names[vol], sum.Completed = true, sum.Completed+1
			continue
		}
		if err := b.removeLV(ctx, lv.Name); err != nil {
			return sum, err
		}
		sum.Removed++
	}
	for _, lv := range lvs {
		if strings.HasPrefix(lv.Name, lvOldPrefix) {
			if err := b.removeLV(ctx, lv.Name); err != nil {
				return sum, err
			}
			sum.Removed++
		}
	}
	return sum, nil
}
