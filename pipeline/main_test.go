package pipeline

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// Shared by the package's tests: one MinIO server process and one embedded
// NATS server with JetStream; each test uses its own bucket and host name.
var (
	minioSrv    *testenv.MinIO
	minioSkip   string
	cacheKV     jetstream.KeyValue
	testCounter atomic.Int64
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// Fuzzing (coordinator and workers) needs none of the services.
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		return m.Run()
	}
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "pipeline-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)

	if _, err := testenv.MinIOBinary(); err != nil {
		minioSkip = "minio server not found: run scripts/install-minio.sh"
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, minioSkip)
			return 1
		}
	} else {
		if err := os.Mkdir(dir+"/minio", 0o700); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		minioSrv, err = testenv.StartMinIO(dir + "/minio")
		if err != nil {
			fmt.Fprintln(os.Stderr, "start minio:", err)
			return 1
		}
		defer minioSrv.Stop()
	}

	ns, kv, err := startNATS(dir + "/nats")
	if err != nil {
		fmt.Fprintln(os.Stderr, "start nats:", err)
		return 1
	}
	defer ns.WaitForShutdown()
	defer ns.Shutdown()
	cacheKV = kv
	return m.Run()
}

// startNATS runs an in-process NATS server with JetStream and makes the
// provisioner's buckets in it.
func startNATS(storeDir string) (*server.Server, jetstream.KeyValue, error) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: storeDir, NoSigs: true})
	if err != nil {
		return nil, nil, err
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, nil, fmt.Errorf("nats server not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		ns.Shutdown()
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		ns.Shutdown()
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := messaging.Setup(ctx, js, messaging.NewSubjects(""), messaging.DefaultLimits()); err != nil {
		ns.Shutdown()
		return nil, nil, err
	}
	b, err := messaging.BindBuckets(ctx, js)
	if err != nil {
		ns.Shutdown()
		return nil, nil, err
	}
	return ns, b.Cache, nil
}

// needMinIO returns the shared MinIO server and a fresh bucket, or skips.
func needMinIO(t *testing.T) (*testenv.MinIO, string) {
	t.Helper()
	if minioSrv == nil {
		t.Skip(minioSkip)
	}
	bucket := fmt.Sprintf("t%d-%s", testCounter.Add(1), strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())))
	if len(bucket) > 63 {
		bucket = strings.TrimRight(bucket[:63], "-")
	}
	require.NoError(t, minioSrv.Bucket(context.Background(), bucket))
	return minioSrv, bucket
}

// testSource is a MinIOSource on the shared server.
func testSource(t *testing.T, m *testenv.MinIO) *MinIOSource {
	t.Helper()
	src, err := NewMinIOSource(m.Endpoint, m.AccessKey, m.SecretKey, false)
	require.NoError(t, err)
	return src
}

// testIndex is the real KV cache index, with a host name of the test's own.
func testIndex(t *testing.T) (kvstate.CacheIndex, string) {
	t.Helper()
	return kvstate.CacheIndex{KV: cacheKV}, fmt.Sprintf("host-%d", testCounter.Add(1))
}
