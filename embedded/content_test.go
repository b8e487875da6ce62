package embedded_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/embedded"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/natsconn"
)

// TestWorkerPermissionsContentBuckets: with embedded.WorkerPermissions a
// worker reads its own host's uploads and is refused another host's; the
// embedded server's shared key reads any host's but still not the API's
// idempotency bucket or the job stream's info.
func TestWorkerPermissionsContentBuckets(t *testing.T) {
	t.Parallel()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true,
		Users: []*server.User{{Username: "api", Password: "api"},
			{Username: "hv-01", Password: "w1", Permissions: embedded.WorkerPermissions("", "hv-01")},
			{Username: "shared", Password: "ws", Permissions: embedded.WorkerPermissions("", "*")}}})
	require.NoError(t, err)
	go s.Start()
	require.True(t, s.ReadyForConnections(10*time.Second))
	t.Cleanup(s.Shutdown)
	dial := func(user, pass, inbox string) (jetstream.JetStream, *errs) {
		e := &errs{}
		opts := []nats.Option{nats.UserInfo(user, pass), nats.ErrorHandler(e.handler)}
		if inbox != "" {
			opts = append(opts, nats.CustomInboxPrefix(inbox))
		}
		nc, err := nats.Connect(s.ClientURL(), opts...)
		require.NoError(t, err)
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		return js, e
	}
	apiJS, _ := dial("api", "api", "")
	ctx := ctxT(t, 30*time.Second)
	require.NoError(t, messaging.Setup(ctx, apiJS, messaging.NewSubjects(""), messaging.DefaultLimits()))
	data := map[string][]byte{"hv-01": bytes.Repeat([]byte{1, 2, 3}, 100000), "hv-02": []byte("two")}
	for host, body := range data {
		store, err := apiJS.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: messaging.ContentBucket(host)})
		require.NoError(t, err)
		_, err = store.Put(ctx, jetstream.ObjectMeta{Name: "o"}, bytes.NewReader(body))
		require.NoError(t, err)
	}

	w1, errs1 := dial("hv-01", "w1", natsconn.WorkerInboxPrefix("hv-01"))
	var got bytes.Buffer
	_, err = messaging.ReadContent(ctx, w1, "hv-01", "o", &got, nil)
	require.NoError(t, err)
	require.Equal(t, data["hv-01"], got.Bytes())
	_, err = messaging.ReadContent(ctxT(t, 1500*time.Millisecond), w1, "hv-02", "o", &got, nil)
	require.Error(t, err)
	errs1.waitFor(t, "Permissions Violation", "$JS.API.STREAM.INFO."+messaging.ContentStream("hv-02"))

	shared, errsS := dial("shared", "ws", "_INBOX_worker.local")
	for host, body := range data {
		got.Reset()
		_, err = messaging.ReadContent(ctx, shared, host, "o", &got, nil)
		require.NoError(t, err)
		require.Equal(t, body, got.Bytes())
	}
	_, err = shared.Stream(ctxT(t, 1500*time.Millisecond), "KV_"+messaging.IdempotencyBucket)
	require.Error(t, err)
	errsS.waitFor(t, "Permissions Violation", "$JS.API.STREAM.INFO.KV_"+messaging.IdempotencyBucket)
	_, err = shared.Stream(ctxT(t, 1500*time.Millisecond), messaging.JobStream)
	require.Error(t, err)
	errsS.waitFor(t, "Permissions Violation", "$JS.API.STREAM.INFO."+messaging.JobStream)
}
