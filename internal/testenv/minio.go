package testenv

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// MinIO is a running MinIO server process.
type MinIO struct {
	// Endpoint is host:port on loopback.
	Endpoint  string
	AccessKey string
	SecretKey string
	Client    *minio.Client
	cmd       *exec.Cmd
	dir       string
	bin       string
	args      []string
	env       []string
	exited    chan struct{}
}

// Missing fails the test under CI (where every prerequisite must be present)
// and skips it elsewhere, saying what to install.
func Missing(tb testing.TB, what, install string) {
	tb.Helper()
	msg := fmt.Sprintf("%s not found: %s", what, install)
	if os.Getenv("CI") != "" {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
}

// MinIOBinary finds the minio server binary: $MINIO_BIN, PATH, or GOPATH/bin.
func MinIOBinary() (string, error) {
	if p := os.Getenv("MINIO_BIN"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("minio"); err == nil {
		return p, nil
	}
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		p := filepath.Join(string(bytes.TrimSpace(gopath)), "bin", "minio")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("minio server binary not found")
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
//
// The kernel may hand out a port again as soon as it is closed, so a port
// this process already returned is never returned twice (two servers of
// one test were given the same port this way).
func FreePort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !portsGiven[port] {
			portsGiven[port] = true
			return port, nil
		}
	}
	return 0, errors.New("no loopback port this process has not handed out already")
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// StartMinIO starts a MinIO server on a free loopback port with its data in
// dir. Stop it with Stop.
func StartMinIO(dir string) (*MinIO, error) {
	bin, err := MinIOBinary()
	if err != nil {
		return nil, fmt.Errorf("%w: run scripts/install-minio.sh", err)
	}
	var lastErr error
	for range 3 {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		cport, err := FreePort()
		if err != nil {
			return nil, err
		}
		m := &MinIO{Endpoint: "127.0.0.1:" + strconv.Itoa(port), AccessKey: "provisioner-test", SecretKey: "provisioner-test-secret", dir: dir, bin: bin}
		m.args = []string{"server", "--quiet", "--address", m.Endpoint, "--console-address", "127.0.0.1:" + strconv.Itoa(cport), filepath.Join(dir, "data")}
		m.env = append(os.Environ(), "MINIO_ROOT_USER="+m.AccessKey, "MINIO_ROOT_PASSWORD="+m.SecretKey, "MINIO_BROWSER=off", "MINIO_UPDATE=off")
		if lastErr = m.Start(); lastErr == nil {
			return m, nil
		}
	}
	return nil, lastErr
}

func (m *MinIO) waitReady(timeout time.Duration) error {
	c, err := minio.New(m.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, "")})
	if err != nil {
		return err
	}
	m.Client = c
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err = c.ListBuckets(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-m.exited:
			deadline = time.Now()
		default:
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(m.dir, "minio.log"))
	return fmt.Errorf("minio on %s not ready: %v\n%s", m.Endpoint, err, log)
}

// Start starts the server (again, after Stop) on the same address and
// data directory and waits until it answers.
func (m *MinIO) Start() error {
	if m.exited != nil {
		select {
		case <-m.exited:
		default:
			return fmt.Errorf("minio on %s is already running", m.Endpoint)
		}
	}
	logf, err := os.OpenFile(filepath.Join(m.dir, "minio.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	m.cmd = exec.Command(m.bin, m.args...)
	m.cmd.Env = m.env
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	if err := m.cmd.Start(); err != nil {
		m.cmd = nil
		return fmt.Errorf("start minio: %w", err)
	}
	exited := make(chan struct{})
	cmd := m.cmd
	go func() { _ = cmd.Wait(); close(exited) }()
	m.exited = exited
	if err := m.waitReady(30 * time.Second); err != nil {
		m.Stop()
		return err
	}
	return nil
}

// Stop kills the server (SIGKILL: connections break as in a crash) and
// waits for it to exit. Start starts it again.
func (m *MinIO) Stop() {
	if m.cmd != nil && m.cmd.Process != nil && m.exited != nil {
		_ = m.cmd.Process.Kill()
		<-m.exited
	}
}

// Restart stops the server, keeps it down for downFor, and starts it again
// on the same address and data directory.
func (m *MinIO) Restart(downFor time.Duration) error {
	m.Stop()
	time.Sleep(downFor)
	return m.Start()
}

// Bucket creates a bucket (ignoring "already exists").
func (m *MinIO) Bucket(ctx context.Context, name string) error {
	err := m.Client.MakeBucket(ctx, name, minio.MakeBucketOptions{})
	if err != nil {
		if exists, e2 := m.Client.BucketExists(ctx, name); e2 == nil && exists {
			return nil
		}
	}
	return err
}

// PutFile uploads a file as bucket/object.
func (m *MinIO) PutFile(ctx context.Context, bucket, object, path string) error {
	_, err := m.Client.FPutObject(ctx, bucket, object, path, minio.PutObjectOptions{})
	return err
}

// PutBytes uploads data as bucket/object.
func (m *MinIO) PutBytes(ctx context.Context, bucket, object string, data []byte) error {
	_, err := m.Client.PutObject(ctx, bucket, object, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{})
	return err
}

// PutImage uploads the file at path and, when withChecksum, its .sha256 in
// sha256sum format. It returns the image's URL and hex digest.
func (m *MinIO) PutImage(ctx context.Context, bucket, object, path string, withChecksum bool) (string, string, error) {
	if err := m.Bucket(ctx, bucket); err != nil {
		return "", "", err
	}
	if err := m.PutFile(ctx, bucket, object, path); err != nil {
		return "", "", err
	}
	digest, err := FileSHA256(path)
	if err != nil {
		return "", "", err
	}
	if withChecksum {
		line := fmt.Sprintf("%s  %s\n", digest, filepath.Base(object))
		if err := m.PutBytes(ctx, bucket, object+".sha256", []byte(line)); err != nil {
			return "", "", err
		}
	}
	return fmt.Sprintf("http://%s/%s/%s", m.Endpoint, bucket, object), digest, nil
}

// FileSHA256 is the hex SHA-256 of a file.
func FileSHA256(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}
