package source

import (
	"os"
	"testing"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

// minio is the MinIO server process the package's tests share.
var sharedMinIO testenv.SharedMinIO

func TestMain(m *testing.M) {
	os.Exit(sharedMinIO.Main(m, nil))
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
