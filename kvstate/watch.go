package kvstate

import (
	"encoding/json"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Change is one change of a watched key: a value written, or the key
// deleted or purged.
type Change[T any] struct {
	// Key is the bucket key (a job record's is <host>.<job_id>).
	Key string
	// Revision is the change's revision: the key's, as Get returns it.
	Revision uint64
	// At is when the change was written.
	At time.Time
	// Deleted: the key was deleted or purged (or expired with a marker);
	// Value is zero then.
	Deleted bool
	// Value is what was written.
	Value T
	// Err says why what was written could not be decoded; Value holds the
	// fields that could be.
	Err error
}

// Watch delivers the changes of the keys it watches: first the current
// value of each, then a nil (it has caught up), then every change as it is
// written, until Stop is called or the context it was started with ends;
// then Changes is closed.
type Watch[T any] struct {
	inner   jetstream.KeyWatcher
	changes chan *Change[T]
	stop    chan struct{}
	once    sync.Once
	done    chan struct{}
}

// watch starts a Watch over inner, decoding each value as JSON into T.
func watch[T any](inner jetstream.KeyWatcher) *Watch[T] {
	w := &Watch[T]{inner: inner, changes: make(chan *Change[T]), stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *Watch[T]) run() {
	defer close(w.done)
	defer close(w.changes)
	stopped := false
	for e := range w.inner.Updates() {
		if stopped {
			continue // drained, so the subscription can close
		}
		select {
		case w.changes <- changeOf[T](e):
		case <-w.stop:
			stopped = true
		}
	}
}

// changeOf is the Change of a watcher's entry; nil for the caught-up marker.
func changeOf[T any](e jetstream.KeyValueEntry) *Change[T] {
	if e == nil {
		return nil
	}
	c := &Change[T]{Key: e.Key(), Revision: e.Revision(), At: e.Created(), Deleted: e.Operation() != jetstream.KeyValuePut}
	if !c.Deleted {
		c.Err = json.Unmarshal(e.Value(), &c.Value)
	}
	return c
}

// Changes delivers the changes; see Watch.
func (w *Watch[T]) Changes() <-chan *Change[T] { return w.changes }

// Stop ends the watch and waits until Changes is closed.
func (w *Watch[T]) Stop() error {
	var err error
	w.once.Do(func() {
		close(w.stop)
		err = w.inner.Stop()
	})
	<-w.done
	return err
}
