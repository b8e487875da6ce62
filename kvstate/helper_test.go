package kvstate_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// startBuckets runs an in-process nats-server with JetStream for one test,
// sets up the provisioner's streams and buckets on it and returns them bound.
// The server and the connection are closed when the test ends.
func startBuckets(t *testing.T) messaging.Buckets {
	t.Helper()
	ns, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoSigs:    true,
		NoLog:     true,
		// The streams and buckets reserve messaging.ReservedBytes (~736 MiB).
		JetStreamMaxStore:  2 << 30,
		JetStreamMaxMemory: 256 << 20,
	})
	require.NoError(t, err)
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		t.Fatal("nats-server did not become ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
		require.NoError(t, err)
	}
	t.Cleanup(func() {
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
	})

	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := testCtx(t)
	require.NoError(t, messaging.Setup(ctx, js, messaging.NewSubjects(""), messaging.DefaultLimits()))
	b, err := messaging.BindBuckets(ctx, js)
	require.NoError(t, err)
	return b
}

// testCtx is a context that ends with the test or after 20 seconds.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
