package messaging

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Limits bound what the provisioner's streams and buckets may hold.
type Limits struct {
	// Replicas of every stream and bucket (1 on one machine, 3 on a cluster).
	Replicas int
	// JobRetention is how long a job record lives after its last update.
	JobRetention time.Duration
	// MaxQueuedJobs bounds the job stream.
	MaxQueuedJobs int64
	// EventRetention is how long progress events are kept.
	EventRetention time.Duration
	// EventReplicas are the progress event stream's replicas (0: 1, at
	// most Replicas). Events are a replay aid for watchers that came
	// late; the job record, with Replicas, is the job's state, and the
	// API's SSE stream is read from it. One replica spares the cluster a
	// Raft round per event (about six per job): a node that dies takes its
	// kept events with it, never a job.
	EventReplicas int
	// MaxHosts bounds the fleet: the job stream's consumer limit (one
	// consumer per host). Set explicitly, so nats-server's default of 1,000
	// consumers per stream (default_max_consumers) never applies.
	MaxHosts int
	// Dispatch is how jobs reach their host's worker (DispatchLimits
	// unless set).
	Dispatch Dispatch
}

// Dispatch names a layout of the job stream and its consumers.
type Dispatch string

// The dispatch layouts. Both keep every job in the R3 job stream until its
// record is terminal; they differ in the consumers:
//
//   - DispatchLimits: a limits stream and one R1 consumer per host in
//     memory. A consumer is cheap (no Raft group of its own), and losing it
//     with its node loses no job: the stream holds exactly the jobs that
//     have not ended (the API purges a job's message once its record is
//     terminal), so the consumer the API creates again delivers them all
//     again, and the job records fence what already ran or is running.
//   - DispatchWorkQueue: a work-queue stream, which JetStream requires to
//     have consumers of its own replica count: one R3 consumer (a Raft group
//     of three) per host. An ack removes the message.
const (
	DispatchLimits    Dispatch = "limits"
	DispatchWorkQueue Dispatch = "workqueue"
)

// ParseDispatch checks a dispatch setting ("" is DispatchLimits).
func ParseDispatch(v string) (Dispatch, error) {
	switch Dispatch(v) {
	case "", DispatchLimits:
		return DispatchLimits, nil
	case DispatchWorkQueue:
		return DispatchWorkQueue, nil
	}
	return "", fmt.Errorf("dispatch %q: want %s or %s", v, DispatchLimits, DispatchWorkQueue)
}

func (l Limits) dispatch() Dispatch {
	if l.Dispatch == "" {
		return DispatchLimits
	}
	return l.Dispatch
}

// DefaultMaxHosts is the fleet maximum when none is configured.
const DefaultMaxHosts = 10_000

// ErrFleetFull: the job stream has a consumer for as many hosts as the
// fleet maximum allows.
var ErrFleetFull = errors.New("the fleet is at its maximum number of hosts")

// HostConsumerError explains a failure to create host's job consumer: the
// server's "maximum consumers limit reached" becomes ErrFleetFull naming
// the limit and the setting that raises it.
func HostConsumerError(err error, host string, maxHosts int) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeMaximumConsumersLimit {
		limit := "the configured maximum"
		if maxHosts > 0 {
			limit = fmt.Sprintf("%d hosts", maxHosts)
		}
		return fmt.Errorf("host %s: %w (%s; raise PROVISIONER_MAX_HOSTS on the API, or remove hosts that are gone): %v", host, ErrFleetFull, limit, err)
	}
	return fmt.Errorf("create the job consumer of host %s: %w", host, err)
}

// DefaultLimits are the limits used when none are configured.
func DefaultLimits() Limits {
	return Limits{Replicas: 1, JobRetention: 7 * 24 * time.Hour, MaxQueuedJobs: 100_000, EventRetention: 24 * time.Hour, MaxHosts: DefaultMaxHosts, Dispatch: DispatchLimits}
}

// JobStreamConfig is the configuration of the job stream.
func JobStreamConfig(s Subjects, l Limits) jetstream.StreamConfig {
	retention, maxAge := jetstream.WorkQueuePolicy, time.Duration(0)
	if l.dispatch() == DispatchLimits {
		// The API purges a job's message when the job ends; the age
		// limit only drops what no worker ever took, after a job record
		// would have expired too.
		retention, maxAge = jetstream.LimitsPolicy, l.JobRetention
	}
	return jetstream.StreamConfig{
		Name:                 JobStream,
		Description:          "queued provisioning jobs, one subject per job",
		Subjects:             []string{s.AllJobs()},
		Retention:            retention,
		MaxAge:               maxAge,
		Storage:              jetstream.FileStorage,
		Replicas:             l.Replicas,
		MaxMsgs:              l.MaxQueuedJobs,
		MaxBytes:             256 << 20,
		MaxMsgSize:           MaxJobMessageBytes,
		MaxMsgsPerSubject:    1,
		Discard:              jetstream.DiscardNew,
		DiscardNewPerSubject: true,
		Duplicates:           2 * time.Minute,
		AllowDirect:          true,
		MaxConsumers:         l.maxHosts(),
	}
}

func (l Limits) maxHosts() int {
	if l.MaxHosts <= 0 {
		return DefaultMaxHosts
	}
	return l.MaxHosts
}

// eventReplicas is EventReplicas within its bounds.
func (l Limits) eventReplicas() int {
	return min(max(l.EventReplicas, 1), max(l.Replicas, 1))
}

// EventStreamConfig is the configuration of the progress event stream.
func EventStreamConfig(s Subjects, l Limits) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              EventStream,
		Description:       "job progress events, kept for replay",
		Subjects:          []string{s.AllEvents()},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          l.eventReplicas(),
		MaxAge:            l.EventRetention,
		MaxBytes:          128 << 20,
		MaxMsgsPerSubject: 500,
		Discard:           jetstream.DiscardOld,
		AllowDirect:       true,
	}
}

// BucketConfigs are the configurations of the KV buckets.
func BucketConfigs(l Limits) []jetstream.KeyValueConfig {
	return []jetstream.KeyValueConfig{
		{Bucket: JobBucket, Description: "job records, <host>.<job_id>", TTL: l.JobRetention, MaxBytes: 256 << 20, Replicas: l.Replicas, Storage: jetstream.FileStorage},
		{Bucket: CacheBucket, Description: "image cache index, <host>.<sha256>", MaxBytes: 64 << 20, Replicas: l.Replicas, Storage: jetstream.FileStorage},
		{Bucket: HostBucket, Description: "host registry, <host>", MaxBytes: 16 << 20, Replicas: l.Replicas, Storage: jetstream.FileStorage},
		{Bucket: VolumeBucket, Description: "volume leases, <host>.<volume>", MaxBytes: 16 << 20, Replicas: l.Replicas, Storage: jetstream.FileStorage},
		{Bucket: IdempotencyBucket, Description: "Idempotency-Key to job, sha256(caller, key)", TTL: 24 * time.Hour, MaxBytes: 64 << 20, Replicas: l.Replicas, Storage: jetstream.FileStorage},
	}
}

// ReservedBytes is the storage the streams and buckets reserve together
// (800 MiB); JetStream's storage limit must be at least this.
const ReservedBytes = (256 + 128 + 256 + 64 + 16 + 16 + 64) << 20

// Setup creates or updates the streams and KV buckets. It is idempotent and
// is run by the API at start-up; workers only bind to what it made.
func Setup(ctx context.Context, js jetstream.JetStream, s Subjects, l Limits) error {
	if err := replaceEmptyJobStream(ctx, js, JobStreamConfig(s, l)); err != nil {
		return err
	}
	for _, cfg := range []jetstream.StreamConfig{JobStreamConfig(s, l), EventStreamConfig(s, l)} {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("create stream %s: %w", cfg.Name, err)
		}
	}
	for _, cfg := range BucketConfigs(l) {
		if _, err := js.CreateOrUpdateKeyValue(ctx, cfg); err != nil {
			return fmt.Errorf("create KV bucket %s: %w", cfg.Bucket, err)
		}
	}
	return nil
}

// ErrDispatchChange: the job stream exists with another dispatch layout and
// still holds jobs.
var ErrDispatchChange = errors.New("the job stream has another dispatch layout and still holds jobs")

// replaceEmptyJobStream deletes the job stream when it exists with another
// retention than cfg's (a change of dispatch layout, which JetStream cannot
// make in place) and holds no job; its consumers go with it and the
// workers ask for new ones. A stream that still holds jobs is kept.
func replaceEmptyJobStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) error {
	st, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read stream %s: %w", cfg.Name, err)
	}
	info := st.CachedInfo()
	if info.Config.Retention == cfg.Retention {
		return nil
	}
	if info.State.Msgs > 0 {
		was := DispatchLimits
		if info.Config.Retention == jetstream.WorkQueuePolicy {
			was = DispatchWorkQueue
		}
		return fmt.Errorf("%w: stream %s holds %d jobs queued under the %s layout; run the API with PROVISIONER_DISPATCH=%s until they have ended, then change it",
			ErrDispatchChange, cfg.Name, info.State.Msgs, was, was)
	}
	if err := js.DeleteStream(ctx, cfg.Name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("replace the empty stream %s for a new dispatch layout: %w", cfg.Name, err)
	}
	return nil
}

// Buckets are the KV buckets, bound.
type Buckets struct {
	Jobs, Cache, Hosts, Volumes jetstream.KeyValue
}

// BindBuckets binds the KV buckets made by Setup.
func BindBuckets(ctx context.Context, js jetstream.JetStream) (Buckets, error) {
	var b Buckets
	for _, x := range []struct {
		name string
		dst  *jetstream.KeyValue
	}{{JobBucket, &b.Jobs}, {CacheBucket, &b.Cache}, {HostBucket, &b.Hosts}, {VolumeBucket, &b.Volumes}} {
		kv, err := js.KeyValue(ctx, x.name)
		if err != nil {
			if errors.Is(err, jetstream.ErrBucketNotFound) {
				return b, fmt.Errorf("KV bucket %s does not exist (the API creates it at start-up): %w", x.name, err)
			}
			return b, fmt.Errorf("bind KV bucket %s: %w", x.name, err)
		}
		*x.dst = kv
	}
	return b, nil
}

// ConsumerConfig is the durable consumer of host's worker, as
// DispatchLimits makes it: one replica, in memory (Dispatch.Consumer
// adjusts it for another layout).
func ConsumerConfig(s Subjects, host string, ackWait time.Duration, maxDeliver int) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Replicas:      1,
		MemoryStorage: true,
		Durable:       ConsumerName(host),
		Description:   "jobs of host " + host,
		FilterSubject: s.JobsFilter(host),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxAckPending: 2,
		MaxDeliver:    maxDeliver,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
}

// Consumer is cfg as the layout d needs it: DispatchWorkQueue consumers
// have the stream's replicas and storage, as JetStream requires of a
// work-queue stream's consumers.
func (d Dispatch) Consumer(cfg jetstream.ConsumerConfig) jetstream.ConsumerConfig {
	if d == DispatchWorkQueue {
		cfg.Replicas, cfg.MemoryStorage = 0, false
	}
	return cfg
}
