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
	// MaxHosts bounds the fleet: the job stream's consumer limit (one
	// consumer per host). Set explicitly, so nats-server's default of 1,000
	// consumers per stream (default_max_consumers) never applies.
	MaxHosts int
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
	return Limits{Replicas: 1, JobRetention: 7 * 24 * time.Hour, MaxQueuedJobs: 100_000, EventRetention: 24 * time.Hour, MaxHosts: DefaultMaxHosts}
}

// JobStreamConfig is the configuration of the job stream.
func JobStreamConfig(s Subjects, l Limits) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:                 JobStream,
		Description:          "queued provisioning jobs, one subject per job",
		Subjects:             []string{s.AllJobs()},
		Retention:            jetstream.WorkQueuePolicy,
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

// EventStreamConfig is the configuration of the progress event stream.
func EventStreamConfig(s Subjects, l Limits) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              EventStream,
		Description:       "job progress events, kept for replay",
		Subjects:          []string{s.AllEvents()},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          l.Replicas,
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

// ConsumerConfig is the durable consumer of host's worker.
func ConsumerConfig(s Subjects, host string, ackWait time.Duration, maxDeliver int) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
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
