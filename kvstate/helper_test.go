package kvstate_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// startBuckets runs an in-process nats-server with JetStream for one test,
// sets up the provisioner's streams and buckets on it and returns them bound.
// The server and the connection are closed when the test ends.
func startBuckets(t *testing.T) messaging.Buckets {
	t.Helper()
	js := testenv.JetStream(t)
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

// startState is startBuckets bound as kvstate.Open binds it for the API,
// with the client it was bound on.
func startState(t *testing.T) (kvstate.State, jetstream.JetStream) {
	t.Helper()
	js := testenv.JetStream(t)
	ctx := testCtx(t)
	require.NoError(t, messaging.Setup(ctx, js, messaging.NewSubjects(""), messaging.DefaultLimits()))
	st, err := kvstate.Open(ctx, js, messaging.NewSubjects(""))
	require.NoError(t, err)
	return st, js
}
