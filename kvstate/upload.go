package kvstate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// Uploads are the content buckets (messaging.ContentBucket, one Object
// Store per host) as the API writes them: an upload waits there for its
// content job, whose worker reads it (messaging.ReadContent), and is
// removed when the job ends.
type Uploads struct {
	JS jetstream.JetStream
	// Replicas and TTL configure a bucket the API creates: TTL is a
	// backstop for uploads whose job never told the API it ended.
	Replicas int
	TTL      time.Duration
}

// UploadBucket is one host's content bucket.
type UploadBucket struct {
	store jetstream.ObjectStore
}

// Bucket is host's content bucket, created at its first upload.
func (u Uploads) Bucket(ctx context.Context, host string) (UploadBucket, error) {
	name := messaging.ContentBucket(host)
	store, err := u.JS.ObjectStore(ctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		store, err = u.JS.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: name, Storage: jetstream.FileStorage,
			Replicas: u.Replicas, TTL: u.TTL,
			Description: "uploads waiting for host " + host + "'s worker; removed when their job ends"})
		if errors.Is(err, jetstream.ErrBucketExists) {
			store, err = u.JS.ObjectStore(ctx, name)
		}
	}
	return UploadBucket{store: store}, err
}

// Put stores what r reads as the object name. The error is the Object
// Store's, or r's own read error, as it was.
func (b UploadBucket) Put(ctx context.Context, name string, r io.Reader) error {
	_, err := b.store.Put(ctx, jetstream.ObjectMeta{Name: name}, r)
	return err
}

// Remove deletes the object name from host's content bucket; an object or
// a bucket that is not there is no error.
func (u Uploads) Remove(ctx context.Context, host, name string) error {
	store, err := u.JS.ObjectStore(ctx, messaging.ContentBucket(host))
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open the content bucket of %s: %w", host, err)
	}
	if err := store.Delete(ctx, name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("remove upload %s: %w", name, err)
	}
	return nil
}
