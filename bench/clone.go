package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The clone benchmark (-clones): on an XFS file system made with
// reflink=1 on a loop device, for each image, in the same run:
//
//	qemu-img convert -t none -T none of the cached qcow2 into a raw file (the baseline)
//	today's warm job: the worker converts the cached image into the volume (PROVISIONER_CLONES=off)
//	the warm job by clone: the worker clones the image's golden (PROVISIONER_CLONES=auto)
//	the clone step alone: FICLONE of the golden, grow, fsync
//
// and the file system's free space before and after each (after sync):
// the new data one more volume costs.

const cloneBegin, cloneEnd = "<!-- bench-clones:begin -->", "<!-- bench-clones:end -->"

// cloneWorker is a worker started for the clone benchmark.
type cloneWorker struct {
	host string
	cmd  *exec.Cmd
	done chan struct{}
}

func (b *bench) runClones(ctx context.Context) error {
	o := b.opt
	for _, t := range []string{"qemu-img", "mkfs.xfs", "losetup", "minio", "mount"} {
		if _, err := lookPath(t); err != nil {
			return fmt.Errorf("%s is not on PATH (scripts/install-deps.sh installs it)", t)
		}
	}
	for _, name := range o.images {
		img, err := buildImage(ctx, o.dir, name)
		if err != nil {
			return fmt.Errorf("image %s: %w", name, err)
		}
		b.images = append(b.images, img)
	}
	// -nets shaped reads the images over the 1 Gbit/s link instead.
	start := b.startLoopbackMinIO
	if len(o.nets) == 1 && o.nets[0] == "shaped" {
		start = b.startShapedMinIO
	}
	s, err := start(ctx)
	if err != nil {
		return err
	}
	b.stores = []*store{s}
	for _, img := range b.images {
		if err := s.upload(ctx, img); err != nil {
			return err
		}
	}
	if err := b.startAPI(ctx); err != nil {
		return err
	}
	var fsBytes int64 = 4 << 30
	for _, img := range b.images {
		fsBytes += 4 * img.virtual
	}
	mnt, err := b.mountXFS(ctx, fsBytes)
	if err != nil {
		return err
	}
	b.res = newResults()
	for _, img := range b.images {
		if err := b.qemuImgSteps(ctx, mnt, img); err != nil {
			return err
		}
	}
	for _, mode := range []string{"off", "auto"} {
		w, err := b.startCloneWorker(ctx, s, mode, mnt)
		if err != nil {
			return err
		}
		for _, img := range b.images {
			if err := b.cloneJobs(ctx, s, w, mnt, img); err != nil {
				w.stop()
				return err
			}
		}
		w.stop()
	}
	out := b.cloneReport()
	fmt.Println(out)
	if o.write != "" {
		if err := writeBetween(o.write, cloneBegin, cloneEnd, out); err != nil {
			return err
		}
		logf("wrote the table into %s", o.write)
	}
	return nil
}

// mountXFS makes an XFS file system with reflinks of size bytes in a
// sparse file of the run directory and mounts it.
func (b *bench) mountXFS(ctx context.Context, size int64) (string, error) {
	backing := filepath.Join(b.runDir, "xfs.img")
	f, err := os.Create(backing)
	if err != nil {
		return "", err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return "", err
	}
	f.Close()
	out, err := exec.CommandContext(ctx, "losetup", "--find", "--show", backing).Output()
	if err != nil {
		return "", fmt.Errorf("losetup %s: %w", backing, err)
	}
	dev := strings.TrimSpace(string(out))
	b.onCleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	if err := run(ctx, "mkfs.xfs", "-q", "-f", "-m", "reflink=1", dev); err != nil {
		return "", err
	}
	mnt := filepath.Join(b.runDir, "xfs")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return "", err
	}
	if err := run(ctx, "mount", dev, mnt); err != nil {
		return "", err
	}
	b.onCleanup(func() { _ = exec.Command("umount", mnt).Run() })
	logf("XFS (reflink=1) of %d GiB on %s at %s", size>>30, dev, mnt)
	return mnt, nil
}

// usedBytes is the space used in the file system of dir, after a sync
// and a pause for XFS to free the blocks of files removed just before (it
// does that in the background).
func usedBytes(dir string) float64 {
	unix.Sync()
	time.Sleep(200 * time.Millisecond)
	unix.Sync()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0
	}
	return float64((st.Blocks - st.Bfree) * uint64(st.Bsize))
}

// qemuImgSteps times the baseline: qemu-img convert of the image into a new
// raw file on the XFS file system.
func (b *bench) qemuImgSteps(ctx context.Context, mnt string, img *image) error {
	for r := 0; r < b.opt.runs; r++ {
		dst := filepath.Join(mnt, "qemu-img.raw")
		evict(img.path)
		used := usedBytes(mnt)
		d, err := timed(func() error {
			return run(ctx, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-t", "none", "-T", "none", img.path, dst)
		})
		if err != nil {
			return err
		}
		b.res.add(key(img.name, "qemu_img", "wall"), d)
		b.res.add(key(img.name, "qemu_img", "space"), usedBytes(mnt)-used)
		os.Remove(dst)
	}
	return nil
}

// startCloneWorker starts a worker whose volumes are on the XFS file
// system, with PROVISIONER_CLONES=mode, as host clones-<mode>.
func (b *bench) startCloneWorker(ctx context.Context, s *store, mode, mnt string) (*cloneWorker, error) {
	addr, err := freeAddr("127.0.0.1")
	if err != nil {
		return nil, err
	}
	host := "clones-" + mode
	logPath := filepath.Join(b.runDir, "worker-"+host+".log")
	cmd := exec.Command("bin/worker")
	cmd.Env = append(os.Environ(), "PROVISIONER_HTTP_ADDR="+addr, "PROVISIONER_HOST="+host, "PROVISIONER_NATS_URL="+b.natsURL,
		"PROVISIONER_NATS_NKEY="+filepath.Join(b.dataDir, "credentials", "worker.nk"),
		"PROVISIONER_CACHE_DIR="+filepath.Join(b.runDir, "cache-"+host), "PROVISIONER_VOLUME_BACKEND=file",
		"PROVISIONER_VOLUME_DIR="+filepath.Join(mnt, host), "PROVISIONER_CLONES="+mode,
		"MINIO_ENDPOINT="+s.endpoint, "MINIO_ACCESS_KEY="+accessKey, "MINIO_SECRET_KEY="+secretKey,
		"PROVISIONER_LOG_LEVEL=info")
	done, err := b.startDone(cmd, logPath)
	if err != nil {
		return nil, err
	}
	w := &cloneWorker{host: host, cmd: cmd, done: done}
	if err := waitHTTP(ctx, "http://"+addr+"/livez", 60*time.Second); err != nil {
		w.stop()
		return nil, fmt.Errorf("worker: %w (log %s)", err, logPath)
	}
	for i := 0; i < 300; i++ {
		if bytes.Contains(readFrom(logPath, 0), []byte(`"worker started"`)) {
			clones := bytes.Contains(readFrom(logPath, 0), []byte("volumes are reflink clones"))
			if clones != (mode == "auto") {
				w.stop()
				return nil, fmt.Errorf("worker %s: clones=%v with PROVISIONER_CLONES=%s (log %s)", host, clones, mode, logPath)
			}
			logf("worker %s (pid %d)", host, cmd.Process.Pid)
			return w, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	w.stop()
	return nil, fmt.Errorf("worker %s did not log \"worker started\" (log %s)", host, logPath)
}

func (w *cloneWorker) stop() { stopProcess(w.cmd, w.done) }

// provision runs one job of img on w's host and returns its time from POST
// to finish and its record.
func (b *bench) provision(ctx context.Context, s *store, w *cloneWorker, img *image, vol string) (float64, record, error) {
	var rec record
	t0 := time.Now()
	d, err := timed(func() error {
		id, _, err := b.post("/api/v1/jobs", map[string]any{"image_url": s.url(img), "volume_name": vol,
			"volume_size_gb": img.volumeGB(), "hypervisor": w.host})
		if err != nil {
			return err
		}
		rec, err = b.wait(ctx, id, 5*time.Millisecond)
		return err
	})
	return finishedAfter(rec, t0, d), rec, err
}

// cloneJobs runs a cold job (which, with clones, makes the golden), then
// warm jobs, each into a new volume, recording time and new space; with
// clones it also times the clone step alone.
func (b *bench) cloneJobs(ctx context.Context, s *store, w *cloneWorker, mnt string, img *image) error {
	mode := strings.TrimPrefix(w.host, "clones-")
	volDir := filepath.Join(mnt, w.host)
	k := func(n string) string { return key(img.name, "job_"+mode, n) }
	used := usedBytes(mnt)
	d, rec, err := b.provision(ctx, s, w, img, fmt.Sprintf("cold-%s", img.name))
	if err != nil {
		return err
	}
	b.res.add(k("cold"), d)
	b.res.add(k("cold_space"), usedBytes(mnt)-used)
	os.Remove(rec.VolumePath)
	for r := 0; r < b.opt.runs; r++ {
		evictDir(filepath.Join(b.runDir, "cache-"+w.host))
		used := usedBytes(mnt)
		d, rec, err := b.provision(ctx, s, w, img, fmt.Sprintf("warm-%s-%d", img.name, r))
		if err != nil {
			return err
		}
		if rec.CacheHit == nil || !*rec.CacheHit {
			return fmt.Errorf("warm job %s was not a cache hit", rec.JobID)
		}
		b.res.add(k("wall"), d)
		b.res.add(k("space"), usedBytes(mnt)-used)
		logf("%s · warm job, clones %s · %.3f s", img.name, mode, d)
	}
	if mode == "auto" {
		if err := b.cloneStep(mnt, volDir, img); err != nil {
			return err
		}
	}
	for r := 0; r < b.opt.runs; r++ {
		os.Remove(filepath.Join(volDir, fmt.Sprintf("warm-%s-%d", img.name, r)))
	}
	// The next image's golden should not count against this one's space.
	return b.uncacheOn(w.host, img)
}

// cloneStep times FICLONE of the image's golden into a new file, its
// growth to the volume's size and its fsync.
func (b *bench) cloneStep(mnt, volDir string, img *image) error {
	golden := filepath.Join(volDir, ".golden", img.sha+".raw")
	for r := 0; r < b.opt.runs; r++ {
		dst := filepath.Join(volDir, "clone-step")
		d, err := timed(func() error {
			src, err := os.Open(golden)
			if err != nil {
				return err
			}
			defer src.Close()
			f, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := unix.IoctlFileClone(int(f.Fd()), int(src.Fd())); err != nil {
				return fmt.Errorf("FICLONE %s: %w", golden, err)
			}
			if err := f.Truncate(img.volumeGB() << 30); err != nil {
				return err
			}
			return f.Sync()
		})
		if err != nil {
			return err
		}
		b.res.add(key(img.name, "clone_step", "wall"), d)
		os.Remove(dst)
	}
	return nil
}

func (b *bench) uncacheOn(host string, img *image) error {
	req, _ := http.NewRequest(http.MethodDelete, b.apiURL+"/api/v1/cache/images/"+img.sha+"?hypervisor="+host, nil)
	resp, err := b.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 && resp.StatusCode != 404 {
		var body json.RawMessage
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return fmt.Errorf("DELETE cached %s on %s: %s %s", img.name, host, resp.Status, body)
	}
	return nil
}

func (b *bench) cloneReport() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "Machine: %s. Command: `%s`. MinIO: %s. Medians of %d runs; ratios are against `qemu-img convert` of the same image in the same run.\n\n",
		b.machine.oneLine(), commandLine(), b.stores[0].label, b.opt.runs)
	sb.WriteString("| image | step | time | × qemu-img convert | new space per volume |\n|---|---|---|---|---|\n")
	for _, img := range b.images {
		base := median(b.res.get(key(img.name, "qemu_img", "wall")))
		row := func(step, k, spaceKey string) {
			t := median(b.res.get(k))
			space := "–"
			if spaceKey != "" {
				space = fmtSpace(median(b.res.get(spaceKey)))
			}
			fmt.Fprintf(&sb, "| %s | %s | %s | %.3f× | %s |\n", img.describe(), step, fmtS(t), t/base, space)
		}
		row("`qemu-img convert -t none -T none` (baseline)", key(img.name, "qemu_img", "wall"), key(img.name, "qemu_img", "space"))
		row("cold job, converting (clones off)", key(img.name, "job_off", "cold"), key(img.name, "job_off", "cold_space"))
		row("cold job, making the golden, then cloning", key(img.name, "job_auto", "cold"), key(img.name, "job_auto", "cold_space"))
		row("warm job, converting from the cache (clones off: today)", key(img.name, "job_off", "wall"), key(img.name, "job_off", "space"))
		row("warm job by clone", key(img.name, "job_auto", "wall"), key(img.name, "job_auto", "space"))
		row("the clone step alone (FICLONE, grow, fsync)", key(img.name, "clone_step", "wall"), "")
	}
	return sb.String()
}

// fmtSpace shows bytes in MiB, or KiB below 10 MiB.
func fmtSpace(x float64) string {
	if x < 10<<20 {
		return fmt.Sprintf("%.0f KiB", x/(1<<10))
	}
	return fmtMiB(x)
}
