package kvstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// CacheEntry is one cached image of a host.
type CacheEntry struct {
	// Key is the cache key: the image's published SHA-256, or for images
	// without a .sha256 object, the SHA-256 of the image URL.
	Key string `json:"key"`
	// KeyKind is "sha256" or "url".
	KeyKind string `json:"key_kind"`
	// Path is the cached file.
	Path string `json:"path"`
	// Size is the file's size in bytes.
	Size int64 `json:"size"`
	// Checksum is the SHA-256 of the file's content.
	Checksum  string    `json:"checksum"`
	SourceURL string    `json:"source_url"`
	ETag      string    `json:"etag,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	LastUsed  time.Time `json:"last_used"`
	// Golden is the image's golden volume (its disk as raw, read-only,
	// the source of copy-on-write clones), when the volume backend keeps
	// one; it goes with the entry.
	Golden *Golden `json:"golden,omitempty"`
}

// Golden describes the golden volume of a cache entry: a read-only raw copy
// of the image's disk, written from the verified image, from which volumes
// are cloned.
type Golden struct {
	// Path is the golden file (or device).
	Path string `json:"path"`
	// Size is its size in bytes: the image's virtual size.
	Size int64 `json:"size"`
	// AllocatedBytes is the space it takes, counted against the cache's cap.
	AllocatedBytes int64 `json:"allocated_bytes"`
	// Digest is the chunked SHA-256 of its content when it was sealed
	// (volume.GoldenDigest).
	Digest string `json:"digest"`
	// Dev, Ino and CtimeNs identify the sealed file: any change to it, its
	// mode or its flags changes its ctime.
	Dev     uint64 `json:"dev"`
	Ino     uint64 `json:"ino"`
	CtimeNs int64  `json:"ctime_ns"`
	// LVUUID identifies a golden that is an LVM thin LV (its lv_uuid);
	// Dev, Ino and CtimeNs are zero then.
	LVUUID string `json:"lv_uuid,omitempty"`
	// Immutable tells whether the file carries the immutable flag.
	Immutable bool      `json:"immutable"`
	CreatedAt time.Time `json:"created_at"`
	// VerifiedAt is when its digest was last checked (at creation, by a
	// scrub or by a job asking for a full verification).
	VerifiedAt time.Time `json:"verified_at"`
}

// Bytes is the space the entry takes: the cached file and its golden.
func (e CacheEntry) Bytes() int64 {
	if e.Golden != nil {
		return e.Size + e.Golden.AllocatedBytes
	}
	return e.Size
}

// Cache keys for CacheEntry.KeyKind.
const (
	KeyKindSHA256 = "sha256"
	KeyKindURL    = "url"
)

// CacheIndex is the per-host cache index in the provisioner_cache bucket.
type CacheIndex struct {
	KV jetstream.KeyValue
}

// Put stores or replaces an entry.
func (c CacheIndex) Put(ctx context.Context, host string, e CacheEntry) error {
	data, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if _, err := c.KV.Put(ctx, messaging.CacheKey(host, e.Key), data); err != nil {
		return fmt.Errorf("write cache entry %s: %w", e.Key, err)
	}
	return nil
}

// Get returns one entry; ErrCacheEntryNotFound if there is none.
func (c CacheIndex) Get(ctx context.Context, host, key string) (CacheEntry, error) {
	var e CacheEntry
	kve, err := c.KV.Get(ctx, messaging.CacheKey(host, key))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return e, ErrCacheEntryNotFound
	}
	if err != nil {
		return e, fmt.Errorf("read cache entry %s: %w", key, err)
	}
	if err := json.Unmarshal(kve.Value(), &e); err != nil {
		return e, fmt.Errorf("decode cache entry %s: %w", key, err)
	}
	return e, nil
}

// Delete removes an entry.
func (c CacheIndex) Delete(ctx context.Context, host, key string) error {
	if err := c.KV.Delete(ctx, messaging.CacheKey(host, key)); err != nil {
		return fmt.Errorf("delete cache entry %s: %w", key, err)
	}
	return nil
}

// List returns every entry of host, sorted by path.
func (c CacheIndex) List(ctx context.Context, host string) ([]CacheEntry, error) {
	lister, err := c.KV.ListKeysFiltered(ctx, host+".*")
	if err != nil {
		return nil, fmt.Errorf("list cache of %s: %w", host, err)
	}
	defer lister.Stop()
	var out []CacheEntry
	for key := range lister.Keys() {
		digest := strings.TrimPrefix(key, host+".")
		e, err := c.Get(ctx, host, digest)
		if errors.Is(err, ErrCacheEntryNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}
