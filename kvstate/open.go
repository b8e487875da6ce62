package kvstate

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// State is the shared state an API replica reads and writes, bound: the
// job records, the cache index, the host registry, the volume
// reservations, the Idempotency-Keys, the job queue and the uploads.
type State struct {
	Jobs         Jobs
	Cache        CacheIndex
	Hosts        Hosts
	Reservations Reservations
	Idempotency  Idempotency
	Queue        JobQueue
	// Uploads has no replicas or TTL set: the caller sets them.
	Uploads Uploads
}

// Open binds the buckets and streams messaging.Setup made.
func Open(ctx context.Context, js jetstream.JetStream, subjects messaging.Subjects) (State, error) {
	b, err := messaging.BindBuckets(ctx, js)
	if err != nil {
		return State{}, err
	}
	idem, err := js.KeyValue(ctx, messaging.IdempotencyBucket)
	if err != nil {
		return State{}, fmt.Errorf("bind KV bucket %s: %w", messaging.IdempotencyBucket, err)
	}
	// A KV bucket is stored in the stream KV_<bucket>.
	records, err := js.Stream(ctx, "KV_"+messaging.JobBucket)
	if err != nil {
		return State{}, fmt.Errorf("bind the job records' stream: %w", err)
	}
	jobStream, err := js.Stream(ctx, messaging.JobStream)
	if err != nil {
		return State{}, fmt.Errorf("bind stream %s: %w", messaging.JobStream, err)
	}
	jobs := Jobs{KV: b.Jobs, records: records}
	return State{
		Jobs:         jobs,
		Cache:        CacheIndex{KV: b.Cache},
		Hosts:        Hosts{KV: b.Hosts},
		Reservations: Reservations{KV: b.Volumes, Jobs: jobs},
		Idempotency:  Idempotency{KV: idem},
		Queue:        JobQueue{js: js, stream: jobStream, subjects: subjects},
		Uploads:      Uploads{JS: js},
	}, nil
}

// Check asks the job, cache and host buckets for their state: an error
// names the first that does not answer.
func (st State) Check(ctx context.Context) error {
	for _, kv := range []jetstream.KeyValue{st.Jobs.KV, st.Cache.KV, st.Hosts.KV} {
		if _, err := kv.Status(ctx); err != nil {
			return fmt.Errorf("KV bucket %s does not answer: %w", kv.Bucket(), err)
		}
	}
	return nil
}
