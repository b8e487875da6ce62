package lvm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// With a thin pool (PROVISIONER_LVM_THINPOOL=vg/pool) the lvm backend keeps
// one golden thin LV per image in the pool and makes every volume a thin
// snapshot of it (lvcreate -s -kn), extended to the requested size. Its own
// LVs, besides the volumes:
//
//	.golden-<key>    a sealed golden: read-only (lvchange -p r)
//	.prepare-<key>   a golden being written
//	.clone-<r>       a snapshot about to replace a volume (tagged with the volume's name)
//	.old-<r>         the volume it replaces, while the two are swapped
//
// Volume names never start with a dot, so none of these is a volume.
const (
	lvGoldenPrefix  = ".golden-"
	lvPreparePrefix = ".prepare-"
	lvClonePrefix   = ".clone-"
	lvOldPrefix     = ".old-"
	lvVolumeTag     = "provisioner.volume="
)

// DefaultThinPoolMaxUsed is how full (data or metadata) a job may leave the
// thin pool unless Backend.PoolMaxUsed says otherwise.
const DefaultThinPoolMaxUsed = 0.95

// ErrThinPoolFull matches (errors.Is) the errors of a job refused before
// writing because the thin pool would be fuller than it may be.
var ErrThinPoolFull = errors.New("the thin pool has no room for this job")

// ParseThinPool splits a PROVISIONER_LVM_THINPOOL value, "vg/pool".
func ParseThinPool(s string) (vg, pool string, err error) {
	vg, pool, ok := strings.Cut(s, "/")
	if !ok || strings.Contains(pool, "/") {
		return "", "", fmt.Errorf("thin pool %q: want <volume group>/<thin pool LV>", s)
	}
	if err := validateVGName(vg); err != nil {
		return "", "", fmt.Errorf("thin pool %q: %w", s, err)
	}
	if err := validateVGName(pool); err != nil {
		return "", "", fmt.Errorf("thin pool %q: LV name: %w", s, err)
	}
	return vg, pool, nil
}

// thinFields are the columns read about thin pools and thin LVs.
const thinFields = lvFields + ",lv_uuid,pool_lv,lv_tags,data_percent,metadata_percent,lv_metadata_size"

// thinRow is one row of an lvs report with thinFields.
type thinRow struct {
	lvRow
	UUID        string `json:"lv_uuid"`
	Pool        string `json:"pool_lv"`
	Tags        string `json:"lv_tags"`
	DataPercent string `json:"data_percent"`
	MetaPercent string `json:"metadata_percent"`
	MetaSize    string `json:"lv_metadata_size"`
}

// thinLV is a parsed thinRow.
type thinLV struct {
	lvInfo
	UUID, Pool string
	Tags       []string
	// Attr is lv_attr: [0] 'V' thin volume, 't' thin pool; [1] 'r' read-only.
	Attr string
	// DataUsed and MetaUsed are data_percent and metadata_percent as ratios.
	DataUsed, MetaUsed float64
	MetaSize           int64
}

func (lv thinLV) thin() bool     { return len(lv.Attr) > 0 && lv.Attr[0] == 'V' }
func (lv thinLV) pool() bool     { return len(lv.Attr) > 0 && lv.Attr[0] == 't' }
func (lv thinLV) readOnly() bool { return len(lv.Attr) > 1 && lv.Attr[1] == 'r' }

// tag returns the value of the tag that starts with prefix.
func (lv thinLV) tag(prefix string) (string, bool) {
	for _, t := range lv.Tags {
		if v, ok := strings.CutPrefix(t, prefix); ok {
			return v, true
		}
	}
	return "", false
}

// parsePercent reads a percentage lvs reports ("12.34"; "" when it has none) as a ratio.
func parsePercent(field, s string) (float64, error) {
	if s == "" {
		return 0, nil
	}
	p, err := strconv.ParseFloat(s, 64)
	if err != nil || p < 0 {
		return 0, fmt.Errorf("%s %q is not a percentage", field, s)
	}
	return p / 100, nil
}

func (row thinRow) parse() (thinLV, error) {
	info, err := row.lvRow.parse()
	if err != nil {
		return thinLV{}, err
	}
	lv := thinLV{lvInfo: info, UUID: row.UUID, Pool: row.Pool, Attr: row.Attr}
	if row.Tags != "" {
		lv.Tags = strings.Split(row.Tags, ",")
	}
	if lv.DataUsed, err = parsePercent("data_percent", row.DataPercent); err == nil {
		lv.MetaUsed, err = parsePercent("metadata_percent", row.MetaPercent)
	}
	if err == nil && row.MetaSize != "" {
		lv.MetaSize, err = parseBytes("lv_metadata_size", row.MetaSize)
	}
	if err != nil {
		return thinLV{}, fmt.Errorf("lvs report for %s/%s: %w", row.VG, row.Name, err)
	}
	return lv, nil
}

// thinLVs lists the LVs of the VG (all when name is "", else that one).
func (b *Backend) thinLVs(ctx context.Context, name string) ([]thinLV, error) {
	args := lvmCommand("lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "--binary", "-o", thinFields)
	if name != "" {
		args = append(args, "-S", fmt.Sprintf("lv_name=%q", name))
	}
	out, err := b.run(ctx, append(args, b.VG)...)
	if err != nil {
		return nil, fmt.Errorf("list logical volumes of %s: %w", b.VG, err)
	}
	var rep struct {
		Report []struct {
			LV []thinRow `json:"lv"`
		} `json:"report"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return nil, fmt.Errorf("parse lvs report of %s: %w", b.VG, err)
	}
	var lvs []thinLV
	for _, r := range rep.Report {
		for _, row := range r.LV {
			lv, err := row.parse()
			if err != nil {
				return nil, err
			}
			if name == "" || lv.Name == name {
				lvs = append(lvs, lv)
			}
		}
	}
	return lvs, nil
}

// thinLV finds LV name; ok is false when there is none.
func (b *Backend) thinLV(ctx context.Context, name string) (thinLV, bool, error) {
	lvs, err := b.thinLVs(ctx, name)
	if err != nil || len(lvs) == 0 {
		return thinLV{}, false, err
	}
	return lvs[0], true, nil
}

// PoolName is the thin pool as vg/pool, or "" when there is none.
func (b *Backend) PoolName() string {
	if b.Pool == "" {
		return ""
	}
	return b.VG + "/" + b.Pool
}

// CheckThinPool asks LVM whether the backend's thin pool exists, is a thin
// pool and is active; a worker calls it at start. After it succeeded,
// volumes are thin snapshots of a golden per image (CloneSupport).
func (b *Backend) CheckThinPool(ctx context.Context) error {
	if b.Pool == "" {
		return errors.New("no thin pool is configured")
	}
	lv, ok, err := b.thinLV(ctx, b.Pool)
	switch {
	case err != nil:
		return fmt.Errorf("thin pool %s: %w", b.PoolName(), err)
	case !ok:
		return fmt.Errorf("thin pool %s does not exist (create it with 'lvcreate --type thin-pool -L <size> -n %s %s')", b.PoolName(), b.Pool, b.VG)
	case !lv.pool():
		return fmt.Errorf("%s is not a thin pool (lv_attr %s)", b.PoolName(), lv.Attr)
	case !lv.Active:
		return fmt.Errorf("thin pool %s is not active; activate it with 'lvchange -ay %s'", b.PoolName(), b.PoolName())
	}
	b.thinChecked = true
	return nil
}

// ThinPoolUsage is how full a thin pool is.
type ThinPoolUsage struct {
	// Pool is vg/pool.
	Pool string
	// DataBytes and MetadataBytes are the sizes of its data and metadata.
	DataBytes, MetadataBytes int64
	// DataUsed and MetadataUsed are the used shares, 0 to 1.
	DataUsed, MetadataUsed float64
}

// ThinPoolUsage reports how full the thin pool is.
func (b *Backend) ThinPoolUsage(ctx context.Context) (ThinPoolUsage, error) {
	lv, ok, err := b.thinLV(ctx, b.Pool)
	if err == nil && (!ok || !lv.pool()) {
		err = fmt.Errorf("%s is not a thin pool", b.PoolName())
	}
	if err != nil {
		return ThinPoolUsage{}, fmt.Errorf("thin pool usage: %w", err)
	}
	return ThinPoolUsage{Pool: b.PoolName(), DataBytes: lv.Size, MetadataBytes: lv.MetaSize, DataUsed: lv.DataUsed, MetadataUsed: lv.MetaUsed}, nil
}

func (b *Backend) maxUsed() float64 {
	if b.PoolMaxUsed > 0 && b.PoolMaxUsed <= 1 {
		return b.PoolMaxUsed
	}
	return DefaultThinPoolMaxUsed
}

// checkPoolRoom refuses, with ErrThinPoolFull, a job that needs up to need
// bytes of new data in the pool (what names them) when the pool would then
// be fuller than maxUsed, in data or in metadata.
func (b *Backend) checkPoolRoom(ctx context.Context, need int64, what string) error {
	u, err := b.ThinPoolUsage(ctx)
	if err != nil {
		return err
	}
	return b.roomFor(u, need, what)
}

// roomFor is checkPoolRoom with the pool's usage u.
func (b *Backend) roomFor(u ThinPoolUsage, need int64, what string) error {
	limit := b.maxUsed()
	used := int64(u.DataUsed * float64(u.DataBytes))
	fix := fmt.Sprintf("extend the pool (lvextend -L +<size> %s) or remove volumes or cached images", u.Pool)
	if u.MetadataUsed >= limit {
		return fmt.Errorf("%w: thin pool %s has used %.1f%% of its metadata, and may use %.0f%% (PROVISIONER_LVM_THINPOOL_MAX_USED); %s (lvextend --poolmetadatasize +<size> %s)",
			ErrThinPoolFull, u.Pool, 100*u.MetadataUsed, 100*limit, fix, u.Pool)
	}
	if float64(used+need) > limit*float64(u.DataBytes) {
		return fmt.Errorf("%w: thin pool %s holds %d of its %d bytes of data (%.1f%%); %s needs up to %d more, which would take it past the %.0f%% it may fill (PROVISIONER_LVM_THINPOOL_MAX_USED); %s",
			ErrThinPoolFull, u.Pool, used, u.DataBytes, 100*u.DataUsed, what, need, 100*limit, fix)
	}
	return nil
}

// CloneSupport says whether volumes are thin snapshots: a thin pool was
// configured and CheckThinPool found it.
func (b *Backend) CloneSupport() (bool, string) {
	switch {
	case b.Pool == "":
		return false, "no thin pool is configured (PROVISIONER_LVM_THINPOOL); volumes are thick LVs"
	case !b.thinChecked:
		return false, fmt.Sprintf("thin pool %s was not checked (CheckThinPool)", b.PoolName())
	}
	return true, ""
}

func (b *Backend) thinReady() error {
	if ok, reason := b.CloneSupport(); !ok {
		return fmt.Errorf("%w: %s", volume.ErrCloneUnsupported, reason)
	}
	return nil
}

// lvPath is where LV name's device is.
func (b *Backend) lvPath(name string) string { return "/dev/" + b.VG + "/" + name }

// removeLV removes LV name if it exists.
func (b *Backend) removeLV(ctx context.Context, name string) error {
	_, ok, err := b.lv(ctx, name)
	if err != nil || !ok {
		return err
	}
	if err := b.change(ctx, lvremoveArgs(b.VG, name)...); err != nil {
		return fmt.Errorf("lvremove %s/%s: %w", b.VG, name, err)
	}
	return nil
}

// randomSuffix names a temporary LV.
func randomSuffix() string {
	var r [6]byte
	_, _ = rand.Read(r[:])
	return hex.EncodeToString(r[:])
}

// ensureFlushed opens the device at path and flushes it.
func ensureFlushed(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// sortedKeys returns m's keys in order.
func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

var _ volume.GoldenInspector = (*Backend)(nil)

// GoldenRecord describes the sealed golden LV g for its cache entry: its
// LV's UUID identifies it, and the data it holds in the pool counts against
// the cache's cap.
func (b *Backend) GoldenRecord(ctx context.Context, g volume.Golden) (kvstate.Golden, error) {
	lv, ok, err := b.thinLV(ctx, lvGoldenPrefix+g.Key)
	if err == nil && !ok {
		err = errors.New("it does not exist")
	}
	if err != nil {
		return kvstate.Golden{}, fmt.Errorf("golden LV of %s: %w", g.Key, err)
	}
	return kvstate.Golden{Path: lv.Path, Size: lv.Size, AllocatedBytes: int64(lv.DataUsed * float64(lv.Size)),
		Digest: g.Digest, LVUUID: lv.UUID}, nil
}

// GoldenUnchanged reports whether rec's golden LV is still the one sealed:
// the same LV (UUID), read-only, of the same size, a thin LV of the pool.
// Its content is the scrub's to check.
func (b *Backend) GoldenUnchanged(ctx context.Context, rec kvstate.Golden) (bool, error) {
	name, ok := strings.CutPrefix(rec.Path, b.lvPath(""))
	if !ok || !strings.HasPrefix(name, lvGoldenPrefix) {
		return false, nil
	}
	lv, ok, err := b.thinLV(ctx, name)
	if err != nil || !ok {
		return false, err
	}
	return lv.UUID == rec.LVUUID && rec.LVUUID != "" && lv.readOnly() && lv.thin() && lv.Pool == b.Pool &&
		lv.Active && lv.Size == rec.Size, nil
}

// DigestGolden is GoldenDigest of the golden LV at path, read from its
// device: chunks of zeros (unmapped in the pool) are not hashed.
func (b *Backend) DigestGolden(ctx context.Context, path string) (string, error) {
	name, ok := strings.CutPrefix(path, b.lvPath(""))
	if !ok || !strings.HasPrefix(name, lvGoldenPrefix) {
		return "", fmt.Errorf("%s is not a golden LV of %s", path, b.VG)
	}
	lv, ok, err := b.thinLV(ctx, name)
	if err == nil && !ok {
		err = errors.New("it does not exist")
	}
	if err != nil {
		return "", fmt.Errorf("golden LV %s: %w", path, err)
	}
	return hashLV(ctx, lv)
}

// hashLV is GoldenDigest of LV lv's device.
func hashLV(ctx context.Context, lv thinLV) (string, error) {
	f, err := os.Open(lv.Path)
	if err != nil {
		return "", fmt.Errorf("open LV %s to hash it: %w", lv.Path, err)
	}
	defer f.Close()
	return volume.GoldenDigestFile(ctx, f, lv.Size)
}
