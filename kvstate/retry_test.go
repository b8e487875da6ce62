package kvstate_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
)

func startServer(t *testing.T, port int, dir string) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true})
	require.NoError(t, err)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second))
	return ns
}

// TestRetryingRidesOutAnOutage: a KV write issued while the server is down
// (what a worker sees during a leader election: no response from the
// stream) fails at once without Retrying and succeeds with it once the
// server is back, within the budget.
func TestRetryingRidesOutAnOutage(t *testing.T) {
	t.Parallel()
	port, err := testenv.FreePort()
	require.NoError(t, err)
	dir := t.TempDir()
	ns := startServer(t, port, dir)
	nc, err := nats.Connect(ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.RetryOnFailedConnect(true))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := testCtx(t)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "retry", Storage: jetstream.FileStorage})
	require.NoError(t, err)
	_, err = kv.Put(ctx, "a", []byte("1"))
	require.NoError(t, err)

	ns.Shutdown()
	ns.WaitForShutdown()
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = kv.Put(short, "a", []byte("2"))
	cancel()
	require.Error(t, err, "the outage is real")
	require.True(t, kvstate.Transient(err), "a write during the outage fails transiently: %v", err)

	restarted := make(chan *server.Server, 1)
	go func() {
		time.Sleep(1500 * time.Millisecond)
		restarted <- startServer(t, port, dir)
	}()
	t.Cleanup(func() {
		s := <-restarted
		s.Shutdown()
		s.WaitForShutdown()
	})
	start := time.Now()
	rev, err := kvstate.Retrying(kv, 20*time.Second).Put(ctx, "a", []byte("3"))
	require.NoError(t, err, "retried until the server was back")
	require.Greater(t, time.Since(start), time.Second)
	e, err := kv.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, "3", string(e.Value()))
	require.Equal(t, rev, e.Revision())
}

func TestTransient(t *testing.T) {
	t.Parallel()
	require.True(t, kvstate.Transient(jetstream.ErrNoStreamResponse))
	require.True(t, kvstate.Transient(nats.ErrNoResponders))
	require.True(t, kvstate.Transient(context.DeadlineExceeded))
	require.True(t, kvstate.Transient(&jetstream.APIError{Code: 503, ErrorCode: 10008}))
	require.False(t, kvstate.Transient(jetstream.ErrKeyNotFound))
	require.False(t, kvstate.Transient(jetstream.ErrKeyExists))
	require.False(t, kvstate.Transient(&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence}))
	require.False(t, kvstate.Transient(nil))
}
