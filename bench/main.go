// Command bench runs the provisioner side by side with plain qemu-img
// pipelines and prints a table of medians over several runs, with ratios
// against the baseline (a) of the same run:
//
//	(a) baseline: one-stream GET to a file, sha256sum, qemu-img convert -t none -T none
//	(b) tuned qemu-img: the same with -m 16 -W
//	(c) this project's job through the REST API, cold (empty cache) and warm,
//	    and its stages alone (cache fetch job = download only, the
//	    pipeline's convert = convert only)
//
// on generated images (an ext4 filesystem holding ~800 MB of real files,
// 4 GiB virtual, and a 20 GiB sparse one), from MinIO on loopback and from
// MinIO in a network namespace behind a 1 Gbit/s tbf shaper, into a raw file
// and a loop block device. For (c) it also records the worker's memory (its
// own memory cgroup, and the RSS of the worker and its qemu-img children),
// dirty and cached pages, CPU time; and for the API on the embedded NATS
// server POST → job start latency, accepted submissions per second and
// status reads per second.
//
// Run as root from the repository root after `make build`:
//
//	go run ./bench            # full run, writes the table into BENCHMARKS.md
//	go run ./bench -quick     # smoke: small image, loopback only, one run
//
// Images and MinIO data are kept under -dir (default
// ${BENCH_DIR:-/var/tmp/provisioner-bench}) so reruns skip building them.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type options struct {
	runs      int
	quick     bool
	dir       string
	images    []string
	nets      []string
	targets   []string
	apiLoad   bool
	write     string
	loadTime  time.Duration
	latencyN  int
	keepFiles bool
	clones    bool
}

func main() {
	var o options
	var images, nets, targets string
	def := os.Getenv("BENCH_DIR")
	if def == "" {
		def = "/var/tmp/provisioner-bench"
	}
	flag.IntVar(&o.runs, "runs", 3, "runs per measurement; the table shows medians")
	flag.BoolVar(&o.quick, "quick", false, "smoke run: small image (1 GiB virtual), loopback only, one run, short API load; does not write BENCHMARKS.md unless -write is given")
	flag.StringVar(&o.dir, "dir", def, "work directory: generated images, MinIO data, logs (kept between runs)")
	flag.StringVar(&images, "images", "realistic,sparse", "images: realistic (ext4, ~800 MB of files, 4 GiB), sparse (20 GiB, mostly empty), small (ext4 of the Go source tree, 1 GiB)")
	flag.StringVar(&nets, "nets", "loopback,shaped", "where MinIO is: loopback, shaped (own network namespace, veth pair, tbf 1 Gbit/s)")
	flag.StringVar(&targets, "targets", "file,loop", "targets: file (raw file), loop (loop block device)")
	flag.BoolVar(&o.apiLoad, "api", true, "measure the API: POST → start latency, accepted submissions/s, status reads/s")
	flag.StringVar(&o.write, "write", "auto", "markdown file whose <!-- bench:begin -->…<!-- bench:end --> section receives the table (\"\": none; auto: BENCHMARKS.md unless -quick)")
	flag.DurationVar(&o.loadTime, "load-time", 5*time.Second, "duration of each API load phase")
	flag.IntVar(&o.latencyN, "latency-jobs", 30, "jobs submitted one by one for the POST → start latency")
	flag.BoolVar(&o.keepFiles, "keep", false, "keep the run directory (volumes, cache, logs) afterwards")
	flag.BoolVar(&o.clones, "clones", false, "only the clone benchmark: on XFS with reflinks, qemu-img convert vs today's warm job vs the warm job by clone, and the new space each volume takes (images default realistic,small10)")
	layoutOf := flag.String("layout", "", "print how far the order of this qcow2 file follows its guest order, and exit")
	flag.Parse()
	if *layoutOf != "" {
		l, err := qcowLayout(*layoutOf)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(l)
		return
	}
	o.images, o.nets, o.targets = split(images), split(nets), split(targets)
	if o.clones {
		set := false
		flag.Visit(func(f *flag.Flag) { set = set || f.Name == "images" })
		if !set {
			o.images = []string{"realistic", "small10"}
		}
	}
	if o.quick {
		setByUser := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { setByUser[f.Name] = true })
		if !setByUser["runs"] {
			o.runs = 1
		}
		if !setByUser["images"] {
			o.images = []string{"small"}
		}
		if !setByUser["nets"] {
			o.nets = []string{"loopback"}
		}
		if !setByUser["load-time"] {
			o.loadTime = 2 * time.Second
		}
		if !setByUser["latency-jobs"] {
			o.latencyN = 10
		}
	}
	if o.write == "auto" {
		o.write = "BENCHMARKS.md"
		if o.quick {
			o.write = ""
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	b := &bench{opt: o}
	err := b.run(ctx)
	b.cleanup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func (b *bench) run(ctx context.Context) error {
	o := b.opt
	if os.Geteuid() != 0 {
		return fmt.Errorf("run as root: loop devices, network namespaces, tc and memory cgroups need it")
	}
	for _, p := range []string{"bin/api", "bin/worker"} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s is missing: run `make build` from the repository root first", p)
		}
	}
	for _, t := range []string{"qemu-img", "mkfs.ext4", "sha256sum", "minio", "losetup"} {
		if _, err := lookPath(t); err != nil {
			return fmt.Errorf("%s is not on PATH (make deps installs it)", t)
		}
	}
	if has(o.nets, "shaped") {
		for _, t := range []string{"ip", "tc"} {
			if _, err := lookPath(t); err != nil {
				return fmt.Errorf("%s is not on PATH (iproute2)", t)
			}
		}
	}
	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return err
	}
	b.runDir = filepath.Join(o.dir, "run-"+time.Now().Format("20060102-150405"))
	if err := os.MkdirAll(b.runDir, 0o755); err != nil {
		return err
	}
	b.machine = describeMachine(o.dir)
	logf("machine: %s", b.machine.oneLine())
	if o.clones {
		return b.runClones(ctx)
	}

	// Images.
	for _, name := range o.images {
		img, err := buildImage(ctx, o.dir, name)
		if err != nil {
			return fmt.Errorf("image %s: %w", name, err)
		}
		b.images = append(b.images, img)
	}
	tiny, err := buildImage(ctx, o.dir, "tiny")
	if err != nil {
		return fmt.Errorf("image tiny: %w", err)
	}

	// Object stores.
	for _, n := range o.nets {
		var s *store
		switch n {
		case "loopback":
			s, err = b.startLoopbackMinIO(ctx)
		case "shaped":
			s, err = b.startShapedMinIO(ctx)
		default:
			return fmt.Errorf("unknown network %q (loopback, shaped)", n)
		}
		if err != nil {
			return err
		}
		b.stores = append(b.stores, s)
	}
	for _, s := range b.stores {
		for _, img := range append(append([]*image{}, b.images...), tiny) {
			if err := s.upload(ctx, img); err != nil {
				return fmt.Errorf("upload %s to %s: %w", img.name, s.name, err)
			}
		}
	}

	// Services.
	if err := b.startAPI(ctx); err != nil {
		return err
	}
	if err := b.setupCgroup(); err != nil {
		return err
	}

	// Loop devices, one per image, sized to its virtual size.
	if has(o.targets, "loop") {
		for _, img := range b.images {
			dev, err := b.loopDevice(img)
			if err != nil {
				return err
			}
			img.loopDev = dev
		}
	}

	res := newResults()
	b.res = res
	// Network-independent: the convert step of (a) and (b), and the
	// project's convert stage alone, into each target.
	for _, img := range b.images {
		src := filepath.Join(b.runDir, "dl-"+img.name+".qcow2")
		if err := b.stores[0].get(ctx, img, src); err != nil {
			return err
		}
		for r := 0; r < o.runs; r++ {
			for _, t := range o.targets {
				if err := b.convertSteps(ctx, img, src, t, r); err != nil {
					return err
				}
			}
		}
		os.Remove(src)
	}
	// Per network: the download steps of (a)/(b) and the project's jobs.
	for _, s := range b.stores {
		if err := b.startWorker(ctx, s, "bench"); err != nil {
			return err
		}
		for _, img := range b.images {
			for r := 0; r < o.runs; r++ {
				logf("%s · %s · run %d/%d", img.name, s.name, r+1, o.runs)
				if err := b.downloadSteps(ctx, s, img); err != nil {
					return err
				}
				if err := b.projectJobs(ctx, s, img); err != nil {
					return err
				}
			}
		}
		if err := b.stopWorker(); err != nil {
			return err
		}
	}
	if o.apiLoad {
		if err := b.apiLoad(ctx, b.stores[0], tiny); err != nil {
			return err
		}
	}
	out := b.report()
	fmt.Println(out)
	if o.write != "" {
		if err := writeSection(o.write, out); err != nil {
			return err
		}
		logf("wrote the table into %s", o.write)
	}
	return nil
}
