package source

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

// minio is the MinIO server process the package's tests share.
var sharedMinIO testenv.SharedMinIO

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	if testenv.Fuzzing() {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "source-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := sharedMinIO.Start(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer sharedMinIO.Stop()
	return m.Run()
}

// needMinIO returns the shared MinIO server and a fresh bucket, or skips.
func needMinIO(t *testing.T) (*testenv.MinIO, string) {
	t.Helper()
	return sharedMinIO.Bucket(t)
}

// testSource is a MinIO source on the shared server.
func testSource(t *testing.T, m *testenv.MinIO) *MinIO {
	t.Helper()
	src, err := NewMinIO(m.Endpoint, m.AccessKey, m.SecretKey, false)
	if err != nil {
		t.Fatal(err)
	}
	return src
}
