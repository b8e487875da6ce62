package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	pimage "github.com/libvirt-volume-provisioner/provisioner/pipeline/image"

	"github.com/minio/minio-go/v7"
	"golang.org/x/sys/unix"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// results holds every sample, in run order, by key.
type results struct {
	mu sync.Mutex
	v  map[string][]float64
}

func newResults() *results { return &results{v: map[string][]float64{}} }

func (r *results) add(key string, x float64) {
	r.mu.Lock()
	r.v[key] = append(r.v[key], x)
	r.mu.Unlock()
}

func (r *results) get(key string) []float64 { return r.v[key] }

func key(parts ...string) string { return strings.Join(parts, "|") }

func timed(f func() error) (float64, error) {
	t := time.Now()
	err := f()
	return time.Since(t).Seconds(), err
}

// get downloads the image from the store in one stream into path (a plain
// GET, as curl or mc would), without fsync.
func (s *store) get(ctx context.Context, img *image, path string) error {
	os.Remove(path)
	o, err := s.client.GetObject(ctx, bucket, img.object, minio.GetObjectOptions{})
	if err != nil {
		return err
	}
	defer o.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	n, err := io.CopyBuffer(struct{ io.Writer }{f}, struct{ io.Reader }{o}, make([]byte, 1<<20))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != img.size {
		err = fmt.Errorf("GET %s: %d bytes, want %d", img.object, n, img.size)
	}
	return err
}

// getParallel downloads the image with n ranged GETs in parallel, each
// pinned to the ETag of the object it started with, into path.
func (s *store) getParallel(ctx context.Context, img *image, path string, n int) error {
	os.Remove(path)
	info, err := s.client.StatObject(ctx, bucket, img.object, minio.StatObjectOptions{})
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	part := (info.Size + int64(n) - 1) / int64(n)
	errs := make(chan error, n)
	for i := range n {
		go func() {
			start := int64(i) * part
			end := min(start+part, info.Size) - 1
			opts := minio.GetObjectOptions{}
			if err := opts.SetRange(start, end); err != nil {
				errs <- err
				return
			}
			if err := opts.SetMatchETag(info.ETag); err != nil {
				errs <- err
				return
			}
			o, err := s.client.GetObject(ctx, bucket, img.object, opts)
			if err != nil {
				errs <- err
				return
			}
			defer o.Close()
			w := io.NewOffsetWriter(f, start)
			got, err := io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{o}, make([]byte, 1<<20))
			if err == nil && got != end-start+1 {
				err = fmt.Errorf("ranged GET %s [%d, %d]: %d bytes", img.object, start, end, got)
			}
			errs <- err
		}()
	}
	for range n {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	return err
}

// evict drops a file's pages from the page cache (only that file's).
func evict(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	_ = unix.Fdatasync(int(f.Fd()))
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

func evictDir(dir string) {
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			evict(p)
		}
		return nil
	})
}

func (b *bench) targetPath(img *image, target string) string {
	if target == "loop" {
		return img.loopDev
	}
	return filepath.Join(b.runDir, "target-"+img.name+".raw")
}

// convertSteps times, from the downloaded file src into target: the
// convert step of (a), of (b), and the project's convert stage alone.
func (b *bench) convertSteps(ctx context.Context, img *image, src, target string, r int) error {
	dst := b.targetPath(img, target)
	logf("%s · converts into %s (%s) · run %d/%d", img.name, target, dst, r+1, b.opt.runs)
	for _, v := range []struct {
		name  string
		extra []string
	}{{"conv_a", nil}, {"conv_b", []string{"-m", "16", "-W"}}} {
		if target == "file" {
			os.Remove(dst)
		}
		args := append([]string{"convert", "-f", "qcow2", "-O", "raw", "-t", "none", "-T", "none"}, v.extra...)
		args = append(args, src, dst)
		evict(src)
		d, err := timed(func() error { return run(ctx, "qemu-img", args...) })
		if err != nil {
			return err
		}
		b.res.add(key(img.name, target, v.name), d)
	}
	// The project's convert stage: zero the target, qemu-img convert -n
	// --target-is-zero (O_DIRECT where the target takes it), fsync.
	pimg, err := pimage.Inspect(src, "qcow2")
	if err != nil {
		return err
	}
	vol := volume.Volume{Name: "bench", Path: dst, Size: img.virtual}
	if target == "file" {
		vol.Size = img.volumeGB() << 30
	}
	// Each converter's stage alone, into a new sparse file of the volume's
	// size (as the file backend creates) or the loop device.
	type stage struct {
		name string
		conv convert.Converter
		zlib string // the native converter's zlib decompressor
	}
	stages := []stage{{"conv_project", convert.QemuImg{}, ""}}
	for i, z := range convert.ZlibDecompressors() {
		name := "conv_native" // the worker's: the one in use first
		if i > 0 {
			name = "conv_native_" + z
		}
		stages = append(stages, stage{name, convert.Native{}, z})
	}
	defer convert.SetZlibDecompressor(convert.ZlibDecompressors()[0])
	for _, c := range stages {
		if c.zlib != "" {
			if err := convert.SetZlibDecompressor(c.zlib); err != nil {
				return err
			}
		}
		if target == "file" {
			os.Remove(dst)
			f, err := os.Create(dst)
			if err != nil {
				return err
			}
			f.Truncate(vol.Size)
			f.Close()
		}
		evict(src)
		d, err := timed(func() error { return c.conv.Convert(ctx, pimg, src, vol, nil) })
		if err != nil {
			return err
		}
		b.res.add(key(img.name, target, c.name), d)
	}
	if target == "file" {
		os.Remove(dst)
	}
	return nil
}

// downloadSteps times the first two steps of (a) and (b) from store s: one
// GET to a file, sha256sum.
func (b *bench) downloadSteps(ctx context.Context, s *store, img *image) error {
	dl := filepath.Join(b.runDir, "dl-"+img.name+".qcow2")
	d, err := timed(func() error { return s.get(ctx, img, dl) })
	if err != nil {
		return err
	}
	b.res.add(key(img.name, s.name, "download"), d)
	// The same bytes as four ranged GETs in parallel: do several streams
	// beat one on this link?
	par := filepath.Join(b.runDir, "dl4-"+img.name+".qcow2")
	d4, err := timed(func() error { return s.getParallel(ctx, img, par, 4) })
	if err != nil {
		return err
	}
	os.Remove(par)
	b.res.add(key(img.name, s.name, "download4"), d4)
	var out []byte
	d, err = timed(func() error {
		var err error
		out, err = exec.CommandContext(ctx, "sha256sum", dl).Output()
		return err
	})
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(out, []byte(img.sha)) {
		return fmt.Errorf("sha256sum of the downloaded %s does not match", img.name)
	}
	b.res.add(key(img.name, s.name, "sha"), d)
	return os.Remove(dl)
}

// --- REST API ---

type record struct {
	JobID      string     `json:"job_id"`
	Status     string     `json:"status"`
	Error      string     `json:"error"`
	CacheHit   *bool      `json:"cache_hit"`
	VolumePath string     `json:"volume_path"`
	StartedAt  *time.Time `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
}

func (b *bench) post(path string, body any) (string, int, error) {
	data, _ := json.Marshal(body)
	resp, err := b.http.Post(b.apiURL+path, "application/json", bytes.NewReader(data))
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		return "", resp.StatusCode, fmt.Errorf("POST %s: %s: %s", path, resp.Status, bytes.TrimSpace(out))
	}
	var acc struct {
		JobID string `json:"job_id"`
	}
	if err := json.Unmarshal(out, &acc); err != nil {
		return "", resp.StatusCode, err
	}
	return acc.JobID, resp.StatusCode, nil
}

func (b *bench) job(id string) (record, error) {
	var rec record
	resp, err := b.http.Get(b.apiURL + "/api/v1/jobs/" + id)
	if err != nil {
		return rec, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return rec, fmt.Errorf("GET job %s: %s", id, resp.Status)
	}
	return rec, json.NewDecoder(resp.Body).Decode(&rec)
}

func (b *bench) wait(ctx context.Context, id string, every time.Duration) (record, error) {
	for {
		rec, err := b.job(id)
		if err != nil {
			return rec, err
		}
		switch rec.Status {
		case "completed":
			return rec, nil
		case "failed", "cancelled":
			return rec, fmt.Errorf("job %s %s: %s", id, rec.Status, rec.Error)
		}
		select {
		case <-ctx.Done():
			return rec, ctx.Err()
		case <-time.After(every):
		}
	}
}

// finishedAfter is a job's time from the moment its POST was sent (t0) to
// the finished_at its worker recorded, which the 20 ms polling would
// otherwise round up; polled when the record has no finish time.
func finishedAfter(rec record, t0 time.Time, polled float64) float64 {
	if rec.FinishedAt == nil {
		return polled
	}
	if d := rec.FinishedAt.Sub(t0).Seconds(); d > 0 && d <= polled {
		return d
	}
	return polled
}

func (b *bench) uncache(img *image) error {
	req, _ := http.NewRequest(http.MethodDelete, b.apiURL+"/api/v1/cache/images/"+img.sha+"?hypervisor=bench", nil)
	resp, err := b.http.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 && resp.StatusCode != 404 {
		return fmt.Errorf("DELETE cached %s: %s", img.name, resp.Status)
	}
	return nil
}

var volSeq atomic.Int64

// projectJobs runs (c) from store s: a cache fetch job (download only), a
// cold job (empty cache) and a warm job (cached), with resource figures.
func (b *bench) projectJobs(ctx context.Context, s *store, img *image) error {
	if err := b.uncache(img); err != nil {
		return err
	}
	url := s.url(img)
	// Download only: the cache fetch job.
	var fetchID string
	var fetched record
	t0 := time.Now()
	d, err := timed(func() error {
		id, _, err := b.post("/api/v1/cache/fetch", map[string]any{"image_url": url, "hypervisor": "bench"})
		if err != nil {
			return err
		}
		fetchID = id
		fetched, err = b.wait(ctx, id, 20*time.Millisecond)
		return err
	})
	if err != nil {
		return err
	}
	d = finishedAfter(fetched, t0, d)
	b.res.add(key(img.name, s.name, "fetch_project"), d)
	if err := b.uncache(img); err != nil {
		return err
	}
	_ = fetchID
	for _, mode := range []string{"cold", "warm"} {
		if mode == "warm" {
			// The cached file is read from disk, as the convert steps of
			// (a) and (b) read theirs (-T none).
			evictDir(filepath.Join(b.runDir, "cache-bench"))
		}
		vol := fmt.Sprintf("bench-%s-%d", img.name, volSeq.Add(1))
		m := b.startSampling()
		var rec record
		t0 := time.Now()
		d, err := timed(func() error {
			id, _, err := b.post("/api/v1/jobs", map[string]any{"image_url": url, "volume_name": vol,
				"volume_size_gb": img.volumeGB(), "hypervisor": "bench"})
			if err != nil {
				return err
			}
			rec, err = b.wait(ctx, id, 20*time.Millisecond)
			return err
		})
		st := m.stop()
		if err != nil {
			return err
		}
		d = finishedAfter(rec, t0, d)
		if rec.CacheHit == nil || *rec.CacheHit != (mode == "warm") {
			return fmt.Errorf("%s job %s: cache_hit=%v", mode, rec.JobID, rec.CacheHit)
		}
		k := func(n string) string { return key(img.name, s.name, "job_"+mode, n) }
		b.res.add(k("wall"), d)
		b.res.add(k("cpu"), st.cpu)
		b.res.add(k("rss"), st.rssPeak)
		b.res.add(k("cg_peak"), st.cgPeak)
		b.res.add(k("cg_dirty"), st.cgDirtyPeak)
		b.res.add(k("cg_cache"), st.cgCacheGrowth)
		b.res.add(k("mi_dirty"), st.miDirtyPeak)
		b.res.add(k("mi_cached"), st.miCachedGrowth)
		if rec.VolumePath != "" {
			os.Remove(rec.VolumePath)
		}
	}
	return b.uncache(img)
}

// --- resources of the worker ---

type sampler struct {
	b       *bench
	stopc   chan struct{}
	done    chan struct{}
	cpu0    float64
	cache0  float64
	cached0 float64
	dirty0  float64
	st      sample
}

type sample struct {
	cpu            float64 // s, worker + waited-for children
	rssPeak        float64 // bytes, worker + children, sampled
	cgPeak         float64 // bytes, the cgroup's peak usage (includes its page cache)
	cgDirtyPeak    float64 // bytes, the cgroup's dirty + writeback pages, sampled
	cgCacheGrowth  float64 // bytes, the cgroup's page cache at the end minus the start
	miDirtyPeak    float64 // bytes, /proc/meminfo Dirty + Writeback peak above the start
	miCachedGrowth float64 // bytes, /proc/meminfo Cached at the end minus the start (system wide)
}

func (b *bench) startSampling() *sampler {
	m := &sampler{b: b, stopc: make(chan struct{}), done: make(chan struct{})}
	m.cpu0 = procCPU(b.worker.Process.Pid)
	if b.cgroup != "" && !b.cgroupV2 {
		os.WriteFile(filepath.Join(b.cgroup, "memory.max_usage_in_bytes"), []byte("0"), 0o644)
	}
	mi := meminfo()
	m.dirty0, m.cached0 = mi["Dirty"]+mi["Writeback"], mi["Cached"]
	m.cache0 = b.cgStat()["cache"]
	go m.loop()
	return m
}

func (m *sampler) loop() {
	defer close(m.done)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		m.once()
		select {
		case <-m.stopc:
			return
		case <-t.C:
		}
	}
}

func (m *sampler) once() {
	var rss float64
	self := m.b.worker.Process.Pid
	selfExe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", self))
	for _, pid := range m.b.workerPids() {
		// A child between its clone and its exec (Go starts children with
		// CLONE_VM|CLONE_VFORK) shares the worker's memory, and its VmRSS
		// is the worker's: counting it would count the worker twice.
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); pid != self && exe != "" && exe == selfExe {
			continue
		}
		rss += procRSS(pid)
	}
	m.st.rssPeak = max(m.st.rssPeak, rss)
	cs := m.b.cgStat()
	m.st.cgDirtyPeak = max(m.st.cgDirtyPeak, cs["dirty"]+cs["writeback"])
	mi := meminfo()
	m.st.miDirtyPeak = max(m.st.miDirtyPeak, mi["Dirty"]+mi["Writeback"]-m.dirty0)
	if m.b.cgroupV2 {
		m.st.cgPeak = max(m.st.cgPeak, readNum(filepath.Join(m.b.cgroup, "memory.current")))
	}
}

func (m *sampler) stop() sample {
	close(m.stopc)
	<-m.done
	m.once()
	m.st.cpu = procCPU(m.b.worker.Process.Pid) - m.cpu0
	if m.b.cgroup != "" {
		if m.b.cgroupV2 {
			m.st.cgPeak = max(m.st.cgPeak, readNum(filepath.Join(m.b.cgroup, "memory.peak")))
		} else {
			m.st.cgPeak = readNum(filepath.Join(m.b.cgroup, "memory.max_usage_in_bytes"))
		}
	}
	m.st.cgCacheGrowth = m.b.cgStat()["cache"] - m.cache0
	m.st.miCachedGrowth = meminfo()["Cached"] - m.cached0
	return m.st
}

// workerPids lists the worker and its children: the cgroup's processes, or
// the worker's descendants from /proc.
func (b *bench) workerPids() []int {
	if b.cgroup != "" {
		data, _ := os.ReadFile(filepath.Join(b.cgroup, "cgroup.procs"))
		var pids []int
		for _, f := range strings.Fields(string(data)) {
			if p, err := strconv.Atoi(f); err == nil {
				pids = append(pids, p)
			}
		}
		return pids
	}
	parent := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(pid); len(f) > 3 {
			pp, _ := strconv.Atoi(f[3])
			parent[pid] = pp
		}
	}
	root := b.worker.Process.Pid
	var out []int
	for pid := range parent {
		for p := pid; p > 1; p = parent[p] {
			if p == root {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// cgStat reads the worker cgroup's memory.stat as v1 names: cache, dirty,
// writeback, rss.
func (b *bench) cgStat() map[string]float64 {
	out := map[string]float64{}
	if b.cgroup == "" {
		return out
	}
	f, err := os.Open(filepath.Join(b.cgroup, "memory.stat"))
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		n, _ := strconv.ParseFloat(v, 64)
		if b.cgroupV2 {
			switch k {
			case "file":
				k = "cache"
			case "file_dirty":
				k = "dirty"
			case "file_writeback":
				k = "writeback"
			case "anon":
				k = "rss"
			}
		}
		out[k] = n
	}
	return out
}

func readNum(p string) float64 {
	b, _ := os.ReadFile(p)
	n, _ := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
	return n
}

func meminfo() map[string]float64 {
	out := map[string]float64{}
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 2 {
			n, _ := strconv.ParseFloat(fs[1], 64)
			out[strings.TrimSuffix(fs[0], ":")] = n * 1024
		}
	}
	return out
}

// statFields returns /proc/<pid>/stat split after the command name, so
// index 0 is the pid, 1 the comm, 2 the state, 3 the ppid, and so on.
func statFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return append([]string{strconv.Itoa(pid), "comm"}, strings.Fields(s[i+1:])...)
}

// procCPU is utime+stime+cutime+cstime of pid in seconds: the worker's own
// CPU and that of the qemu-img children it waited for.
func procCPU(pid int) float64 {
	f := statFields(pid)
	if len(f) < 17 {
		return 0
	}
	var t float64
	for _, i := range []int{13, 14, 15, 16} {
		n, _ := strconv.ParseFloat(f[i], 64)
		t += n
	}
	return t / 100 // USER_HZ
}

func procRSS(pid int) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "VmRSS:") {
			fs := strings.Fields(sc.Text())
			n, _ := strconv.ParseFloat(fs[1], 64)
			return n * 1024
		}
	}
	return 0
}

// --- API load ---

func (b *bench) apiLoad(ctx context.Context, s *store, tiny *image) error {
	if err := b.startWorker(ctx, s, "bench"); err != nil {
		return err
	}
	url := s.url(tiny)
	// Warm the cache so each job is short.
	id, _, err := b.post("/api/v1/jobs", map[string]any{"image_url": url, "volume_name": "lat-warm", "volume_size_gb": 1, "hypervisor": "bench"})
	if err != nil {
		return err
	}
	if rec, err := b.wait(ctx, id, 10*time.Millisecond); err != nil {
		return err
	} else {
		os.Remove(rec.VolumePath)
	}
	logf("API: POST → job start latency, %d jobs one at a time", b.opt.latencyN)
	for i := 0; i < b.opt.latencyN; i++ {
		t0 := time.Now()
		id, _, err := b.post("/api/v1/jobs", map[string]any{"image_url": url, "volume_name": fmt.Sprintf("lat-%d", i), "volume_size_gb": 1, "hypervisor": "bench"})
		if err != nil {
			return err
		}
		b.res.add("api|post", time.Since(t0).Seconds())
		// Watch the record with a tight loop until it leaves pending.
		for {
			rec, err := b.job(id)
			if err != nil {
				return err
			}
			if rec.Status != "pending" {
				b.res.add("api|start_observed", time.Since(t0).Seconds())
				if rec.StartedAt != nil {
					b.res.add("api|start_recorded", rec.StartedAt.Sub(t0).Seconds())
				}
				break
			}
		}
		rec, err := b.wait(ctx, id, 5*time.Millisecond)
		if err != nil {
			return err
		}
		os.Remove(rec.VolumePath)
	}
	if err := b.stopWorker(); err != nil {
		return err
	}

	// A host whose worker registered once and is now down: jobs for it
	// are accepted and queue in the stream, nothing runs them.
	if err := b.startWorker(ctx, s, "sink"); err != nil {
		return err
	}
	// The sink worker is the last process started; kill it hard so it
	// leaves nothing behind but its registry entry.
	sinkStop := b.cleanups[len(b.cleanups)-1]
	sinkStop()
	const workers = 32
	logf("API: accepted submissions/s, %d clients for %s", workers, b.opt.loadTime)
	var accepted, refused atomic.Int64
	var mu sync.Mutex
	var postLat []float64
	var ids []string
	var seq atomic.Int64
	deadline := time.Now().Add(b.opt.loadTime)
	var wg sync.WaitGroup
	apiPid := b.apiCmd.Process.Pid
	cpu0 := procCPU(apiPid)
	t0 := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []float64
			for time.Now().Before(deadline) && ctx.Err() == nil && seq.Load() < 100000 {
				n := seq.Add(1)
				t := time.Now()
				id, _, err := b.post("/api/v1/jobs", map[string]any{"image_url": url, "volume_name": fmt.Sprintf("load-%d", n), "volume_size_gb": 1, "hypervisor": "sink"})
				lat = append(lat, time.Since(t).Seconds())
				if err != nil {
					refused.Add(1)
					continue
				}
				accepted.Add(1)
				if n <= 64 {
					mu.Lock()
					ids = append(ids, id)
					mu.Unlock()
				}
			}
			mu.Lock()
			postLat = append(postLat, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(t0).Seconds()
	b.res.add("api|submit_cpu", (procCPU(apiPid)-cpu0)/el)
	b.res.add("api|submit_rate", float64(accepted.Load())/el)
	b.res.add("api|submit_refused", float64(refused.Load()))
	b.res.add("api|submit_total", float64(accepted.Load()))
	b.res.v["api|submit_lat"] = postLat
	if len(ids) == 0 {
		return fmt.Errorf("no submission was accepted (see %s)", filepath.Join(b.runDir, "api.log"))
	}
	logf("API: status reads/s, %d clients for %s", workers, b.opt.loadTime)
	var reads, failed atomic.Int64
	var readLat []float64
	deadline = time.Now().Add(b.opt.loadTime)
	cpu0 = procCPU(apiPid)
	t0 = time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []float64
			for time.Now().Before(deadline) && ctx.Err() == nil {
				t := time.Now()
				_, err := b.job(ids[0])
				lat = append(lat, time.Since(t).Seconds())
				if err != nil {
					failed.Add(1)
					continue
				}
				reads.Add(1)
			}
			mu.Lock()
			readLat = append(readLat, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	el = time.Since(t0).Seconds()
	b.res.add("api|read_cpu", (procCPU(apiPid)-cpu0)/el)
	b.res.add("api|read_rate", float64(reads.Load())/el)
	b.res.add("api|read_failed", float64(failed.Load()))
	b.res.v["api|read_lat"] = readLat
	return nil
}

func median(xs []float64) float64 { return percentile(xs, 50) }

func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	i := int(float64(len(s)-1)*p/100 + 0.5)
	return s[i]
}
