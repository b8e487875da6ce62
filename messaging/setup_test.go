package messaging_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

func TestDefaultLimits(t *testing.T) {
	t.Parallel()
	require.Equal(t, messaging.Limits{
		Replicas:       1,
		JobRetention:   7 * 24 * time.Hour,
		MaxQueuedJobs:  100_000,
		EventRetention: 24 * time.Hour,
		MaxHosts:       messaging.DefaultMaxHosts,
		Dispatch:       messaging.DispatchLimits,
	}, messaging.DefaultLimits())
}

func TestReservedBytesMatchesConfigs(t *testing.T) {
	t.Parallel()
	s, l := messaging.NewSubjects(""), messaging.DefaultLimits()
	sum := messaging.JobStreamConfig(s, l).MaxBytes + messaging.EventStreamConfig(s, l).MaxBytes
	for _, b := range messaging.BucketConfigs(l) {
		sum += b.MaxBytes
	}
	require.Equal(t, int64(messaging.ReservedBytes), sum)
	require.Equal(t, int64(800<<20), sum)
}

func TestBucketConfigs(t *testing.T) {
	t.Parallel()
	l := messaging.Limits{Replicas: 3, JobRetention: time.Hour, MaxQueuedJobs: 5, EventRetention: time.Minute}
	cfgs := messaging.BucketConfigs(l)
	require.Len(t, cfgs, 5)
	names := make([]string, 0, len(cfgs))
	for _, c := range cfgs {
		names = append(names, c.Bucket)
		require.Equal(t, 3, c.Replicas, c.Bucket)
		require.Equal(t, jetstream.FileStorage, c.Storage, c.Bucket)
		switch c.Bucket {
		case messaging.JobBucket:
			require.Equal(t, time.Hour, c.TTL)
		case messaging.IdempotencyBucket:
			require.Equal(t, 24*time.Hour, c.TTL)
		default:
			require.Zero(t, c.TTL, c.Bucket)
		}
	}
	require.Equal(t, []string{"provisioner_jobs", "provisioner_cache", "provisioner_hosts", "provisioner_volumes", "provisioner_idempotency"}, names)
}

func TestConsumerConfig(t *testing.T) {
	t.Parallel()
	got := messaging.ConsumerConfig(messaging.NewSubjects("acme"), "hv-01", 45*time.Second, 7)
	want := jetstream.ConsumerConfig{
		Replicas:      1,
		MemoryStorage: true,
		Durable:       "worker-hv-01",
		Description:   "jobs of host hv-01",
		FilterSubject: "acme.jobs.hv-01.>",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       45 * time.Second,
		MaxAckPending: 2,
		MaxDeliver:    7,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	require.Equal(t, want, got)
	require.Equal(t, want, messaging.DispatchLimits.Consumer(got))
	// A work-queue stream's consumers take its replicas and storage.
	want.Replicas, want.MemoryStorage = 0, false
	require.Equal(t, want, messaging.DispatchWorkQueue.Consumer(got))
}

func TestParseDispatch(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]messaging.Dispatch{"": messaging.DispatchLimits, "limits": messaging.DispatchLimits, "workqueue": messaging.DispatchWorkQueue} {
		got, err := messaging.ParseDispatch(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	_, err := messaging.ParseDispatch("interest")
	require.ErrorContains(t, err, `dispatch "interest": want limits or workqueue`)
}

// Changing the dispatch layout replaces an empty job stream and refuses to
// touch one that still holds jobs.
func TestSetupChangesDispatchOnlyOfAnEmptyStream(t *testing.T) {
	t.Parallel()
	js := startJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := messaging.NewSubjects("")
	wq, lim := messaging.DefaultLimits(), messaging.DefaultLimits()
	wq.Dispatch = messaging.DispatchWorkQueue

	require.NoError(t, messaging.Setup(ctx, js, s, wq))
	require.NoError(t, messaging.Setup(ctx, js, s, lim))
	st, err := js.Stream(ctx, messaging.JobStream)
	require.NoError(t, err)
	require.Equal(t, jetstream.LimitsPolicy, st.CachedInfo().Config.Retention)
	require.Equal(t, 7*24*time.Hour, st.CachedInfo().Config.MaxAge)

	_, err = js.Publish(ctx, s.Job("hv-01", "00000000-0000-4000-8000-000000000001"), []byte("{}"))
	require.NoError(t, err)
	err = messaging.Setup(ctx, js, s, wq)
	require.ErrorIs(t, err, messaging.ErrDispatchChange)
	require.ErrorContains(t, err, "holds 1 jobs queued under the limits layout; run the API with PROVISIONER_DISPATCH=limits until they have ended")
	st, err = js.Stream(ctx, messaging.JobStream)
	require.NoError(t, err)
	require.Equal(t, uint64(1), st.CachedInfo().State.Msgs, "the queued job is still there")
}

func TestSetupIsIdempotent(t *testing.T) {
	t.Parallel()
	js := startJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, l := messaging.NewSubjects(""), messaging.DefaultLimits()

	require.NoError(t, messaging.Setup(ctx, js, s, l))
	require.NoError(t, messaging.Setup(ctx, js, s, l))

	jobs, err := js.Stream(ctx, messaging.JobStream)
	require.NoError(t, err)
	jc := jobs.CachedInfo().Config
	require.Equal(t, []string{"provisioner.jobs.>"}, jc.Subjects)
	require.Equal(t, jetstream.LimitsPolicy, jc.Retention)
	require.Equal(t, jetstream.FileStorage, jc.Storage)
	require.Equal(t, int64(1), jc.MaxMsgsPerSubject)
	require.Equal(t, jetstream.DiscardNew, jc.Discard)
	require.True(t, jc.DiscardNewPerSubject)
	require.True(t, jc.AllowDirect)
	require.Equal(t, int64(100_000), jc.MaxMsgs)
	require.Equal(t, int64(256<<20), jc.MaxBytes)
	require.Equal(t, int32(messaging.MaxJobMessageBytes), jc.MaxMsgSize)
	require.Equal(t, 2*time.Minute, jc.Duplicates)

	events, err := js.Stream(ctx, messaging.EventStream)
	require.NoError(t, err)
	ec := events.CachedInfo().Config
	require.Equal(t, []string{"provisioner.events.>"}, ec.Subjects)
	require.Equal(t, jetstream.LimitsPolicy, ec.Retention)
	require.Equal(t, 24*time.Hour, ec.MaxAge)
	require.Equal(t, int64(500), ec.MaxMsgsPerSubject)
	require.Equal(t, jetstream.DiscardOld, ec.Discard)
	require.True(t, ec.AllowDirect)

	wantTTL := map[string]time.Duration{
		messaging.JobBucket:    7 * 24 * time.Hour,
		messaging.CacheBucket:  0,
		messaging.HostBucket:   0,
		messaging.VolumeBucket: 0,
	}
	for bucket, ttl := range wantTTL {
		kv, err := js.KeyValue(ctx, bucket)
		require.NoError(t, err, bucket)
		st, err := kv.Status(ctx)
		require.NoError(t, err, bucket)
		require.Equal(t, ttl, st.TTL(), bucket)
		require.Equal(t, bucket, st.Bucket())
	}

	b, err := messaging.BindBuckets(ctx, js)
	require.NoError(t, err)
	require.Equal(t, messaging.JobBucket, b.Jobs.Bucket())
	require.Equal(t, messaging.CacheBucket, b.Cache.Bucket())
	require.Equal(t, messaging.HostBucket, b.Hosts.Bucket())
	require.Equal(t, messaging.VolumeBucket, b.Volumes.Bucket())
}

func TestSetupUpdatesLimits(t *testing.T) {
	t.Parallel()
	js := startJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := messaging.NewSubjects("")

	require.NoError(t, messaging.Setup(ctx, js, s, messaging.DefaultLimits()))
	l := messaging.DefaultLimits()
	l.JobRetention = time.Hour
	l.EventRetention = 10 * time.Minute
	l.MaxQueuedJobs = 10
	require.NoError(t, messaging.Setup(ctx, js, s, l))

	jobs, err := js.Stream(ctx, messaging.JobStream)
	require.NoError(t, err)
	require.Equal(t, int64(10), jobs.CachedInfo().Config.MaxMsgs)
	events, err := js.Stream(ctx, messaging.EventStream)
	require.NoError(t, err)
	require.Equal(t, 10*time.Minute, events.CachedInfo().Config.MaxAge)
	kv, err := js.KeyValue(ctx, messaging.JobBucket)
	require.NoError(t, err)
	st, err := kv.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, time.Hour, st.TTL())
}

func TestSetupCustomPrefix(t *testing.T) {
	t.Parallel()
	js := startJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	require.NoError(t, messaging.Setup(ctx, js, messaging.NewSubjects("acme"), messaging.DefaultLimits()))
	jobs, err := js.Stream(ctx, messaging.JobStream)
	require.NoError(t, err)
	require.Equal(t, []string{"acme.jobs.>"}, jobs.CachedInfo().Config.Subjects)
	events, err := js.Stream(ctx, messaging.EventStream)
	require.NoError(t, err)
	require.Equal(t, []string{"acme.events.>"}, events.CachedInfo().Config.Subjects)
}

func TestJobStreamRefusesSecondMessageOnSubject(t *testing.T) {
	t.Parallel()
	js := startJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := messaging.NewSubjects("")
	require.NoError(t, messaging.Setup(ctx, js, s, messaging.DefaultLimits()))

	subject := s.Job("hv-01", testJobID)
	ack, err := js.Publish(ctx, subject, []byte(`{"n":1}`))
	require.NoError(t, err)
	require.Equal(t, messaging.JobStream, ack.Stream)
	require.Equal(t, uint64(1), ack.Sequence)

	_, err = js.Publish(ctx, subject, []byte(`{"n":2}`))
	require.Error(t, err)
	var apiErr *jetstream.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, "maximum messages per subject exceeded", apiErr.Description)
	require.Contains(t, err.Error(), "API error: code=503 err_code=10077 description=maximum messages per subject exceeded")
	require.Equal(t, 503, apiErr.Code)
	require.Equal(t, jetstream.ErrorCode(10077), apiErr.ErrorCode)

	// The first message is what stays queued.
	msg, err := js.Stream(ctx, messaging.JobStream)
	require.NoError(t, err)
	got, err := msg.GetLastMsgForSubject(ctx, subject)
	require.NoError(t, err)
	require.Equal(t, `{"n":1}`, string(got.Data))

	// Another job's subject is unaffected.
	_, err = js.Publish(ctx, s.Job("hv-01", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"), []byte(`{}`))
	require.NoError(t, err)
}

func TestJobStreamDeduplicatesByMsgID(t *testing.T) {
	t.Parallel()
	js := startJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := messaging.NewSubjects("")
	require.NoError(t, messaging.Setup(ctx, js, s, messaging.DefaultLimits()))

	subject := s.Job("hv-01", testJobID)
	ack, err := js.Publish(ctx, subject, []byte(`{}`), jetstream.WithMsgID(testJobID))
	require.NoError(t, err)
	require.False(t, ack.Duplicate)
	ack, err = js.Publish(ctx, subject, []byte(`{}`), jetstream.WithMsgID(testJobID))
	require.NoError(t, err)
	require.True(t, ack.Duplicate)
	require.Equal(t, uint64(1), ack.Sequence)
}

func TestJobStreamRefusesOversizeMessage(t *testing.T) {
	t.Parallel()
	js := startJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := messaging.NewSubjects("")
	require.NoError(t, messaging.Setup(ctx, js, s, messaging.DefaultLimits()))

	_, err := js.Publish(ctx, s.Job("hv-01", testJobID), make([]byte, messaging.MaxJobMessageBytes+1))
	var apiErr *jetstream.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, jetstream.ErrorCode(10054), apiErr.ErrorCode, err.Error())
}

func TestBindBucketsBeforeSetup(t *testing.T) {
	t.Parallel()
	js := startJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	_, err := messaging.BindBuckets(ctx, js)
	require.True(t, errors.Is(err, jetstream.ErrBucketNotFound), "got %v", err)
	require.EqualError(t, err, "KV bucket provisioner_jobs does not exist (the API creates it at start-up): "+jetstream.ErrBucketNotFound.Error())
}

// nats.Header is what HeaderCarrier wraps; make sure headers survive a trip
// through the job stream.
func TestJobHeadersRoundTrip(t *testing.T) {
	t.Parallel()
	js := startJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := messaging.NewSubjects("")
	require.NoError(t, messaging.Setup(ctx, js, s, messaging.DefaultLimits()))

	msg := nats.NewMsg(s.Job("hv-01", testJobID))
	msg.Data = []byte(`{}`)
	c := messaging.HeaderCarrier(msg.Header)
	c.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	msg.Header.Set(messaging.HeaderJobVersion, "1")
	_, err := js.PublishMsg(ctx, msg)
	require.NoError(t, err)

	stream, err := js.Stream(ctx, messaging.JobStream)
	require.NoError(t, err)
	got, err := stream.GetLastMsgForSubject(ctx, msg.Subject)
	require.NoError(t, err)
	gc := messaging.HeaderCarrier(got.Header)
	require.Equal(t, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", gc.Get("Traceparent"))
	require.Equal(t, "1", gc.Get(messaging.HeaderJobVersion))
}

// TestFleetLargerThanServerDefault: nats-server allows 1,000 consumers per
// stream unless the stream says otherwise; the job stream says so, so
// host 1,001 (and more) gets its consumer, and a host past the configured
// maximum is refused with an error naming the limit.
func TestFleetLargerThanServerDefault(t *testing.T) {
	t.Parallel()
	js := startJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := messaging.NewSubjects("")
	l := messaging.DefaultLimits()
	l.MaxHosts = 1_100
	require.NoError(t, messaging.Setup(ctx, js, s, l))
	create := func(i int) error {
		host := fmt.Sprintf("hv-%04d", i)
		_, err := js.CreateOrUpdateConsumer(ctx, messaging.JobStream, messaging.ConsumerConfig(s, host, time.Minute, 5))
		if err != nil {
			return messaging.HostConsumerError(err, host, l.MaxHosts)
		}
		return nil
	}
	for i := range 1_100 {
		require.NoError(t, create(i), "host %d", i+1)
	}
	err := create(1_100)
	require.ErrorIs(t, err, messaging.ErrFleetFull)
	require.Contains(t, err.Error(), "1100 hosts; raise PROVISIONER_MAX_HOSTS")

	// The limit can be raised on a running stream.
	l.MaxHosts = 1_200
	require.NoError(t, messaging.Setup(ctx, js, s, l))
	require.NoError(t, create(1_100))
}

// TestEventStreamReplicas: the event stream has one replica unless more are
// asked for, never more than the job records, which keep Replicas.
func TestEventStreamReplicas(t *testing.T) {
	t.Parallel()
	s := messaging.NewSubjects("")
	for _, c := range []struct{ replicas, events, want int }{{3, 0, 1}, {3, 1, 1}, {3, 3, 3}, {3, 5, 3}, {1, 3, 1}, {0, 0, 1}} {
		l := messaging.Limits{Replicas: c.replicas, EventReplicas: c.events, EventRetention: time.Minute}
		require.Equal(t, c.want, messaging.EventStreamConfig(s, l).Replicas, "replicas %d, event replicas %d", c.replicas, c.events)
		require.Equal(t, c.replicas, messaging.JobStreamConfig(s, l).Replicas)
	}
}
