package testenv

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// SharedMinIO is one MinIO server process a package's tests share (started
// from TestMain), each test in a bucket of its own.
type SharedMinIO struct {
	srv  *MinIO
	skip string
	n    atomic.Int64
}

// Start starts the server with its data under dir. Without a minio binary
// it returns an error under CI, and elsewhere leaves the tests that need
// the server to skip, saying what to install.
func (s *SharedMinIO) Start(dir string) error {
	if _, err := MinIOBinary(); err != nil {
		s.skip = "minio server not found: run scripts/install-minio.sh"
		if os.Getenv("CI") != "" {
			return fmt.Errorf("%s", s.skip)
		}
		return nil
	}
	dir = filepath.Join(dir, "minio")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	srv, err := StartMinIO(dir)
	if err != nil {
		return fmt.Errorf("start minio: %w", err)
	}
	s.srv = srv
	return nil
}

// Stop stops the server, if it started.
func (s *SharedMinIO) Stop() {
	if s.srv != nil {
		s.srv.Stop()
	}
}

// Server returns the server, or skips the test when there is none.
func (s *SharedMinIO) Server(t testing.TB) *MinIO {
	t.Helper()
	if s.srv == nil {
		t.Skip(s.skip)
	}
	return s.srv
}

// Bucket returns the server and a fresh bucket named after the test.
func (s *SharedMinIO) Bucket(t testing.TB) (*MinIO, string) {
	t.Helper()
	m := s.Server(t)
	// S3 bucket names are lower-case letters, digits and hyphens.
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, strings.ToLower(t.Name()))
	bucket := fmt.Sprintf("t%d-%s", s.n.Add(1), name)
	if len(bucket) > 63 {
		bucket = bucket[:63]
	}
	bucket = strings.TrimRight(bucket, "-")
	require.NoError(t, m.Bucket(context.Background(), bucket))
	return m, bucket
}

// Fuzzing reports whether the test binary runs as a fuzzing coordinator or
// worker, which need none of the services a TestMain starts. Call it after
// flag.Parse.
func Fuzzing() bool {
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		return true
	}
	f := flag.Lookup("test.fuzzworker")
	return f != nil && f.Value.String() == "true"
}

// Main is the body of a TestMain whose tests share s: unless the binary is
// fuzzing, it starts s (and then also, when not nil, with a directory of
// its own; also returns what stops what it started) before the tests and
// stops everything after them. It returns the exit code.
func (s *SharedMinIO) Main(m *testing.M, also func(dir string) (stop func(), err error)) int {
	flag.Parse()
	if Fuzzing() {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := s.Start(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Stop()
	if also != nil {
		stop, err := also(filepath.Join(dir, "also"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer stop()
	}
	return m.Run()
}
