package kvstate

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultRetryBudget is how long Retrying keeps retrying one KV operation:
// longer than a JetStream leader election (a few seconds), shorter than a
// worker's ack wait.
const DefaultRetryBudget = 30 * time.Second

// retryTry bounds one try, so a request lost during an election is sent
// again instead of waiting out the caller's whole deadline.
const retryTry = 3 * time.Second

// Transient reports whether err is one a JetStream cluster returns while it
// elects a leader or a node restarts: no response from the stream, no
// responders, a timeout, or "temporarily unavailable". A retry may then
// succeed; every other error is final.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 10008: JetStream system temporarily unavailable; 10009: the
		// cluster cannot handle the request (no leader yet).
		return apiErr.ErrorCode == 10008 || apiErr.ErrorCode == 10009 || apiErr.Code == 503
	}
	return false
}

// MayHaveStored reports whether a JetStream write (a KV create, update or
// delete, a publish) that failed with err may still have been stored: it
// timed out or lost its connection. A write the server answered with an
// error, or that found nothing to answer it (no stream, no responders),
// certainly stored nothing.
func MayHaveStored(err error) bool {
	if err == nil {
		return false
	}
	var apiErr *jetstream.APIError
	return !errors.As(err, &apiErr) && !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, jetstream.ErrNoStreamResponse)
}

// Retrying wraps kv so that its reads and writes of single keys retry
// transient errors (Transient) with jittered backoff for up to budget, or
// until ctx ends. Writes stay safe to repeat: a Create or Update whose
// first try landed but whose answer was lost fails its retry with a
// revision mismatch, which the callers in this package already handle (they
// read the key again). Watches and listings are passed through.
func Retrying(kv jetstream.KeyValue, budget time.Duration) jetstream.KeyValue {
	if budget <= 0 {
		budget = DefaultRetryBudget
	}
	return retryingKV{KeyValue: kv, budget: budget}
}

type retryingKV struct {
	jetstream.KeyValue
	budget time.Duration
}

// do runs fn until it returns a final error, ctx ends or the budget is
// spent.
func do[T any](ctx context.Context, budget time.Duration, fn func(ctx context.Context) (T, error)) (T, error) {
	deadline := time.Now().Add(budget)
	wait := 50 * time.Millisecond
	for {
		tctx, cancel := context.WithTimeout(ctx, retryTry)
		v, err := fn(tctx)
		cancel()
		if !Transient(err) || ctx.Err() != nil || time.Now().Add(wait).After(deadline) {
			if err != nil && ctx.Err() != nil {
				err = errors.Join(err, ctx.Err())
			}
			return v, err
		}
		t := time.NewTimer(wait/2 + rand.N(wait))
		select {
		case <-ctx.Done():
			t.Stop()
			return v, errors.Join(err, ctx.Err())
		case <-t.C:
		}
		wait = min(wait*2, 2*time.Second)
	}
}

func (r retryingKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	return do(ctx, r.budget, func(ctx context.Context) (jetstream.KeyValueEntry, error) { return r.KeyValue.Get(ctx, key) })
}

func (r retryingKV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	return do(ctx, r.budget, func(ctx context.Context) (uint64, error) { return r.KeyValue.Put(ctx, key, value) })
}

func (r retryingKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	return do(ctx, r.budget, func(ctx context.Context) (uint64, error) { return r.KeyValue.Create(ctx, key, value, opts...) })
}

func (r retryingKV) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	return do(ctx, r.budget, func(ctx context.Context) (uint64, error) { return r.KeyValue.Update(ctx, key, value, revision) })
}

func (r retryingKV) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	_, err := do(ctx, r.budget, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, r.KeyValue.Delete(ctx, key, opts...)
	})
	return err
}
