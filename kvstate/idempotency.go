package kvstate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// IdempotencyRecord is what a caller's Idempotency-Key names: the job its
// first submission was accepted as, and a hash of what that submission
// asked for (so a different request under the same key can be told apart).
type IdempotencyRecord struct {
	JobID       string    `json:"job_id"`
	RequestHash string    `json:"request_hash"`
	CreatedAt   time.Time `json:"created_at"`
}

// Idempotency maps callers' Idempotency-Keys to jobs, in the
// provisioner_idempotency bucket (whose TTL forgets them), keyed by the
// SHA-256 of the caller and the key: one caller's key never names another
// caller's job.
type Idempotency struct {
	KV jetstream.KeyValue
}

// IdempotencyClaim is the outcome of Claim: the key is this submission's
// now (New), or it named an earlier job (Prior).
type IdempotencyClaim struct {
	// Prior is what the key named already; zero for a new claim.
	Prior IdempotencyRecord
	idem  Idempotency
	key   string
	rev   uint64
}

// New reports whether the claim recorded the key (it named no job yet).
func (c IdempotencyClaim) New() bool { return c.rev != 0 }

// Release forgets a new claim's key again (its submission did not
// finish), unless it was written since; a claim that is not new releases
// nothing.
func (c IdempotencyClaim) Release(ctx context.Context) error {
	if !c.New() {
		return nil
	}
	err := c.idem.KV.Delete(ctx, c.key, jetstream.LastRevision(c.rev))
	if err != nil && !isRevisionMismatch(err) {
		return fmt.Errorf("release idempotency key: %w", err)
	}
	return nil
}

// idempotencyKey is the bucket key of caller's key.
func idempotencyKey(caller, key string) string {
	sum := sha256.Sum256([]byte(caller + "\n" + key))
	return hex.EncodeToString(sum[:])
}

// Claim records rec under caller's key, unless the key names a job
// already: then the claim carries that record as Prior and nothing is
// written.
func (s Idempotency) Claim(ctx context.Context, caller, key string, rec IdempotencyRecord) (IdempotencyClaim, error) {
	kvKey := idempotencyKey(caller, key)
	data, err := json.Marshal(rec)
	if err != nil {
		return IdempotencyClaim{}, err
	}
	rev, err := s.KV.Create(ctx, kvKey, data)
	if err == nil {
		return IdempotencyClaim{idem: s, key: kvKey, rev: rev}, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return IdempotencyClaim{}, fmt.Errorf("record idempotency key: %w", err)
	}
	e, err := s.KV.Get(ctx, kvKey)
	if err != nil {
		return IdempotencyClaim{}, fmt.Errorf("read idempotency key: %w", err)
	}
	var prior IdempotencyRecord
	if err := json.Unmarshal(e.Value(), &prior); err != nil {
		return IdempotencyClaim{}, fmt.Errorf("decode idempotency key: %w", err)
	}
	return IdempotencyClaim{Prior: prior}, nil
}

// Forget deletes caller's key whatever it names, so its next use starts a
// new submission.
func (s Idempotency) Forget(ctx context.Context, caller, key string) error {
	if err := s.KV.Delete(ctx, idempotencyKey(caller, key)); err != nil {
		return fmt.Errorf("forget idempotency key: %w", err)
	}
	return nil
}
