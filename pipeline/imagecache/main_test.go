package imagecache

import (
	"context"
	"fmt"
	"os"
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
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/source"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"
)

// Shared by the package's tests: one MinIO server process and one embedded
// NATS server with JetStream; each test uses its own bucket and host name.
var (
	sharedMinIO testenv.SharedMinIO
	cacheKV     jetstream.KeyValue
	hostCounter atomic.Int64
)

func TestMain(m *testing.M) {
	os.Exit(sharedMinIO.Main(m, func(dir string) (func(), error) {
		ns, kv, err := startNATS(dir)
		if err != nil {
			return nil, fmt.Errorf("start nats: %w", err)
		}
		cacheKV = kv
		return func() {
			ns.Shutdown()
			ns.WaitForShutdown()
		}, nil
	}))
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
	return sharedMinIO.Bucket(t)
}

// testSource is a source.MinIO on the shared server.
func testSource(t *testing.T, m *testenv.MinIO) *source.MinIO {
	t.Helper()
	src, err := source.NewMinIO(m.Endpoint, m.AccessKey, m.SecretKey, false)
	require.NoError(t, err)
	return src
}

// testIndex is the real KV cache index, with a host name of the test's own.
func testIndex(t *testing.T) (kvstate.CacheIndex, string) {
	t.Helper()
	return kvstate.CacheIndex{KV: cacheKV}, fmt.Sprintf("host-%d", hostCounter.Add(1))
}

// ensure is Acquire with the hit's digest checked at once, released before
// it returns: the image is only made sure to be cached.
func ensure(ctx context.Context, c *Cache, src source.Source, ref messaging.ImageRef, progress stages.ProgressFunc) (kvstate.CacheEntry, bool, error) {
	e, hit, release, err := ensureInUse(ctx, c, src, ref, progress)
	if err != nil {
		return e, hit, err
	}
	release()
	return e, hit, nil
}

// ensureInUse is Acquire with the hit's digest checked at once; the image
// stays in use until release.
func ensureInUse(ctx context.Context, c *Cache, src source.Source, ref messaging.ImageRef, progress stages.ProgressFunc) (kvstate.CacheEntry, bool, func(), error) {
	f, err := c.Acquire(ctx, src, ref, AcquireOptions{Progress: progress, Hit: CheckNow})
	if err != nil {
		return kvstate.CacheEntry{}, false, nil, err
	}
	return f.Entry, f.Hit, f.Release, nil
}
