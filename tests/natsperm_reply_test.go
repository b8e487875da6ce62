package tests

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/natsconn"
	"github.com/libvirt-volume-provisioner/provisioner/worker"
)

// permInjection is what permNoReplyInjection works with: the servers, the
// keys, the connections of hv-01's and hv-02's workers, the buckets as
// hv-01's worker and as the API bound them, and the API's JetStream.
type permInjection struct {
	url      string
	keys     permKeys
	nc1, nc2 *nats.Conn
	worker1  messaging.Buckets
	api      messaging.Buckets
	apiJS    jetstream.JetStream
}

// permNoReplyInjection is the reply-subject attack: nats-server checks a
// message's subject against permissions but never its reply subject, and
// JetStream answers to whatever reply subject a request names. hv-01's
// worker makes requests it may make (a direct get and a put of its own key,
// its consumer's info, a pull of its own job) naming hv-02's job record,
// cache key, control subjects and events as the reply subject. In its own
// account (deploy/nats) the answers land there, not in PROVISIONER: hv-02's
// record is unchanged, its cache key does not appear, and nothing reaches
// hv-02's worker, the API or the event stream.
func permNoReplyInjection(t *testing.T, in permInjection) {
	s := messaging.NewSubjects("")
	ctx := permCtx(t, 30*time.Second)
	adminNC, _, _ := permConnect(t, in.url, natsconn.Config{CredsFile: in.keys.admin, Name: "admin-injection"})
	var subs []*nats.Subscription
	for _, w := range []struct {
		nc      *nats.Conn
		subject string
	}{{in.nc2, s.Control("hv-02")}, {adminNC, s.Control("hv-02")}, {adminNC, s.Prefix + ".events.hv-02.>"}} {
		sub, err := w.nc.SubscribeSync(w.subject)
		require.NoError(t, err)
		require.NoError(t, w.nc.Flush())
		subs = append(subs, sub)
	}
	before, err := in.api.Jobs.Get(ctx, "hv-02."+permJobB)
	require.NoError(t, err)
	cacheKey := "hv-02." + strings.Repeat("c", 64)

	// hv-01's own record, holding what it wants hv-02's to say, and a job
	// waiting on its own consumer.
	forged := []byte(`{"job_id":"` + permJobB + `","host":"hv-02","status":"completed","forged":true}`)
	_, err = in.worker1.Jobs.Put(ctx, "hv-01.forged", forged)
	require.NoError(t, err)
	id := uuid.NewString()
	_, err = in.apiJS.Publish(ctx, s.Job("hv-01", id), []byte(`{"job_id":"`+id+`"}`), jetstream.WithMsgID(id))
	require.NoError(t, err)

	get := permLocal("$JS.API.DIRECT.GET.KV_" + messaging.JobBucket + ".$KV." + messaging.JobBucket + ".hv-01.forged")
	put := permLocal("$KV." + messaging.JobBucket + ".hv-01.forged")
	info := permLocal("$JS.API.CONSUMER.INFO." + messaging.JobStream + "." + messaging.ConsumerName("hv-01"))
	next := permLocal("$JS.API.CONSUMER.MSG.NEXT." + messaging.JobStream + "." + messaging.ConsumerName("hv-01"))
	replies := []string{
		"$KV." + messaging.JobBucket + ".hv-02." + permJobB,
		permLocal("$KV." + messaging.JobBucket + ".hv-02." + permJobB),
		"$KV." + messaging.CacheBucket + "." + cacheKey,
		s.CacheDelete("hv-02"),
		s.JobChanged("hv-02", permJobB),
		s.Event("hv-02", permJobB),
	}
	for _, reply := range replies {
		require.NoError(t, in.nc1.PublishRequest(get, reply, nil))
		require.NoError(t, in.nc1.PublishRequest(put, reply, forged))
		require.NoError(t, in.nc1.PublishRequest(info, reply, nil))
	}
	// Its waiting job, pulled with hv-02's cache delete subject as the
	// subject the job is delivered on.
	require.NoError(t, in.nc1.PublishRequest(next, s.CacheDelete("hv-02"), []byte(`{"batch":1,"expires":2000000000}`)))
	require.NoError(t, in.nc1.Flush())

	time.Sleep(time.Second)
	after, err := in.api.Jobs.Get(ctx, "hv-02."+permJobB)
	require.NoError(t, err)
	require.Equal(t, before.Revision(), after.Revision(), "hv-02's job record was rewritten: %s", after.Value())
	_, err = in.api.Cache.Get(ctx, cacheKey)
	require.True(t, errors.Is(err, jetstream.ErrKeyNotFound), "hv-02's cache key was written: %v", err)
	for _, sub := range subs {
		m, err := sub.NextMsg(time.Second)
		require.ErrorIs(t, err, nats.ErrTimeout, "a message reached %s: %v", sub.Subject, m)
	}
}

// permRequestsAcrossAccounts checks both request/reply paths between the
// API's account and hv-01's: the worker's request to the API
// (provisioner.api.hosts.hv-01.…, which PROVISIONER exports) is answered,
// and so is the API's control request (provisioner.control.hv-01.…, which
// hv-01's account exports), each exactly once.
func permRequestsAcrossAccounts(t *testing.T, apiNC, nc1 *nats.Conn) {
	s := messaging.NewSubjects("")
	served, err := apiNC.QueueSubscribe(s.Prefix+".api.hosts.>", "provisioner-api", func(m *nats.Msg) {
		_ = m.Respond([]byte(`{"consumer":"worker-hv-01"}`))
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = served.Unsubscribe() })
	require.NoError(t, apiNC.Flush())
	reply := permRequest(t, nc1, s.Prefix+".api.hosts.hv-01.consumer", []byte(`{}`))
	require.JSONEq(t, `{"consumer":"worker-hv-01"}`, string(reply.Data))

	control, err := nc1.Subscribe(s.Control("hv-01"), func(m *nats.Msg) {
		_ = m.Respond([]byte(`{"result":"not_found"}`))
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = control.Unsubscribe() })
	require.NoError(t, nc1.Flush())
	reply = permRequest(t, apiNC, s.CacheDelete("hv-01"), []byte(`{"key":"x","caller":"test"}`))
	require.JSONEq(t, `{"result":"not_found"}`, string(reply.Data))
}

// permRequest sends a request until it is answered: on a cluster the
// responder's interest reaches the other nodes a moment after it subscribes
// ("no responders" meanwhile), as a worker starting before the API sees.
func permRequest(t *testing.T, nc *nats.Conn, subject string, body []byte) *nats.Msg {
	t.Helper()
	var reply *nats.Msg
	var last error
	require.Eventually(t, func() bool {
		reply, last = nc.Request(subject, body, 2*time.Second)
		return last == nil
	}, 15*time.Second, 100*time.Millisecond, "request on %s: %v", subject, last)
	return reply
}

// permWorkerBinds starts the worker's own set-up (worker.New: bind the
// streams and buckets) with the JetStream API prefix of its host account.
func permWorkerBinds(t *testing.T, nc1 *nats.Conn) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	cfg := worker.Config{Host: "hv-01", MachineID: "m1", JSAPIPrefix: permJSPrefix}
	_, err := worker.New(permCtx(t, 20*time.Second), cfg, nc1, messaging.NewSubjects(""), worker.Parts{}, log)
	require.NoError(t, err, "worker.New with PROVISIONER_NATS_JS_PREFIX=%s", permJSPrefix)
}
