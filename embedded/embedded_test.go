package embedded_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/embedded"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/natsconn"
)

const testJobID = "550e8400-e29b-41d4-a716-446655440000"

func start(t *testing.T, dir string) *embedded.Server {
	t.Helper()
	s, err := embedded.Start(embedded.Options{Listen: "127.0.0.1:-1", DataDir: dir, MaxMemory: 64 << 20, MaxStore: 2 << 30})
	require.NoError(t, err)
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// errs collects a connection's asynchronous errors.
type errs struct {
	mu   sync.Mutex
	list []string
}

func (e *errs) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	e.mu.Lock()
	e.list = append(e.list, err.Error())
	e.mu.Unlock()
}

// waitFor waits until an error containing all of parts arrives.
func (e *errs) waitFor(t *testing.T, parts ...string) {
	t.Helper()
	require.Eventually(t, func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
	next:
		for _, s := range e.list {
			for _, p := range parts {
				if !strings.Contains(s, p) {
					continue next
				}
			}
			return true
		}
		return false
	}, 5*time.Second, 20*time.Millisecond, "no async error containing %q", parts)
}

func connect(t *testing.T, s *embedded.Server, c natsconn.Config) (*nats.Conn, *errs) {
	t.Helper()
	opts, err := natsconn.Options(c)
	require.NoError(t, err)
	e := &errs{}
	nc, err := nats.Connect(s.ClientURL(), append(opts, nats.ErrorHandler(e.handler))...)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return nc, e
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestAnonymousRefused(t *testing.T) {
	t.Parallel()
	s := start(t, t.TempDir())
	_, err := nats.Connect(s.ClientURL(), nats.Timeout(2*time.Second))
	require.Error(t, err)
	require.Contains(t, strings.ToLower(err.Error()), "authorization violation")

	// A key the server does not know is refused too.
	other, err := embedded.EnsureCredentials(t.TempDir())
	require.NoError(t, err)
	opts, err := natsconn.Options(natsconn.Config{NKeyFile: other.Admin})
	require.NoError(t, err)
	_, err = nats.Connect(s.ClientURL(), opts...)
	require.Error(t, err)
	require.Contains(t, strings.ToLower(err.Error()), "authorization violation")
}

func TestCredentialFilesAndRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := start(t, dir)
	c := s.Credentials
	require.Equal(t, embedded.Credentials{
		Dir:    filepath.Join(dir, "credentials"),
		API:    filepath.Join(dir, "credentials", "api.nk"),
		Worker: filepath.Join(dir, "credentials", "worker.nk"),
		Admin:  filepath.Join(dir, "credentials", "admin.nk"),
	}, c)
	st, err := os.Stat(c.Dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	seeds := map[string]string{}
	for _, p := range []string{c.API, c.Worker, c.Admin} {
		st, err := os.Stat(p)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), p)
		data, err := os.ReadFile(p)
		require.NoError(t, err)
		require.True(t, strings.HasPrefix(string(data), "SU"), p)
		seeds[p] = string(data)
	}
	require.Len(t, map[string]bool{seeds[c.API]: true, seeds[c.Worker]: true, seeds[c.Admin]: true}, 3, "three different keys")

	// The API and admin keys have full access.
	for _, key := range []string{c.API, c.Admin} {
		nc, _ := connect(t, s, natsconn.Config{NKeyFile: key})
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		_, err = js.AccountInfo(ctxT(t, 5*time.Second))
		require.NoError(t, err)
	}
	s.Shutdown()
	s.WaitForShutdown()

	// Loosened modes are tightened again, the keys are kept.
	require.NoError(t, os.Chmod(c.Dir, 0o755))
	require.NoError(t, os.Chmod(c.Worker, 0o644))
	s2 := start(t, dir)
	require.Equal(t, c, s2.Credentials)
	for p, seed := range seeds {
		data, err := os.ReadFile(p)
		require.NoError(t, err)
		require.Equal(t, seed, string(data), "restart reuses %s", p)
		st, err := os.Stat(p)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), p)
	}
	st, err = os.Stat(c.Dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	nc, _ := connect(t, s2, natsconn.Config{NKeyFile: c.API})
	require.True(t, nc.IsConnected())
}

func TestCorruptKeyRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "credentials"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "credentials", "worker.nk"), []byte("not a seed\n"), 0o600))
	_, err := embedded.Start(embedded.Options{Listen: "127.0.0.1:-1", DataDir: dir, MaxMemory: 64 << 20, MaxStore: 2 << 30})
	require.ErrorContains(t, err, filepath.Join(dir, "credentials", "worker.nk"))
}

// The worker key does a worker's work (on any host: one machine) and nothing
// else.
func TestWorkerKeyPermissions(t *testing.T) {
	t.Parallel()
	s := start(t, t.TempDir())
	subjects := messaging.NewSubjects("")

	apiNC, _ := connect(t, s, natsconn.Config{NKeyFile: s.Credentials.API, Name: "api"})
	apiJS, err := jetstream.New(apiNC)
	require.NoError(t, err)
	ctx := ctxT(t, 30*time.Second)
	require.NoError(t, messaging.Setup(ctx, apiJS, subjects, messaging.DefaultLimits()))
	_, err = apiJS.Publish(ctx, subjects.Job("local", testJobID), []byte(`{}`), jetstream.WithMsgID(testJobID))
	require.NoError(t, err)

	host := "local"
	wnc, werrs := connect(t, s, natsconn.Config{NKeyFile: s.Credentials.Worker, Name: "worker", InboxPrefix: natsconn.WorkerInboxPrefix(host)})
	wjs, err := jetstream.New(wnc)
	require.NoError(t, err)

	// What a worker does.
	b, err := messaging.BindBuckets(ctx, wjs)
	require.NoError(t, err)
	hosts := kvstate.Hosts{KV: b.Hosts}
	_, err = hosts.Claim(ctx, kvstate.Host{Name: host, MachineID: "m", LastSeen: time.Now().UTC(), Heartbeat: time.Second})
	require.NoError(t, err)
	// The API creates the consumer (api.Server.ServeWorkers); the worker binds it.
	_, err = apiJS.CreateOrUpdateConsumer(ctx, messaging.JobStream, messaging.ConsumerConfig(subjects, host, time.Minute, 5))
	require.NoError(t, err)
	cons, err := wjs.Consumer(ctx, messaging.JobStream, messaging.ConsumerName(host))
	require.NoError(t, err)
	_, err = cons.Info(ctx)
	require.NoError(t, err)
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	require.NoError(t, err)
	require.Equal(t, subjects.Job(host, testJobID), msg.Subject())
	require.NoError(t, msg.InProgress())
	jobs := kvstate.Jobs{KV: b.Jobs}
	m := messaging.Job{JobID: testJobID, ImageURL: "http://minio:9000/b/o.qcow2", VolumeName: "v", VolumeSizeGB: 1}
	m.Normalize()
	_, err = jobs.Create(ctx, kvstate.NewJob(m, host, time.Now().UTC()))
	require.NoError(t, err)
	_, _, err = jobs.Get(ctx, host, testJobID)
	require.NoError(t, err)
	lease, err := kvstate.Leases{KV: b.Volumes}.Acquire(ctx, host, "v", testJobID, time.Minute)
	require.NoError(t, err)
	require.NoError(t, lease.Release(ctx))
	cache := kvstate.CacheIndex{KV: b.Cache}
	require.NoError(t, cache.Put(ctx, host, kvstate.CacheEntry{Key: strings.Repeat("a", 64), Path: "/x"}))
	_, err = cache.Get(ctx, host, strings.Repeat("a", 64))
	require.NoError(t, err)
	require.NoError(t, wnc.Publish(subjects.Event(host, testJobID), []byte(`{}`)))
	require.NoError(t, msg.DoubleAck(ctx))
	require.NoError(t, wnc.Flush())

	short := func() context.Context { return ctxT(t, 1500*time.Millisecond) }
	// What it may not do: create any consumer (a consumer's creator picks
	// its deliver subject).
	_, err = wjs.CreateOrUpdateConsumer(short(), messaging.JobStream, messaging.ConsumerConfig(subjects, host, time.Minute, 5))
	require.Error(t, err)
	werrs.waitFor(t, "Permissions Violation", "$JS.API.CONSUMER.CREATE."+messaging.JobStream)
	_, err = b.Jobs.Watch(short(), host+"."+testJobID)
	require.Error(t, err)
	werrs.waitFor(t, "Permissions Violation", "$JS.API.CONSUMER.CREATE.KV_"+messaging.JobBucket)
	_, err = wjs.CreateStream(short(), jetstream.StreamConfig{Name: "EVIL", Subjects: []string{"evil.>"}})
	require.Error(t, err)
	werrs.waitFor(t, "Permissions Violation", "$JS.API.STREAM.CREATE.EVIL")

	require.Error(t, wjs.DeleteStream(short(), messaging.JobStream))
	werrs.waitFor(t, "Permissions Violation", "$JS.API.STREAM.DELETE."+messaging.JobStream)

	_, err = wjs.Publish(short(), subjects.Job(host, "6ba7b810-9dad-11d1-80b4-00c04fd430c8"), []byte(`{}`))
	require.Error(t, err)
	werrs.waitFor(t, "Permissions Violation", "Publish to \""+subjects.Job(host, "6ba7b810-9dad-11d1-80b4-00c04fd430c8")+"\"")

	_, err = wnc.SubscribeSync("_INBOX.>")
	require.NoError(t, err) // the refusal is asynchronous
	werrs.waitFor(t, "Permissions Violation", "Subscription to \"_INBOX.>\"")

	_, err = wnc.SubscribeSync(subjects.AllJobs())
	require.NoError(t, err)
	werrs.waitFor(t, "Permissions Violation", "Subscription to \""+subjects.AllJobs()+"\"")

	// The API still sees everything.
	rec, _, err := kvstate.Jobs{KV: mustBind(t, apiJS).Jobs}.Get(ctx, host, testJobID)
	require.NoError(t, err)
	require.Equal(t, testJobID, rec.JobID)
}

func mustBind(t *testing.T, js jetstream.JetStream) messaging.Buckets {
	b, err := messaging.BindBuckets(ctxT(t, 5*time.Second), js)
	require.NoError(t, err)
	return b
}
