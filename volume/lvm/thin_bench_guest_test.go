//go:build lvmguest

package lvm

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

// TestLVMGuestBenchThin compares, on two images of ten times different
// data, a warm job by thin snapshot (the golden's check and the snapshot,
// extended to the volume's size), today's warm job on a thick LV (create it,
// then convert the cached image into it while its digest is checked, as
// the worker does) and qemu-img convert into a thick LV; and the new data a
// warm snapshot allocates in the pool. It runs with BENCH=1
// tests/lvmguest/run.sh and prints one BENCH line per image.
func TestLVMGuestBenchThin(t *testing.T) {
	if os.Getenv("LVMGUEST_BENCH") != "1" {
		t.Skip("the benchmark runs with BENCH=1 tests/lvmguest/run.sh")
	}
	shared := guestThin(t)
	dir := t.TempDir()
	for i, spec := range []struct {
		name    string
		virtual int64
	}{{"small", 96 << 20}, {"large", 960 << 20}} {
		raw := filepath.Join(dir, spec.name+".raw")
		require.NoError(t, testenv.RawImage(raw, spec.virtual, uint64(40+i)))
		qcow2 := filepath.Join(dir, spec.name+".qcow2")
		out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2).CombinedOutput()
		require.NoError(t, err, "%s", out)
		benchThinImage(t, shared, spec.name, qcow2, raw)
		require.NoError(t, os.Remove(raw))
		require.NoError(t, os.Remove(qcow2))
	}
}

// benchRuns is how many times each way runs; the median is reported.
const benchRuns = 3

func benchThinImage(t *testing.T, shared *Backend, name, qcow2, raw string) {
	ctx := t.Context()
	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	data := imageData(t, raw)
	// A pool of its own, a little larger than the image, so that its
	// data_percent (two decimals) resolves a small fraction of the image.
	poolSize := (img.VirtualSize*11/10 + 8<<20) &^ (4<<20 - 1)
	pool := "bench-" + name
	require.NoError(t, shared.change(ctx, lvmCommand("lvcreate", "--yes", "--type", "thin-pool", "--size", strconv.FormatInt(poolSize, 10)+"b", "--name", pool, shared.VG)...))
	defer func() { _, _ = shared.run(ctx, "lvremove", "--yes", shared.VG+"/"+pool) }()
	b := &Backend{VG: shared.VG, LVM: shared.LVM, Pool: pool, PoolMaxUsed: 1}
	require.NoError(t, b.CheckThinPool(ctx))
	const volSize = 1 << 30 // volume_size_gb 1

	// First the cold job as it meets a download (its golden removed
	// after), then the golden the warm jobs clone.
	alone, coldJob := benchThinCold(t, b, name, qcow2, volSize)
	st, err := os.Stat(qcow2)
	require.NoError(t, err)
	t.Logf("BENCH-COLD image=%s qcow2_bytes=%d download_alone_ms=%.0f download_mb_per_s=%.1f cold_thin_job_ms=%.0f cold_vs_download=%.3f",
		name, st.Size(), ms(alone), float64(st.Size())/alone.Seconds()/1e6, ms(coldJob), float64(coldJob)/float64(alone))
	key := fmt.Sprintf("%x", sha256.Sum256([]byte(qcow2)))
	coldStart := time.Now()
	g := thinGolden(t, b, key, qcow2)
	cold := time.Since(coldStart)
	rec, err := b.GoldenRecord(ctx, g)
	require.NoError(t, err)

	var clone, today, qemu, lvsOne []time.Duration
	var newData []float64
	for i := range benchRuns {
		start := time.Now()
		before, err := b.ThinPoolUsage(ctx) // one lvs: what an lvm command costs here
		require.NoError(t, err)
		lvsOne = append(lvsOne, time.Since(start))
		start = time.Now()
		same, err := b.GoldenUnchanged(ctx, rec)
		require.NoError(t, err)
		require.True(t, same)
		vol, err := b.Clone(ctx, g, fmt.Sprintf("bench-clone-%s-%d", name, i), volSize)
		require.NoError(t, err)
		clone = append(clone, time.Since(start))
		after, err := b.ThinPoolUsage(ctx)
		require.NoError(t, err)
		newData = append(newData, (after.DataUsed-before.DataUsed)*float64(after.DataBytes))
		if i == 0 {
			requireLVHolds(t, vol.Path, raw, img.VirtualSize)
		}

		thick := fmt.Sprintf("bench-thick-%s-%d", name, i)
		start = time.Now()
		tv, err := b.Create(ctx, thick, volSize)
		require.NoError(t, err)
		verified := make(chan error, 1)
		go func() { verified <- hashFile(qcow2) }()
		require.NoError(t, convert.Native{}.Convert(ctx, img, qcow2, tv, nil))
		require.NoError(t, <-verified)
		today = append(today, time.Since(start))

		qv := createLV(t, b, fmt.Sprintf("bench-qemu-%s-%d", name, i), volSize)
		start = time.Now()
		out, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-t", "none", "-n", qcow2, qv.Path).CombinedOutput()
		require.NoError(t, err, "%s", out)
		qemu = append(qemu, time.Since(start))
		for _, n := range []string{vol.Name, thick, qv.Name} {
			require.NoError(t, b.Delete(ctx, n))
		}
	}
	med := func(d []time.Duration) time.Duration { d = slices.Clone(d); slices.Sort(d); return d[len(d)/2] }
	slices.Sort(newData)
	t.Logf("BENCH image=%s virtual_bytes=%d data_bytes=%d golden_cold_ms=%.0f one_lvs_ms=%.1f warm_clone_ms=%.1f warm_today_ms=%.1f qemu_img_ms=%.1f clone_vs_today=%.4f clone_vs_qemu_img=%.4f new_pool_data_bytes_max=%.0f new_pool_data_share_max=%.5f pool_resolution_bytes=%.0f clone_runs_ms=%v today_runs_ms=%v",
		name, img.VirtualSize, data, ms(cold), ms(med(lvsOne)), ms(med(clone)), ms(med(today)), ms(med(qemu)),
		float64(med(clone))/float64(med(today)), float64(med(clone))/float64(med(qemu)),
		newData[len(newData)-1], newData[len(newData)-1]/float64(data), float64(poolSize)/1e4, msList(clone), msList(today))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func msList(ds []time.Duration) []int64 {
	out := make([]int64, len(ds))
	for i, d := range ds {
		out[i] = d.Milliseconds()
	}
	return out
}

// hashFile reads the file through SHA-256, as a warm job checks its cached image.
func hashFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(sha256.New(), f)
	return err
}
