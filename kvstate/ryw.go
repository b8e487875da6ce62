package kvstate

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A replicated bucket answers a direct get from any replica that is nearly
// caught up (nats-server serves direct gets from followers within 90% of
// the leader), so a read right after a write may miss it: a key the caller
// just created reads as not found, or an older revision comes back. There
// is no read option that names a minimum revision. ReadYourWrites closes
// the gap for one process: it remembers the revision of each key it wrote
// (or found to exist) and retries a read that returns less, briefly.

// rywWindow is how long a read that returns less than this process wrote is
// retried: followers catch up in milliseconds; a longer gap is a real
// outage, which the caller's own retries handle.
const rywWindow = 3 * time.Second

// rywKeep is how long a written revision is remembered, and rywPrune the
// number of remembered keys above which older ones are forgotten.
const (
	rywKeep  = time.Minute
	rywPrune = 1024
)

// ReadYourWrites wraps kv so that a Get returns at least what this process
// last wrote under the key (Create, Update, Put; a Create refused because
// the key exists counts as revision 1): a read that comes back not found or
// older is retried for up to a few seconds before it is returned as is.
func ReadYourWrites(kv jetstream.KeyValue) jetstream.KeyValue {
	return &rywKV{KeyValue: kv, seen: map[string]seenRev{}}
}

type seenRev struct {
	rev uint64
	at  time.Time
}

type rywKV struct {
	jetstream.KeyValue
	mu   sync.Mutex
	seen map[string]seenRev
}

func (r *rywKV) note(key string, rev uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if len(r.seen) >= rywPrune {
		for k, s := range r.seen {
			if now.Sub(s.at) > rywKeep {
				delete(r.seen, k)
			}
		}
	}
	if s, ok := r.seen[key]; !ok || rev >= s.rev {
		r.seen[key] = seenRev{rev: rev, at: now}
	}
}

func (r *rywKV) forget(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.seen, key)
}

// wrote is the revision this process last wrote under key (0: none known).
func (r *rywKV) wrote(key string) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.seen[key]
	if !ok || time.Since(s.at) > rywKeep {
		return 0
	}
	return s.rev
}

func (r *rywKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	deadline := time.Now().Add(rywWindow)
	wait := 10 * time.Millisecond
	for {
		e, err := r.KeyValue.Get(ctx, key)
		want := r.wrote(key)
		stale := want > 0 && (errors.Is(err, jetstream.ErrKeyNotFound) || err == nil && e.Revision() < want)
		if !stale || ctx.Err() != nil || time.Now().Add(wait).After(deadline) {
			if err == nil {
				r.note(key, e.Revision())
			}
			return e, err
		}
		select {
		case <-ctx.Done():
			return e, err
		case <-time.After(wait):
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

func (r *rywKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	rev, err := r.KeyValue.Create(ctx, key, value, opts...)
	switch {
	case err == nil:
		r.note(key, rev)
	case errors.Is(err, jetstream.ErrKeyExists):
		r.note(key, 1)
	}
	return rev, err
}

func (r *rywKV) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	rev, err := r.KeyValue.Update(ctx, key, value, revision)
	if err == nil {
		r.note(key, rev)
	}
	return rev, err
}

func (r *rywKV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	rev, err := r.KeyValue.Put(ctx, key, value)
	if err == nil {
		r.note(key, rev)
	}
	return rev, err
}

func (r *rywKV) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	err := r.KeyValue.Delete(ctx, key, opts...)
	r.forget(key)
	return err
}

func (r *rywKV) Purge(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	err := r.KeyValue.Purge(ctx, key, opts...)
	r.forget(key)
	return err
}
