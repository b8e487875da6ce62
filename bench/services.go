package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

const (
	accessKey = "provisioner"
	secretKey = "provisioner-secret"
	bucket    = "images"
)

type bench struct {
	opt      options
	runDir   string
	machine  machineInfo
	images   []*image
	stores   []*store
	res      *results
	cleanups []func()

	apiURL        string
	natsURL       string
	dataDir       string
	apiCmd        *exec.Cmd
	worker        *exec.Cmd
	workerDone    chan struct{}
	workerEP      string
	cgroup        string // memory cgroup directory of the worker ("" when unavailable)
	cgroupV2      bool
	workerVersion string
	http          *http.Client
}

// store is a MinIO server the benchmark reads from.
type store struct {
	name     string // loopback or shaped
	label    string // for the table
	endpoint string
	client   *minio.Client
}

func (b *bench) onCleanup(f func()) { b.cleanups = append(b.cleanups, f) }

func (b *bench) cleanup() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
	b.cleanups = nil
	if b.runDir != "" && !b.opt.keepFiles {
		// Keep the logs of the last run, drop volumes, cache and NATS data.
		logs := filepath.Join(b.opt.dir, "last-logs")
		os.RemoveAll(logs)
		os.MkdirAll(logs, 0o755)
		for _, l := range []string{"api.log", "worker.log", "minio-loopback.log", "minio-shaped.log"} {
			os.Rename(filepath.Join(b.runDir, l), filepath.Join(logs, l))
		}
		os.RemoveAll(b.runDir)
	}
}

func freeAddr(host string) (string, error) {
	l, err := net.Listen("tcp", host+":0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// start runs a command with its output in logPath; the cleanup stops it
// (SIGTERM, then SIGKILL after 10 s), by its own pid.
func (b *bench) start(cmd *exec.Cmd, logPath string) error {
	_, err := b.startDone(cmd, logPath)
	return err
}

func (b *bench) startDone(cmd *exec.Cmd, logPath string) (chan struct{}, error) {
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); lf.Close(); close(done) }()
	b.onCleanup(func() { stopProcess(cmd, done) })
	return done, nil
}

func stopProcess(cmd *exec.Cmd, done chan struct{}) {
	select {
	case <-done:
		return
	default:
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func waitHTTP(ctx context.Context, url string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer within %s", url, d)
}

func (b *bench) startLoopbackMinIO(ctx context.Context) (*store, error) {
	addr, err := freeAddr("127.0.0.1")
	if err != nil {
		return nil, err
	}
	data := filepath.Join(b.opt.dir, "minio-loopback")
	cmd := exec.Command("minio", "server", "--quiet", "--address", addr, "--console-address", "127.0.0.1:0", data)
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+accessKey, "MINIO_ROOT_PASSWORD="+secretKey, "MINIO_BROWSER=off")
	if err := b.start(cmd, filepath.Join(b.runDir, "minio-loopback.log")); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, "http://"+addr+"/minio/health/live", 30*time.Second); err != nil {
		return nil, err
	}
	logf("MinIO on loopback at %s", addr)
	return newStore("loopback", "loopback", addr)
}

// startShapedMinIO puts a MinIO server in a network namespace of its own,
// reached over a veth pair shaped to 1 Gbit/s each way (bench/netns.sh).
func (b *bench) startShapedMinIO(ctx context.Context) (*store, error) {
	pid := os.Getpid()
	ns := fmt.Sprintf("pvbench-%d", pid)
	hif, nif := fmt.Sprintf("pvb%dh", pid%1000000), fmt.Sprintf("pvb%dn", pid%1000000)
	oct := 16 + pid%200
	haddr, naddr := fmt.Sprintf("10.213.%d.1", oct), fmt.Sprintf("10.213.%d.2", oct)
	script, _ := filepath.Abs("bench/netns.sh")
	if err := run(ctx, script, "up", ns, hif, nif, haddr, naddr, "1gbit"); err != nil {
		exec.Command(script, "down", ns, hif).Run()
		return nil, err
	}
	b.onCleanup(func() { exec.Command(script, "down", ns, hif).Run() })
	addr := naddr + ":9000"
	data := filepath.Join(b.opt.dir, "minio-shaped")
	cmd := exec.Command("ip", "netns", "exec", ns, "minio", "server", "--quiet", "--address", addr, "--console-address", naddr+":9001", data)
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+accessKey, "MINIO_ROOT_PASSWORD="+secretKey, "MINIO_BROWSER=off")
	if err := b.start(cmd, filepath.Join(b.runDir, "minio-shaped.log")); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, "http://"+addr+"/minio/health/live", 30*time.Second); err != nil {
		return nil, err
	}
	logf("MinIO in netns %s at %s, link %s<->%s shaped to 1 Gbit/s (tbf)", ns, addr, hif, nif)
	return newStore("shaped", "1 Gbit/s", addr)
}

func newStore(name, label, endpoint string) (*store, error) {
	c, err := minio.New(endpoint, &minio.Options{Creds: credentials.NewStaticV4(accessKey, secretKey, "")})
	if err != nil {
		return nil, err
	}
	return &store{name: name, label: label, endpoint: endpoint, client: c}, nil
}

func (s *store) url(img *image) string {
	return fmt.Sprintf("http://%s/%s/%s", s.endpoint, bucket, img.object)
}

// upload puts the image and its .sha256 into the bucket unless an earlier
// run left the same one there.
func (s *store) upload(ctx context.Context, img *image) error {
	if ok, err := s.client.BucketExists(ctx, bucket); err != nil {
		return err
	} else if !ok {
		if err := s.client.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
			return err
		}
	}
	if st, err := s.client.StatObject(ctx, bucket, img.object, minio.StatObjectOptions{}); err == nil && st.Size == img.size {
		if o, err := s.client.GetObject(ctx, bucket, img.object+".sha256", minio.GetObjectOptions{}); err == nil {
			b, _ := io.ReadAll(o)
			o.Close()
			if strings.HasPrefix(string(b), img.sha) {
				return nil
			}
		}
	}
	logf("uploading %s to MinIO (%s)...", img.name, s.name)
	if _, err := s.client.FPutObject(ctx, bucket, img.object, img.path, minio.PutObjectOptions{}); err != nil {
		return err
	}
	line := img.sha + "  " + filepath.Base(img.object) + "\n"
	_, err := s.client.PutObject(ctx, bucket, img.object+".sha256", strings.NewReader(line), int64(len(line)), minio.PutObjectOptions{})
	return err
}

func (b *bench) startAPI(ctx context.Context) error {
	httpAddr, err := freeAddr("127.0.0.1")
	if err != nil {
		return err
	}
	natsAddr, err := freeAddr("127.0.0.1")
	if err != nil {
		return err
	}
	b.dataDir = filepath.Join(b.runDir, "var")
	var eps []string
	for _, s := range b.stores {
		eps = append(eps, s.endpoint)
	}
	cmd := exec.Command("bin/api")
	cmd.Env = append(os.Environ(), "PROVISIONER_HTTP_ADDR="+httpAddr, "PROVISIONER_NATS_LISTEN="+natsAddr,
		"PROVISIONER_DATA_DIR="+b.dataDir, "PROVISIONER_DEFAULT_HYPERVISOR=bench",
		"PROVISIONER_IMAGE_ENDPOINTS="+strings.Join(eps, ","), "PROVISIONER_LOG_LEVEL=warn")
	if err := b.start(cmd, filepath.Join(b.runDir, "api.log")); err != nil {
		return err
	}
	b.apiCmd = cmd
	b.apiURL, b.natsURL = "http://"+httpAddr, "nats://"+natsAddr
	b.http = &http.Client{Transport: &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute}, Timeout: 30 * time.Second}
	if err := waitHTTP(ctx, b.apiURL+"/livez", 30*time.Second); err != nil {
		return fmt.Errorf("API: %w (log %s)", err, filepath.Join(b.runDir, "api.log"))
	}
	logf("API at %s, embedded NATS at %s", b.apiURL, b.natsURL)
	return nil
}

// startWorker starts bin/worker for host, reading from store s, as
// scripts/run.sh does, and moves it into the benchmark's memory cgroup.
func (b *bench) startWorker(ctx context.Context, s *store, host string) error {
	addr, err := freeAddr("127.0.0.1")
	if err != nil {
		return err
	}
	logPath := filepath.Join(b.runDir, "worker.log")
	before := fileSize(logPath)
	cmd := exec.Command("bin/worker")
	cmd.Env = append(os.Environ(), "PROVISIONER_HTTP_ADDR="+addr, "PROVISIONER_HOST="+host, "PROVISIONER_NATS_URL="+b.natsURL,
		"PROVISIONER_NATS_NKEY="+filepath.Join(b.dataDir, "credentials", "worker.nk"),
		"PROVISIONER_CACHE_DIR="+filepath.Join(b.runDir, "cache-"+host), "PROVISIONER_VOLUME_BACKEND=file",
		"PROVISIONER_VOLUME_DIR="+filepath.Join(b.runDir, "volumes-"+host),
		"MINIO_ENDPOINT="+s.endpoint, "MINIO_ACCESS_KEY="+accessKey, "MINIO_SECRET_KEY="+secretKey,
		"PROVISIONER_LOG_LEVEL=info")
	done, err := b.startDone(cmd, logPath)
	if err != nil {
		return err
	}
	if host == "bench" {
		b.worker, b.workerDone, b.workerEP = cmd, done, s.endpoint
		if b.cgroup != "" {
			if err := os.WriteFile(filepath.Join(b.cgroup, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
				return fmt.Errorf("move the worker into cgroup %s: %w", b.cgroup, err)
			}
		}
	}
	if err := waitHTTP(ctx, "http://"+addr+"/livez", 60*time.Second); err != nil {
		return fmt.Errorf("worker: %w (log %s)", err, logPath)
	}
	for i := 0; i < 300; i++ {
		if bytes.Contains(readFrom(logPath, before), []byte(`"worker started"`)) {
			if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if m := versionRE.FindSubmatch(body); m != nil {
					b.workerVersion = string(m[1])
				}
			}
			logf("worker %s (pid %d, version %s) reading from %s", host, cmd.Process.Pid, b.workerVersion, s.endpoint)
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("worker %s did not log \"worker started\" (log %s)", host, logPath)
}

func (b *bench) stopWorker() error {
	if b.worker == nil {
		return nil
	}
	stopProcess(b.worker, b.workerDone)
	b.worker = nil
	return nil
}

var versionRE = regexp.MustCompile(`worker_info\{[^}]*version="([^"]*)"`)

func fileSize(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.Size()
}

func readFrom(p string, off int64) []byte {
	f, err := os.Open(p)
	if err != nil {
		return nil
	}
	defer f.Close()
	f.Seek(off, io.SeekStart)
	b, _ := io.ReadAll(f)
	return b
}

// setupCgroup makes a memory cgroup for the worker as a child of the
// benchmark's own (so it stays inside whatever limits apply to us).
func (b *bench) setupCgroup() error {
	var fsType syscall.Statfs_t
	if err := syscall.Statfs("/sys/fs/cgroup", &fsType); err != nil {
		logf("no /sys/fs/cgroup: worker memory from /proc only")
		return nil
	}
	const cgroup2Magic = 0x63677270
	b.cgroupV2 = fsType.Type == cgroup2Magic
	var base string
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if b.cgroupV2 && parts[0] == "0" {
			base = filepath.Join("/sys/fs/cgroup", parts[2])
		}
		if !b.cgroupV2 && hasField(parts[1], "memory") {
			base = filepath.Join("/sys/fs/cgroup/memory", parts[2])
		}
	}
	f.Close()
	if base == "" {
		logf("no memory cgroup found: worker memory from /proc only")
		return nil
	}
	dir := filepath.Join(base, fmt.Sprintf("provisioner-bench-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		if b.cgroupV2 {
			logf("cannot create cgroup %s (%v; on cgroup v2 the memory controller must be enabled in the parent's subtree_control): worker memory from /proc only", dir, err)
			return nil
		}
		logf("cannot create cgroup %s (%v): worker memory from /proc only", dir, err)
		return nil
	}
	b.cgroup = dir
	b.onCleanup(func() {
		// The worker has exited by now (cleanups run in reverse order).
		for i := 0; i < 50; i++ {
			if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		logf("could not remove cgroup %s", dir)
	})
	logf("worker memory cgroup %s (cgroup v%d)", dir, map[bool]int{true: 2, false: 1}[b.cgroupV2])
	return nil
}

func hasField(list, s string) bool {
	for _, f := range strings.Split(list, ",") {
		if f == s {
			return true
		}
	}
	return false
}

// loopDevice attaches a sparse backing file sized to the image's virtual
// size to a free loop device.
func (b *bench) loopDevice(img *image) (string, error) {
	backing := filepath.Join(b.runDir, "loop-"+img.name+".img")
	f, err := os.Create(backing)
	if err != nil {
		return "", err
	}
	err = f.Truncate(img.virtual)
	f.Close()
	if err != nil {
		return "", err
	}
	out, err := exec.Command("losetup", "-f", "--show", backing).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	b.onCleanup(func() {
		if err := exec.Command("losetup", "-d", dev).Run(); err != nil {
			logf("losetup -d %s: %v", dev, err)
		}
	})
	logf("loop device %s over %s (%d GiB)", dev, backing, img.virtual>>30)
	return dev, nil
}
