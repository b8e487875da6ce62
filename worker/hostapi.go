package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/imagecache"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// ErrAPIRefused is returned when the API answered a worker request with an
// error (the message says which).
var ErrAPIRefused = errors.New("the API refused the request")

// askAPI sends a request to the API replicas on subject and decodes the
// answer; nats.ErrNoResponders means no API is running.
func (w *Worker) askAPI(ctx context.Context, subject string, req any) (messaging.HostReply, error) {
	var rep messaging.HostReply
	data, err := json.Marshal(req)
	if err != nil {
		return rep, err
	}
	msg, err := w.nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		return rep, fmt.Errorf("ask the API on %s: %w", subject, err)
	}
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		return rep, fmt.Errorf("the API's answer on %s is not readable: %w", subject, err)
	}
	if rep.Error != "" {
		return rep, fmt.Errorf("%w on %s: %s", ErrAPIRefused, subject, rep.Error)
	}
	return rep, nil
}

// bindConsumer asks the API to create or update this host's consumer and
// binds it (consumer info is all a worker may ask of JetStream about it).
// While no API answers it waits, with a backoff up to 15 s, until ctx ends.
func (w *Worker) bindConsumer(ctx context.Context) (jetstream.Consumer, error) {
	return w.bindConsumerWith(ctx, messaging.ConsumerRequest{AckWaitMS: w.cfg.AckWait.Milliseconds(), MaxDeliver: w.cfg.MaxDeliver})
}

// bindConsumerWith is bindConsumer with the request to send.
func (w *Worker) bindConsumerWith(ctx context.Context, req messaging.ConsumerRequest) (jetstream.Consumer, error) {
	name := messaging.ConsumerName(w.cfg.Host)
	for wait := 500 * time.Millisecond; ; wait = min(2*wait, 15*time.Second) {
		// The API may first wait out a lost consumer (twice
		// consumerAnswerWithin) before it creates the new one.
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := w.askAPI(rctx, w.subjects.HostConsumer(w.cfg.Host), req)
		var cons jetstream.Consumer
		if err == nil {
			cons, err = w.js.Consumer(rctx, messaging.JobStream, name)
		}
		cancel()
		if err == nil {
			return cons, nil
		}
		if errors.Is(err, ErrAPIRefused) {
			return nil, fmt.Errorf("bind consumer %s: %w", name, err)
		}
		w.log.WithError(err).WithFields(logrus.Fields{"consumer": name, "retry_in": wait.String()}).Warn("waiting for the API to create this host's consumer")
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("bind consumer %s: %w", name, err)
		case <-time.After(wait):
		}
	}
}

// hostCacheIndex is the host's cache index as a worker may use it: its own
// entries read by direct get, written and deleted, and the list asked of
// the API (listing keys would need a consumer).
type hostCacheIndex struct {
	kvstate.CacheIndex
	w *Worker
}

// CacheIndex is the index the image cache uses (imagecache.New).
func (w *Worker) CacheIndex() imagecache.Index {
	return hostCacheIndex{CacheIndex: kvstate.CacheIndex{KV: w.cacheKV}, w: w}
}

// List returns the entries of host (this worker's), sorted by path.
func (c hostCacheIndex) List(ctx context.Context, host string) ([]kvstate.CacheEntry, error) {
	if host != c.w.cfg.Host {
		return nil, fmt.Errorf("list cache of %s: this worker serves %s only", host, c.w.cfg.Host)
	}
	rep, err := c.w.askAPI(ctx, c.w.subjects.HostCacheList(host), struct{}{})
	if err != nil {
		return nil, fmt.Errorf("list cache of %s: %w", host, err)
	}
	var out []kvstate.CacheEntry
	if err := json.Unmarshal(rep.Entries, &out); err != nil {
		return nil, fmt.Errorf("list cache of %s: the API's entries are not readable: %w", host, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}
