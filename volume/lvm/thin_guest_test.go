//go:build lvmguest

// Thin pool tests, in the guest VM of tests/lvmguest/run.sh: its init makes
// the thin pool LVMGUEST_THINPOOL (vg/pool, errors when full instead of
// queueing writes) in the test volume group. Each test uses keys and LV
// names of its own.

package lvm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/imagecache"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// guestThin is the backend on the guest's thin pool, or skips.
func guestThin(t *testing.T) *Backend {
	t.Helper()
	b := guestBackend(t)
	spec := os.Getenv("LVMGUEST_THINPOOL")
	if spec == "" {
		t.Skip("LVMGUEST_THINPOOL is not set")
	}
	vg, pool, err := ParseThinPool(spec)
	require.NoError(t, err)
	require.Equal(t, b.VG, vg)
	b.Pool = pool
	require.NoError(t, b.CheckThinPool(t.Context()))
	ok, reason := b.CloneSupport()
	require.True(t, ok, reason)
	return b
}

// thinImages is the guest's thin backend and the test images (the qcow2,
// and the raw disk it holds): how most thin tests begin.
func thinImages(t *testing.T) (b *Backend, qcow2, raw string) {
	t.Helper()
	b = guestThin(t)
	qcow2, raw = guestImages(t)
	return b, qcow2, raw
}

// thinKey is a cache key of the test's own.
func thinKey(t *testing.T) string {
	sum := sha256.Sum256([]byte(t.Name()))
	return hex.EncodeToString(sum[:])
}

// thinGolden makes key's golden LV from the qcow2 image, as the worker
// does, and removes it when the test ends.
func thinGolden(t *testing.T, b *Backend, key, qcow2 string) volume.Golden {
	t.Helper()
	ctx := t.Context()
	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	prep, err := b.PrepareGolden(ctx, key, img.VirtualSize)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.RemoveGolden(context.Background(), key) })
	require.True(t, prep.ReadsAsZeros)
	require.NoError(t, convert.Native{}.Convert(ctx, img, qcow2, prep, nil))
	g, err := b.SealGolden(ctx, key, prep)
	require.NoError(t, err)
	return g
}

// cloneLV clones g as name and removes it when the test ends.
func cloneLV(t *testing.T, b *Backend, g volume.Golden, name string, size int64) volume.Volume {
	t.Helper()
	vol, err := b.Clone(t.Context(), g, name, size)
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := b.Delete(context.Background(), name); err != nil {
			t.Errorf("clean up %s: %v", name, err)
		}
	})
	return vol
}

// lvData is how many bytes of pool data LV name maps.
func lvData(t *testing.T, b *Backend, name string) int64 {
	t.Helper()
	lv, ok, err := b.thinLV(t.Context(), name)
	require.NoError(t, err)
	require.True(t, ok, name)
	return int64(lv.DataUsed * float64(lv.Size))
}

// imageData is how many bytes of ref are not zero, counted in the pool's
// 64 KiB chunks.
func imageData(t *testing.T, ref string) int64 {
	t.Helper()
	raw, err := os.ReadFile(ref)
	require.NoError(t, err)
	var n int64
	for off := 0; off < len(raw); off += 64 << 10 {
		if !fsutil.AllZero(raw[off:min(off+64<<10, len(raw))]) {
			n += 64 << 10
		}
	}
	return n
}

// TestLVMGuestThinGoldenAndClones: a golden LV and clones of it, byte-exact
// and independent; then the golden is evicted while they live.
func TestLVMGuestThinGoldenAndClones(t *testing.T) {
	t.Parallel()
	b, qcow2, raw := thinImages(t)
	ctx := t.Context()
	key := thinKey(t)
	g := thinGolden(t, b, key, qcow2)

	lv, ok, err := b.thinLV(ctx, lvGoldenPrefix+key)
	require.NoError(t, err)
	require.True(t, ok)
	require.True(t, lv.readOnly(), "the golden is read-only: %s", lv.Attr)
	require.True(t, lv.thin())
	require.Equal(t, b.Pool, lv.Pool)
	require.Equal(t, b.lvPath(lvGoldenPrefix+key), g.Path)
	requireLVHolds(t, g.Path, raw, g.Size)
	// Only data was written: a zeroed thin LV would map all of it.
	data := imageData(t, raw)
	require.LessOrEqual(t, lvData(t, b, lvGoldenPrefix+key), data+64<<10, "the golden maps the image's data only (%d bytes of data, %d of disk)", data, g.Size)
	digest, err := b.DigestGolden(ctx, g.Path)
	require.NoError(t, err)
	require.Equal(t, g.Digest, digest)
	keys, err := b.GoldenKeys(ctx)
	require.NoError(t, err)
	require.Contains(t, keys, key)

	before, err := b.ThinPoolUsage(ctx)
	require.NoError(t, err)
	a := cloneLV(t, b, g, "lvt-clone-a", guestLVSize)
	c := cloneLV(t, b, g, "lvt-clone-b", guestLVSize)
	require.Equal(t, volume.Volume{Name: "lvt-clone-a", Path: b.lvPath("lvt-clone-a"), Size: guestLVSize}, a)
	requireLVHolds(t, a.Path, raw, a.Size)
	requireLVHolds(t, c.Path, raw, c.Size)
	after, err := b.ThinPoolUsage(ctx)
	require.NoError(t, err)
	// Other tests write into the pool meanwhile: the benchmark measures this alone.
	t.Logf("pool data before the clones %.4f, after %.4f (of %d bytes)", before.DataUsed, after.DataUsed, after.DataBytes)

	alv, ok, err := b.thinLV(ctx, "lvt-clone-a")
	require.NoError(t, err)
	require.True(t, ok)
	require.False(t, alv.readOnly())
	require.True(t, alv.Active, "thin snapshots are made without the activation-skip flag")
	require.NotEqual(t, byte('k'), alv.Attr[len(alv.Attr)-1], "no activation skip: %s", alv.Attr)
	got, ok, err := b.Lookup(ctx, "lvt-clone-a")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, a, got)

	// Writes into one clone change neither the other nor the golden.
	fillDevice(t, a.Path, 4<<20, 0xCD)
	gotA := readDevice(t, a.Path, 4<<20)
	require.Equal(t, bytes.Repeat([]byte{0xCD}, 4<<20), gotA)
	requireLVHolds(t, c.Path, raw, c.Size)
	requireLVHolds(t, g.Path, raw, g.Size)
	digest, err = b.DigestGolden(ctx, g.Path)
	require.NoError(t, err)
	require.Equal(t, g.Digest, digest, "the golden's content is as sealed")

	_, err = b.Clone(ctx, g, "lvt-clone-a", guestLVSize)
	require.ErrorContains(t, err, "already exists")
	_, err = b.Clone(ctx, g, "lvt-clone-small", g.Size-4<<20)
	require.ErrorContains(t, err, "a clone is never shrunk")

	// Evicted while clones live: they stay whole.
	require.NoError(t, b.RemoveGolden(ctx, key))
	_, ok, err = b.lv(ctx, lvGoldenPrefix+key)
	require.NoError(t, err)
	require.False(t, ok, "the golden LV is gone")
	keys, err = b.GoldenKeys(ctx)
	require.NoError(t, err)
	require.NotContains(t, keys, key)
	requireLVHolds(t, c.Path, raw, c.Size)
	_, err = b.Clone(ctx, g, "lvt-clone-c", guestLVSize)
	require.ErrorContains(t, err, "does not exist")
}

func TestLVMGuestThinReclone(t *testing.T) {
	t.Parallel()
	b, qcow2, raw := thinImages(t)
	ctx := t.Context()
	g := thinGolden(t, b, thinKey(t), qcow2)
	vol := cloneLV(t, b, g, "lvt-reclone", guestLVSize)
	fillDevice(t, vol.Path, vol.Size, 0xEF)

	ok, err := b.Reclonable(ctx, vol)
	require.NoError(t, err)
	require.True(t, ok, "a thin volume of the pool is replaced by a fresh snapshot")
	thick := createLV(t, b, "lvt-thick", guestLVSize)
	ok, err = b.Reclonable(ctx, thick)
	require.NoError(t, err)
	require.False(t, ok, "a thick LV is converted into")
	_, err = b.Reclone(ctx, g, thick)
	require.ErrorIs(t, err, volume.ErrCloneUnsupported)

	// In use: refused, and the volume is as it was.
	f, err := os.Open(vol.Path)
	require.NoError(t, err)
	_, err = b.Reclone(ctx, g, vol)
	var inUse *InUseError
	require.ErrorAs(t, err, &inUse)
	require.NoError(t, f.Close())
	require.Equal(t, bytes.Repeat([]byte{0xEF}, 1<<20), readDevice(t, vol.Path, 1<<20))

	got, err := b.Reclone(ctx, g, vol)
	require.NoError(t, err)
	require.Equal(t, vol, got)
	requireLVHolds(t, vol.Path, raw, vol.Size)
	for name := range vgLVs(t, b) {
		require.False(t, strings.HasPrefix(name, lvClonePrefix) || strings.HasPrefix(name, lvOldPrefix), "%s left behind", name)
	}
}

// TestLVMGuestThinReconcileSwap: a stop between the two renames of a
// reclone leaves the volume's name missing; ReconcileThin gives it the
// whole new snapshot. Not parallel: ReconcileThin looks at every LV.
func TestLVMGuestThinReconcileSwap(t *testing.T) {
	b, qcow2, raw := thinImages(t)
	ctx := t.Context()
	g := thinGolden(t, b, thinKey(t), qcow2)
	vol := cloneLV(t, b, g, "lvt-swap", guestLVSize)
	fillDevice(t, vol.Path, vol.Size, 0xEF)
	src, err := b.golden(ctx, g)
	require.NoError(t, err)
	// As Reclone does, stopped after its first rename.
	_, err = b.snapshot(ctx, src, lvClonePrefix+"0123456789ab", vol.Size, lvVolumeTag+vol.Name)
	require.NoError(t, err)
	require.NoError(t, b.change(ctx, lvmCommand("lvrename", b.VG, vol.Name, lvOldPrefix+"0123456789ab")...))
	// And a snapshot whose swap never started.
	_, err = b.snapshot(ctx, src, lvClonePrefix+"ba9876543210", vol.Size, lvVolumeTag+"lvt-other")
	require.NoError(t, err)

	sum, err := b.ReconcileThin(ctx)
	require.NoError(t, err)
	require.Equal(t, ThinReconcile{Completed: 1, Removed: 2}, sum)
	requireLVHolds(t, vol.Path, raw, vol.Size)
	for name := range vgLVs(t, b) {
		require.False(t, strings.HasPrefix(name, lvClonePrefix) || strings.HasPrefix(name, lvOldPrefix), "%s left behind", name)
	}
}

// TestLVMGuestThinCache: golden LVs in the cache's lifecycle: recorded on
// the entry (listed with its LV's UUID and data), found unchanged by the
// next job, verified, evicted by a scrub when its content changed (the
// next job makes it again), evicted with its image by the size cap, and
// removed with its image by a delete, while a clone of it stays whole.
func TestLVMGuestThinCache(t *testing.T) {
	t.Parallel()
	b, qcow2, raw := thinImages(t)
	ctx := t.Context()
	cache, index, host := newTestCache(t, imagecache.Options{})
	cache.SetGoldens(b)
	e := putCacheEntry(t, cache, index, host, qcow2)
	g := thinGolden(t, b, e.Key, qcow2)
	rec, err := cache.AttachGolden(ctx, g)
	require.NoError(t, err)
	require.NotEmpty(t, rec.LVUUID)
	require.Equal(t, g.Path, rec.Path)
	require.Positive(t, rec.AllocatedBytes)
	got, ok, err := cache.Golden(ctx, e.Key)
	require.NoError(t, err)
	require.True(t, ok, "an unchanged golden LV is found")
	require.Equal(t, g.Digest, got.Digest)
	require.NoError(t, cache.VerifyGolden(ctx, got))
	vol := cloneLV(t, b, got, "lvt-cache", guestLVSize)

	sum, err := cache.Scrub(ctx)
	require.NoError(t, err)
	require.Equal(t, imagecache.ScrubSummary{Images: 1, Goldens: 1}, sum)

	// Someone makes the golden writable, writes into it, and seals it again.
	name := lvGoldenPrefix + e.Key
	require.NoError(t, b.change(ctx, lvmCommand("lvchange", "--permission", "rw", b.VG+"/"+name)...))
	fillDevice(t, g.Path, 1<<20, 0x5A)
	require.NoError(t, b.change(ctx, lvmCommand("lvchange", "--permission", "r", b.VG+"/"+name)...))
	require.ErrorIs(t, cache.VerifyGolden(ctx, got), imagecache.ErrGoldenCorrupt, "a full verification finds it")
	g = thinGolden(t, b, e.Key, qcow2)
	_, err = cache.AttachGolden(ctx, g)
	require.NoError(t, err)
	require.NoError(t, b.change(ctx, lvmCommand("lvchange", "--permission", "rw", b.VG+"/"+name)...))
	fillDevice(t, g.Path, 1<<20, 0x5A)
	require.NoError(t, b.change(ctx, lvmCommand("lvchange", "--permission", "r", b.VG+"/"+name)...))
	sum, err = cache.Scrub(ctx)
	require.NoError(t, err)
	require.Equal(t, imagecache.ScrubSummary{Images: 1, Goldens: 1, GoldensEvicted: 1}, sum, "so does the scrub")
	_, ok, err = cache.Golden(ctx, e.Key)
	require.NoError(t, err)
	require.False(t, ok)
	_, ok, err = b.lv(ctx, name)
	require.NoError(t, err)
	require.False(t, ok, "the golden LV is gone")

	// Made again; then the image goes with it (by its key).
	g = thinGolden(t, b, e.Key, qcow2)
	_, err = cache.AttachGolden(ctx, g)
	require.NoError(t, err)
	entry, err := index.Get(ctx, host, e.Key)
	require.NoError(t, err)
	require.Equal(t, e.Size+entry.Golden.AllocatedBytes, entry.Bytes(), "its data counts against the cap")
	require.NoError(t, cache.Remove(ctx, e.Key))
	_, ok, err = b.lv(ctx, name)
	require.NoError(t, err)
	require.False(t, ok, "the golden LV went with its image")
	requireLVHolds(t, vol.Path, raw, vol.Size)
}

// putCacheEntry puts the image file into the cache directory and records
// it, as a download would.
func putCacheEntry(t *testing.T, c *imagecache.Cache, index kvstate.CacheIndex, host, image string) kvstate.CacheEntry {
	t.Helper()
	data, err := os.ReadFile(image)
	require.NoError(t, err)
	sum := sha256.Sum256(data)
	key := hex.EncodeToString(sum[:])
	path := filepath.Join(c.Dir(), "image-"+key[:16]+".qcow2")
	require.NoError(t, os.WriteFile(path, data, 0o644))
	now := time.Now().UTC()
	e := kvstate.CacheEntry{Key: key, KeyKind: kvstate.KeyKindSHA256, Path: path, Size: int64(len(data)), Checksum: key,
		SourceURL: "http://127.0.0.1:9/images/" + t.Name(), CreatedAt: now, LastUsed: now}
	require.NoError(t, index.Put(t.Context(), host, e))
	return e
}

// TestLVMGuestThinPoolFull: a job that would overfill the pool is refused
// before it writes, with a message naming the pool; a pool that fills
// anyway fails the golden's conversion, which leaves nothing behind. It
// uses a small pool of its own (errors when full).
func TestLVMGuestThinPoolFull(t *testing.T) {
	t.Parallel()
	shared, qcow2, _ := thinImages(t)
	ctx := t.Context()
	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	const pool = "lvt-smallpool"
	require.NoError(t, shared.change(ctx, lvmCommand("lvcreate", "--yes", "--type", "thin-pool", "--size", "32m", "--name", pool, shared.VG)...))
	t.Cleanup(func() { _, _ = shared.run(context.Background(), "lvremove", "--yes", shared.VG+"/"+pool) })
	require.NoError(t, shared.change(ctx, lvmCommand("lvchange", "--errorwhenfull", "y", shared.VG+"/"+pool)...))
	b := &Backend{VG: shared.VG, LVM: shared.LVM, Pool: pool, PoolMaxUsed: 0.5}
	require.NoError(t, b.CheckThinPool(ctx))
	key := thinKey(t)

	// 20 MiB of disk in a 32 MiB pool that may be half full: refused.
	_, err = b.PrepareGolden(ctx, key, img.VirtualSize)
	require.ErrorIs(t, err, ErrThinPoolFull)
	require.Regexp(t, `thin pool `+shared.VG+`/`+pool+` holds \d+ of its 33554432 bytes of data \(0\.0%\); the image's golden \(\d+ bytes of disk\) needs up to \d+ more, which would take it past the 50% it may fill \(PROVISIONER_LVM_THINPOOL_MAX_USED\); extend the pool`, err.Error())
	keys, err := b.GoldenKeys(ctx)
	require.NoError(t, err)
	require.NotContains(t, keys, key, "nothing was created")

	// Allowed, but something else fills the pool while the golden is written.
	b.PoolMaxUsed = 1
	prep, err := b.PrepareGolden(ctx, key, img.VirtualSize)
	require.NoError(t, err)
	require.NoError(t, b.change(ctx, lvmCommand("lvcreate", "--yes", "--type", "thin", "--thinpool", pool, "--virtualsize", "32m", "--name", "lvt-filler", b.VG)...))
	filler := b.lvPath("lvt-filler")
	fillUntilFull(t, filler)
	u, err := b.ThinPoolUsage(ctx)
	require.NoError(t, err)
	require.Equal(t, 1.0, u.DataUsed, "the pool is full")
	err = convert.Native{}.Convert(ctx, img, qcow2, prep, nil)
	require.Error(t, err, "writing into a full pool fails")
	t.Logf("conversion into the full pool: %v", err)
	require.NoError(t, b.RemoveGolden(ctx, key))
	keys, err = b.GoldenKeys(ctx)
	require.NoError(t, err)
	require.NotContains(t, keys, key, "nothing is left of the golden")
	b.PoolMaxUsed = 0.95
	_, err = b.Clone(ctx, volume.Golden{Key: key, Path: b.lvPath(lvGoldenPrefix + key), Size: prep.Size}, "lvt-full-clone", guestLVSize)
	require.ErrorIs(t, err, ErrThinPoolFull, "a full pool takes no snapshot either")
	require.NoError(t, b.Delete(ctx, "lvt-filler"))
}

// fillUntilFull writes non-zero data over the device until a write fails.
func fillUntilFull(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_SYNC, 0)
	require.NoError(t, err)
	defer f.Close()
	chunk := bytes.Repeat([]byte{0x77}, 1<<20)
	for off := int64(0); ; off += int64(len(chunk)) {
		if _, err := f.WriteAt(chunk, off); err != nil {
			t.Logf("filler: write at %d failed: %v", off, err)
			return
		}
		if off > 64<<20 {
			t.Fatal("the pool never filled")
		}
	}
}

// TestLVMGuestThinFallbackThick: without a thin pool, the backend makes no
// clones and its volumes are thick LVs as before.
func TestLVMGuestThinFallbackThick(t *testing.T) {
	t.Parallel()
	b := guestBackend(t)
	ok, reason := b.CloneSupport()
	require.False(t, ok)
	require.Contains(t, reason, "no thin pool is configured (PROVISIONER_LVM_THINPOOL)")
	_, err := b.PrepareGolden(t.Context(), thinKey(t), guestLVSize)
	require.ErrorIs(t, err, volume.ErrCloneUnsupported)
	vol := createLV(t, b, "lvt-thick-only", guestLVSize)
	lv, ok, err := b.thinLV(t.Context(), vol.Name)
	require.NoError(t, err)
	require.True(t, ok)
	require.False(t, lv.thin(), "a thick LV: %s", lv.Attr)
	require.Empty(t, lv.Pool)

	missing := &Backend{VG: b.VG, Pool: "lvt-no-such-pool"}
	err = missing.CheckThinPool(t.Context())
	require.ErrorContains(t, err, "thin pool "+b.VG+"/lvt-no-such-pool does not exist")
	require.False(t, errors.Is(err, ErrThinPoolFull))
}

// newTestCache is a cache in a directory of the test's own, indexed in the
// cache bucket of an in-process JetStream of its own.
func newTestCache(t *testing.T, opts imagecache.Options) (*imagecache.Cache, kvstate.CacheIndex, string) {
	t.Helper()
	ctx := t.Context()
	js := testenv.JetStream(t)
	require.NoError(t, messaging.Setup(ctx, js, messaging.NewSubjects(""), messaging.DefaultLimits()))
	b, err := messaging.BindBuckets(ctx, js)
	require.NoError(t, err)
	index, host := kvstate.CacheIndex{KV: b.Cache}, "host-"+strings.ToLower(t.Name())
	c, err := imagecache.NewWithOptions(filepath.Join(t.TempDir(), "cache"), host, index, opts)
	require.NoError(t, err)
	return c, index, host
}

// TestLVMGuestThinGoldenSealedWithDigest: a golden whose digest was
// computed while it was written (as the worker makes one, the converter
// feeding a volume.GoldenHasher) is sealed with that digest without being
// read back; it is the digest the LV's content has, and the golden is as
// sealed as one hashed by reading it.
func TestLVMGuestThinGoldenSealedWithDigest(t *testing.T) {
	t.Parallel()
	b, qcow2, raw := thinImages(t)
	ctx := t.Context()
	key := thinKey(t)
	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	prep, err := b.PrepareGolden(ctx, key, img.VirtualSize)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.RemoveGolden(context.Background(), key) })
	_, err = b.SealGoldenDigest(ctx, key, prep, "")
	require.ErrorContains(t, err, "no digest given")

	h := volume.NewGoldenHasher(prep.Size)
	require.NoError(t, convert.Native{}.WithDigest(h).Convert(ctx, img, qcow2, prep, nil))
	digest, err := h.Sum()
	require.NoError(t, err)
	g, err := b.SealGoldenDigest(ctx, key, prep, digest)
	require.NoError(t, err)
	require.Equal(t, digest, g.Digest)
	requireLVHolds(t, g.Path, raw, g.Size)
	read, err := b.DigestGolden(ctx, g.Path)
	require.NoError(t, err)
	require.Equal(t, read, g.Digest, "the digest of what was written is the digest of the LV")
	lv, ok, err := b.thinLV(ctx, lvGoldenPrefix+key)
	require.NoError(t, err)
	require.True(t, ok)
	require.True(t, lv.readOnly(), "sealed read-only: %s", lv.Attr)
}
