package natsauth_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/natsauth"
)

type testBundle struct {
	dir string
	op  *natsauth.Operator
	url string
	sys *nats.Conn
}

// setup makes an operator directory and runs an in-process server that
// trusts it, configured from its server.conf with a full resolver.
func setup(t *testing.T) testBundle {
	t.Helper()
	dir := t.TempDir()
	op, err := natsauth.Init(filepath.Join(dir, "op"), "")
	require.NoError(t, err)
	opts, err := server.ProcessConfigFile(filepath.Join(op.Dir, natsauth.ServerConfFile))
	require.NoError(t, err)
	opts.Host, opts.Port, opts.NoSigs = "127.0.0.1", -1, true
	opts.JetStream, opts.StoreDir = true, filepath.Join(dir, "js")
	opts.AccountResolver, err = server.NewDirAccResolver(filepath.Join(dir, "resolver"), 0, 2*time.Minute, server.NoDelete)
	require.NoError(t, err)
	s, err := server.NewServer(opts)
	require.NoError(t, err)
	go s.Start()
	require.True(t, s.ReadyForConnections(10*time.Second))
	t.Cleanup(s.Shutdown)
	sys, err := nats.Connect(s.ClientURL(), nats.UserCredentials(filepath.Join(op.Dir, natsauth.SystemCredsFile)))
	require.NoError(t, err)
	t.Cleanup(sys.Close)
	return testBundle{dir: dir, op: op, url: s.ClientURL(), sys: sys}
}

// apply pushes and commits c.
func (b testBundle) apply(t *testing.T, c *natsauth.Change) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, natsauth.Push(ctx, b.sys, c.JWTs...))
	require.NoError(t, b.op.Commit(c))
}

// creds writes host's credentials from c and returns the file.
func (b testBundle) creds(t *testing.T, c *natsauth.Change, host, name string) string {
	t.Helper()
	path := filepath.Join(b.dir, name)
	require.NoError(t, os.WriteFile(path, c.Creds[host], 0o600))
	return path
}

func TestEnrollRotateRevoke(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ch, err := b.op.Enroll("hv-01", "hv-02")
	require.NoError(t, err)
	b.apply(t, ch)
	first := b.creds(t, ch, "hv-01", "hv-01.creds")
	hv02 := b.creds(t, ch, "hv-02", "hv-02.creds")
	for _, c := range []string{first, hv02} {
		nc, err := nats.Connect(b.url, nats.UserCredentials(c))
		require.NoError(t, err, c)
		nc.Close()
	}

	// Enrolling again rotates: the connected worker with the first
	// credentials is disconnected, they are refused, the new ones work.
	revoked := make(chan error, 4)
	old, err := nats.Connect(b.url, nats.UserCredentials(first), nats.NoReconnect(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { revoked <- err }))
	require.NoError(t, err)
	defer old.Close()
	ch, err = b.op.Enroll("hv-01")
	require.NoError(t, err)
	b.apply(t, ch)
	requireRevoked(t, revoked)
	_, err = nats.Connect(b.url, nats.UserCredentials(first), nats.NoReconnect())
	require.ErrorIs(t, err, nats.ErrAuthorization)
	second := b.creds(t, ch, "hv-01", "hv-01-2.creds")
	nc, err := nats.Connect(b.url, nats.UserCredentials(second), nats.NoReconnect(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { revoked <- err }))
	require.NoError(t, err)
	defer nc.Close()

	// Revoking disconnects it; hv-02 stays.
	ch, err = b.op.Revoke("hv-01")
	require.NoError(t, err)
	b.apply(t, ch)
	requireRevoked(t, revoked)
	_, err = nats.Connect(b.url, nats.UserCredentials(second), nats.NoReconnect())
	require.ErrorIs(t, err, nats.ErrAuthorization)
	other, err := nats.Connect(b.url, nats.UserCredentials(hv02))
	require.NoError(t, err)
	other.Close()

	hosts, err := b.op.Hosts()
	require.NoError(t, err)
	require.Equal(t, map[string]bool{"hv-01": true, "hv-02": false}, hosts)

	// The directory reopens with what was committed.
	again, err := natsauth.Open(b.op.Dir)
	require.NoError(t, err)
	require.Equal(t, b.op.MainAccount, again.MainAccount)
	jwts, err := again.AccountJWTs()
	require.NoError(t, err)
	require.Len(t, jwts, 4, "two hosts, SYS, PROVISIONER")
}

// requireRevoked waits for nats.ErrAuthRevoked among a connection's errors.
func requireRevoked(t *testing.T, errs <-chan error) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case err := <-errs:
			if errors.Is(err, nats.ErrAuthRevoked) {
				return
			}
		case <-deadline:
			t.Fatal("the connection was not revoked within 5s")
		}
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, err := natsauth.Open(dir)
	require.ErrorIs(t, err, natsauth.ErrNotInitialized)
	op, err := natsauth.Init(filepath.Join(dir, "op"), "")
	require.NoError(t, err)
	_, err = natsauth.Init(op.Dir, "")
	require.ErrorContains(t, err, "already holds an operator")
	for _, host := range []string{"HV-01", "hv_01", "", "a.b", "hv-01/x"} {
		_, err := op.Enroll(host)
		require.ErrorIs(t, err, natsauth.ErrInvalidHost, host)
	}
	_, err = op.Enroll("hv-01", "hv-01")
	require.ErrorContains(t, err, "named twice")
	_, err = op.Revoke("hv-09")
	require.ErrorIs(t, err, natsauth.ErrNotEnrolled)
	_, err = natsauth.Init(filepath.Join(dir, "op2"), "bad.prefix")
	require.Error(t, err)
}
