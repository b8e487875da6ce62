package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
)

type machineInfo struct {
	cpus    int
	cpu     string
	memGiB  float64
	kernel  string
	disk    string
	qemuImg string
	goVer   string
	cgroup  string
}

func (m machineInfo) oneLine() string {
	return fmt.Sprintf("%d CPUs (%s), %.1f GiB RAM, kernel %s, disk %s, %s, %s, %s", m.cpus, m.cpu, m.memGiB, m.kernel, m.disk, m.qemuImg, m.goVer, m.cgroup)
}

func describeMachine(dir string) machineInfo {
	m := machineInfo{cpus: runtime.NumCPU(), goVer: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				_, v, _ := strings.Cut(l, ":")
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	m.memGiB = meminfo()["MemTotal"] / (1 << 30)
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		m.kernel = cstr(u.Release[:])
	}
	out, _ := exec.Command("qemu-img", "--version").Output()
	m.qemuImg = strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
	m.disk = diskOf(dir)
	var st syscall.Statfs_t
	if syscall.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == 0x63677270 {
		m.cgroup = "cgroup v2"
	} else {
		m.cgroup = "cgroup v1"
	}
	return m
}

func cstr(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// diskOf names the block device under dir and whether it is rotational.
func diskOf(dir string) string {
	out, err := exec.Command("df", "--output=source,fstype", dir).Output()
	if err != nil {
		return "unknown"
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	f := strings.Fields(lines[len(lines)-1])
	if len(f) < 2 {
		return "unknown"
	}
	dev := filepath.Base(f[0])
	desc := f[0] + " (" + f[1] + ")"
	base := strings.TrimRight(dev, "0123456789")
	if strings.HasPrefix(dev, "nvme") {
		base = dev[:strings.LastIndex(dev, "p")]
	}
	if _, err := os.Stat("/sys/block/" + dev); err == nil {
		base = dev
	}
	if r, err := os.ReadFile("/sys/block/" + base + "/queue/rotational"); err == nil {
		kind := "SSD/virtual (non-rotational)"
		if strings.TrimSpace(string(r)) == "1" {
			kind = "rotational"
		}
		if strings.HasPrefix(base, "vd") {
			kind = "virtio-blk, " + kind
		}
		desc += ", " + kind
	}
	return desc
}

func fmtS(x float64) string {
	switch {
	case x == 0:
		return "–"
	case x < 0.1:
		return fmt.Sprintf("%.0f ms", x*1000)
	case x < 10:
		return fmt.Sprintf("%.2f s", x)
	default:
		return fmt.Sprintf("%.1f s", x)
	}
}

func fmtMiB(x float64) string { return fmt.Sprintf("%.0f MiB", x/(1<<20)) }

// perRun combines samples of equal length run by run.
func perRun(f func(i int) float64, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = f(i)
	}
	return out
}

func at(xs []float64, i int) float64 {
	if i < len(xs) {
		return xs[i]
	}
	return 0
}

func (b *bench) netLabel(n string) string {
	for _, s := range b.stores {
		if s.name == n {
			return s.label
		}
	}
	return n
}

type verdict struct{ target, figure, met string }

func (b *bench) report() string {
	r := b.res
	o := b.opt
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	p("Measured %s with `%s` (%d run(s), medians; ratios are medians of per-run ratios against (a) of the same network and target).\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), commandLine(), o.runs)
	p("Machine: %s.\n\n", b.machine.oneLine())
	conv := os.Getenv("PROVISIONER_CONVERTER")
	if conv == "" {
		conv = "default"
	}
	p("Worker: `bin/worker` version %s, converter %s (`PROVISIONER_CONVERTER` passes through to the worker).\n\n", b.workerVersion, conv)
	// The worker's converter: its convert stage alone is the fair "convert
	// alone" of the project's own jobs.
	projConv := "conv_native"
	if os.Getenv("PROVISIONER_CONVERTER") == "qemu-img" {
		projConv = "conv_project"
	}
	var verdicts []verdict
	runs := o.runs
	for _, img := range b.images {
		p("#### %s\n\n", img.describe())
		if l, err := qcowLayout(img.path); err == nil {
			p("File order against guest order: %s.\n\n", l)
		}
		type col struct{ net, target string }
		var cols []col
		p("| step |")
		for _, s := range b.stores {
			for _, t := range o.targets {
				cols = append(cols, col{s.name, t})
				tl := "raw file"
				if t == "loop" {
					tl = "loop device"
				}
				p(" %s → %s |", s.label, tl)
			}
		}
		p("\n|---|")
		for range cols {
			p("---|")
		}
		p("\n")
		n := img.name
		aTot := func(c col) []float64 {
			dl, sh, cv := r.get(key(n, c.net, "download")), r.get(key(n, c.net, "sha")), r.get(key(n, c.target, "conv_a"))
			return perRun(func(i int) float64 { return at(dl, i) + at(sh, i) + at(cv, i) }, runs)
		}
		bTot := func(c col) []float64 {
			dl, sh, cv := r.get(key(n, c.net, "download")), r.get(key(n, c.net, "sha")), r.get(key(n, c.target, "conv_b"))
			return perRun(func(i int) float64 { return at(dl, i) + at(sh, i) + at(cv, i) }, runs)
		}
		ratio := func(num, den []float64) float64 {
			return median(perRun(func(i int) float64 {
				if at(den, i) == 0 {
					return 0
				}
				return at(num, i) / at(den, i)
			}, runs))
		}
		row := func(label string, cell func(c col) string) {
			p("| %s |", label)
			for _, c := range cols {
				p(" %s |", cell(c))
			}
			p("\n")
		}
		jobCell := func(mode string) func(c col) string {
			return func(c col) string {
				if c.target == "loop" {
					return "n/a¹"
				}
				x := r.get(key(n, c.net, "job_"+mode, "wall"))
				return fmt.Sprintf("%s (%.2f×)", fmtS(median(x)), ratio(x, aTot(c)))
			}
		}
		row("download alone: one-stream GET to a file", func(c col) string { return fmtS(median(r.get(key(n, c.net, "download")))) })
		row("download alone, 4 ranged GETs in parallel (ETag pinned)", func(c col) string { return fmtS(median(r.get(key(n, c.net, "download4")))) })
		row("sha256sum of the download", func(c col) string { return fmtS(median(r.get(key(n, c.net, "sha")))) })
		row("convert alone: `qemu-img convert -t none -T none`", func(c col) string { return fmtS(median(r.get(key(n, c.target, "conv_a")))) })
		row("convert alone, tuned: `… -m 16 -W`", func(c col) string { return fmtS(median(r.get(key(n, c.target, "conv_b")))) })
		row("**(a) baseline**: GET + sha256sum + convert", func(c col) string { return fmtS(median(aTot(c))) + " (1.00×)" })
		row("**(b) tuned**: GET + sha256sum + convert `-m 16 -W`", func(c col) string {
			x := bTot(c)
			return fmt.Sprintf("%s (%.2f×)", fmtS(median(x)), ratio(x, aTot(c)))
		})
		row("project, download only: cache fetch job via REST", func(c col) string { return fmtS(median(r.get(key(n, c.net, "fetch_project")))) })
		row("project, convert only: pipeline convert (zero + qemu-img `-n --target-is-zero` + fsync)", func(c col) string {
			return fmtS(median(r.get(key(n, c.target, "conv_project"))))
		})
		for i, z := range convert.ZlibDecompressors() {
			k := "conv_native"
			label := fmt.Sprintf("project, convert only, native: go-qcow2reader + %s, parallel O_DIRECT writes + fsync", z)
			if i > 0 {
				k = "conv_native_" + z
				label = fmt.Sprintf("… native with %s instead", z)
			}
			row(label, func(c col) string { return fmtS(median(r.get(key(n, c.target, k)))) })
		}
		row("**(c) project job, cold** (empty cache), POST → completed", jobCell("cold"))
		row("**(c) project job, warm** (cached), POST → completed", jobCell("warm"))
		row("cold ÷ max(download alone, convert alone (b))", func(c col) string {
			if c.target == "loop" {
				return "n/a¹"
			}
			dl, cv := r.get(key(n, c.net, "download")), r.get(key(n, c.target, "conv_b"))
			den := perRun(func(i int) float64 { return max(at(dl, i), at(cv, i)) }, runs)
			return fmt.Sprintf("%.2f", ratio(r.get(key(n, c.net, "job_cold", "wall")), den))
		})
		row("cold ÷ max(download alone, the project's convert alone)", func(c col) string {
			if c.target == "loop" {
				return "n/a¹"
			}
			dl, cv := r.get(key(n, c.net, "download")), r.get(key(n, c.target, projConv))
			den := perRun(func(i int) float64 { return max(at(dl, i), at(cv, i)) }, runs)
			return fmt.Sprintf("%.2f", ratio(r.get(key(n, c.net, "job_cold", "wall")), den))
		})
		row("warm ÷ convert step of (b)", func(c col) string {
			if c.target == "loop" {
				return "n/a¹"
			}
			return fmt.Sprintf("%.2f", ratio(r.get(key(n, c.net, "job_warm", "wall")), r.get(key(n, c.target, "conv_b"))))
		})
		p("\n")
		// Targets for this image (raw file target; the shaped link when measured).
		net := b.stores[len(b.stores)-1].name
		c := col{net, "file"}
		if has(o.targets, "file") {
			cold := r.get(key(n, net, "job_cold", "wall"))
			x := ratio(cold, aTot(c))
			verdicts = append(verdicts, verdict{fmt.Sprintf("%s, %s: cold job ≤ 0.5 × (a)", n, b.netLabel(net)),
				fmt.Sprintf("%s vs %s = %.2f×", fmtS(median(cold)), fmtS(median(aTot(c))), x), metStr(x <= 0.5, x/0.5)})
			dl, cv := r.get(key(n, net, "download")), r.get(key(n, "file", "conv_b"))
			den := perRun(func(i int) float64 { return max(at(dl, i), at(cv, i)) }, runs)
			x = ratio(cold, den)
			verdicts = append(verdicts, verdict{fmt.Sprintf("%s, %s: cold job ≤ 1.15 × max(download alone, convert alone (b))", n, b.netLabel(net)),
				fmt.Sprintf("%s vs max(%s, %s) = %.2f×", fmtS(median(cold)), fmtS(median(dl)), fmtS(median(cv)), x), metStr(x <= 1.15, x/1.15)})
			pc := r.get(key(n, "file", projConv))
			den = perRun(func(i int) float64 { return max(at(dl, i), at(pc, i)) }, runs)
			x = ratio(cold, den)
			verdicts = append(verdicts, verdict{fmt.Sprintf("%s, %s: cold job ≤ 1.15 × max(download alone, the project's own convert stage alone)", n, b.netLabel(net)),
				fmt.Sprintf("%s vs max(%s, %s) = %.2f×", fmtS(median(cold)), fmtS(median(dl)), fmtS(median(pc)), x), metStr(x <= 1.15, x/1.15)})
			for _, s := range b.stores {
				warm := r.get(key(n, s.name, "job_warm", "wall"))
				x = ratio(warm, cv)
				verdicts = append(verdicts, verdict{fmt.Sprintf("%s, %s: warm job ≤ 1.05 × convert step of (b)", n, s.label),
					fmt.Sprintf("%s vs %s = %.2f×", fmtS(median(warm)), fmtS(median(cv)), x), metStr(x <= 1.05, x/1.05)})
			}
		}
	}
	if has(o.targets, "loop") {
		p("¹ The project's job writes volumes through a backend: `file` (raw files; block devices are refused), `lvm` (needs device-mapper, which this kernel lacks) or `libvirt`. So (c) is measured into raw files only; its convert stage alone (the same code a block-device backend runs) is measured into the loop device.\n\n")
	}

	// Resources of (c).
	p("#### Worker resources during (c) (medians; the worker runs in its own memory cgroup)\n\n")
	p("| image · network · job | wall | CPU (worker + qemu-img) | peak RSS (worker + children, sampled every 20 ms) | cgroup peak usage (incl. its page cache) | cgroup dirty + writeback peak | /proc/meminfo Dirty + Writeback peak growth | page cache growth (cgroup) |\n")
	p("|---|---|---|---|---|---|---|---|\n")
	var rssMax, cgDirtyMax, miDirtyMax, cgPeakMax float64
	var rssWhere string
	for _, img := range b.images {
		for _, s := range b.stores {
			for _, mode := range []string{"cold", "warm"} {
				k := func(x string) []float64 { return r.get(key(img.name, s.name, "job_"+mode, x)) }
				if len(k("wall")) == 0 {
					continue
				}
				p("| %s · %s · %s | %s | %s | %s | %s | %s | %s | %s |\n", img.name, s.label, mode, fmtS(median(k("wall"))), fmtS(median(k("cpu"))),
					fmtMiB(median(k("rss"))), fmtMiB(median(k("cg_peak"))), fmtMiB(median(k("cg_dirty"))), fmtMiB(median(k("mi_dirty"))), fmtMiB(median(k("cg_cache"))))
				if img.virtual >= 4<<30 {
					for _, v := range k("rss") {
						if v > rssMax {
							rssMax, rssWhere = v, fmt.Sprintf("%s · %s · %s", img.name, s.label, mode)
						}
					}
					for _, v := range k("cg_dirty") {
						cgDirtyMax = max(cgDirtyMax, v)
					}
					for _, v := range k("mi_dirty") {
						miDirtyMax = max(miDirtyMax, v)
					}
					for _, v := range k("cg_peak") {
						cgPeakMax = max(cgPeakMax, v)
					}
				}
			}
		}
	}
	p("\n")
	if rssWhere != "" {
		verdicts = append(verdicts, verdict{"worker peak memory ≤ 64 MiB during a ≥ 4 GiB job, counting qemu-img children",
			fmt.Sprintf("RSS %s (worst sample, %s); cgroup peak incl. page cache %s", fmtMiB(rssMax), rssWhere, fmtMiB(cgPeakMax)), metStr(rssMax <= 64<<20, rssMax/(64<<20))})
		verdicts = append(verdicts, verdict{"dirty page cache ≤ 256 MiB",
			fmt.Sprintf("worker cgroup dirty+writeback peak %s; /proc/meminfo Dirty+Writeback growth peak %s (system wide)", fmtMiB(cgDirtyMax), fmtMiB(miDirtyMax)),
			metStr(cgDirtyMax <= 256<<20, cgDirtyMax/(256<<20))})
	}

	if o.apiLoad {
		p("#### API on the embedded NATS server (loopback, keep-alive, 32 clients)\n\n")
		p("| figure | value |\n|---|---|\n")
		st := r.get("api|start_recorded")
		p("| POST → job start (record's `started_at` − POST sent), %d jobs one at a time, idle worker | p50 %s, p90 %s, max %s |\n", len(st), fmtMs(percentile(st, 50)), fmtMs(percentile(st, 90)), fmtMs(percentile(st, 100)))
		so := r.get("api|start_observed")
		p("| POST → `running` seen by a client polling GET in a tight loop | p50 %s, p90 %s |\n", fmtMs(percentile(so, 50)), fmtMs(percentile(so, 90)))
		pl := r.get("api|post")
		p("| POST /api/v1/jobs → 202, unloaded | p50 %s |\n", fmtMs(percentile(pl, 50)))
		p("| accepted submissions/s (POST /api/v1/jobs, distinct volumes, host with its worker stopped) | %.0f/s (%.0f accepted, %.0f refused in %s); POST p50 %s, p99 %s; API process (with embedded NATS) used %.2f CPUs |\n",
			median(r.get("api|submit_rate")), median(r.get("api|submit_total")), median(r.get("api|submit_refused")), o.loadTime,
			fmtMs(percentile(r.get("api|submit_lat"), 50)), fmtMs(percentile(r.get("api|submit_lat"), 99)), median(r.get("api|submit_cpu")))
		p("| status reads/s (GET /api/v1/jobs/{id} of one job) | %.0f/s (%.0f failed); GET p50 %s, p99 %s; API process used %.2f CPUs (the load generator shares the same %d CPUs) |\n\n",
			median(r.get("api|read_rate")), median(r.get("api|read_failed")), fmtMs(percentile(r.get("api|read_lat"), 50)), fmtMs(percentile(r.get("api|read_lat"), 99)), median(r.get("api|read_cpu")), b.machine.cpus)
		x := percentile(st, 50)
		verdicts = append(verdicts, verdict{"POST → job start p50 ≤ 10 ms", fmtMs(x), metStr(x <= 0.010, x/0.010)})
		x = median(r.get("api|submit_rate"))
		verdicts = append(verdicts, verdict{"≥ 2,000 accepted submissions/s", fmt.Sprintf("%.0f/s", x), metStr(x >= 2000, 2000/max(x, 1))})
		x = median(r.get("api|read_rate"))
		verdicts = append(verdicts, verdict{"≥ 10,000 status reads/s", fmt.Sprintf("%.0f/s", x), metStr(x >= 10000, 10000/max(x, 1))})
	}
	p("#### Targets\n\n| target | measured | met? |\n|---|---|---|\n")
	for _, v := range verdicts {
		p("| %s | %s | %s |\n", v.target, v.figure, v.met)
	}
	return w.String()
}

// metStr says met, or missed by how much (factor = measured ÷ limit, or
// limit ÷ measured for floors).
func metStr(ok bool, factor float64) string {
	if ok {
		return "met"
	}
	return fmt.Sprintf("**missed** (%.2f× the limit, %+.0f%%)", factor, (factor-1)*100)
}

func fmtMs(x float64) string { return fmt.Sprintf("%.2f ms", x*1000) }

func commandLine() string {
	args := []string{"go", "run", "./bench"}
	args = append(args, os.Args[1:]...)
	return strings.Join(args, " ")
}

const beginMark, endMark = "<!-- bench:begin -->", "<!-- bench:end -->"

// writeSection puts body between the markers of the markdown file path,
// creating the file or the markers when missing.
func writeSection(path, body string) error {
	return writeBetween(path, beginMark, endMark, body)
}

// writeBetween puts body between the markers begin and end of the markdown
// file path, creating the file or the markers when missing.
func writeBetween(path, beginMark, endMark, body string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	s := string(old)
	block := beginMark + "\n" + body + endMark
	i, j := strings.Index(s, beginMark), strings.Index(s, endMark)
	switch {
	case i >= 0 && j > i:
		s = s[:i] + block + s[j+len(endMark):]
	case s == "":
		s = "# Benchmarks\n\n" + block + "\n"
	default:
		s = strings.TrimRight(s, "\n") + "\n\n" + block + "\n"
	}
	return os.WriteFile(path, []byte(s), 0o644)
}
