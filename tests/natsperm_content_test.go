package tests

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// permContent: uploads wait in a content bucket per host (an Object
// Store). hv-01's worker reads its own host's upload with the direct gets
// messaging.ReadContent makes, and cannot read hv-02's (its bucket's info,
// metadata or chunks), nor write, delete or purge even its own bucket;
// hv-02's worker reads its own.
func permContent(t *testing.T, apiJS, js1, js2 jetstream.JetStream, nc1 *nats.Conn, errs1 *permErrs, replicas int) {
	ctx := permCtx(t, 30*time.Second)
	data := map[string][]byte{"hv-01": bytes.Repeat([]byte("one."), 70000), "hv-02": []byte("hv-02's secret seed")}
	for host, body := range data {
		store, err := apiJS.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: messaging.ContentBucket(host), Replicas: replicas, Storage: jetstream.FileStorage})
		require.NoError(t, err)
		_, err = store.Put(ctx, jetstream.ObjectMeta{Name: "obj-" + host}, bytes.NewReader(body))
		require.NoError(t, err)
	}
	var got bytes.Buffer
	info, err := messaging.ReadContent(ctx, js1, "hv-01", "obj-hv-01", &got, nil)
	require.NoError(t, err)
	require.Equal(t, data["hv-01"], got.Bytes())
	require.Greater(t, info.Chunks, uint32(1))
	got.Reset()
	_, err = messaging.ReadContent(ctx, js2, "hv-02", "obj-hv-02", &got, nil)
	require.NoError(t, err)
	require.Equal(t, data["hv-02"], got.Bytes())

	short := func() context.Context { return permCtx(t, time.Second) }
	other := messaging.ContentStream("hv-02")
	own := messaging.ContentStream("hv-01")
	_, err = messaging.ReadContent(short(), js1, "hv-02", "obj-hv-02", &got, nil)
	require.Error(t, err)
	errs1.waitViolation(t, "publish", permLocal("$JS.API.STREAM.INFO."+other))
	for _, req := range []struct{ subject, body string }{
		{"$JS.API.DIRECT.GET." + other, `{"seq":1}`},
		{"$JS.API.DIRECT.GET." + other + ".$O." + messaging.ContentBucket("hv-02") + ".M.b2JqLWh2LTAy", ""},
		{"$JS.API.STREAM.MSG.GET." + other, `{"seq":1}`},
		{"$JS.API.STREAM.MSG.GET." + own, `{"seq":1}`},
		{"$JS.API.STREAM.PURGE." + own, `{}`},
		{"$JS.API.STREAM.DELETE." + own, ``},
		{"$JS.API.CONSUMER.CREATE." + own, `{}`},
		{"$O." + messaging.ContentBucket("hv-01") + ".C.forged", "x"},
	} {
		subject := req.subject
		if !strings.HasPrefix(subject, "$O.") {
			subject = permLocal(subject)
		}
		_, err := nc1.Request(subject, []byte(req.body), time.Second)
		require.Error(t, err, subject)
		errs1.waitViolation(t, "publish", subject)
	}
	// hv-02's upload is whole.
	got.Reset()
	_, err = messaging.ReadContent(ctx, js2, "hv-02", "obj-hv-02", &got, nil)
	require.NoError(t, err)
	require.Equal(t, data["hv-02"], got.Bytes())
}
