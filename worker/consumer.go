package worker

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// consumerLostAfter is how long the consumer may fail every fetch before
// the worker asks the API to create it again: an R1 consumer lives on one
// node and is gone while that node is down.
const consumerLostAfter = 3 * time.Second

// hostConsumer is the host's job consumer as the slots use it: replaced
// when it is lost, and watched through the slots' fetches.
type hostConsumer struct {
	cur atomic.Pointer[jetstream.Consumer]
	// healthyAt is when a fetch last got an answer from the consumer (a
	// message, or "no messages"), in Unix nanoseconds.
	healthyAt atomic.Int64
	// rebind serialises replacing the consumer.
	rebind sync.Mutex
}

func (c *hostConsumer) get() jetstream.Consumer { return *c.cur.Load() }

func (c *hostConsumer) set(cons jetstream.Consumer) {
	c.cur.Store(&cons)
	c.healthy()
}

func (c *hostConsumer) healthy() { c.healthyAt.Store(time.Now().UnixNano()) }

func (c *hostConsumer) silentFor() time.Duration {
	return time.Since(time.Unix(0, c.healthyAt.Load()))
}

// fetch asks the consumer for one job, waiting up to a second. A nil
// message with a nil error means the consumer answered that it has none.
func (w *Worker) fetch(ctx context.Context) (jetstream.Msg, error) {
	fctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	msg, err := w.cons.get().Next(jetstream.FetchContext(fctx))
	if err == nil || errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) {
		// Next reports the server's "request expired" as a timeout: the
		// consumer answered.
		w.cons.healthy()
		return msg, nil
	}
	return nil, err
}

// recoverConsumer asks the API to create the consumer again once no fetch
// has had an answer for consumerLostAfter (its node died or is stopped;
// the API keeps a consumer that still answers it). Only one slot asks; the
// other finds the consumer replaced.
func (w *Worker) recoverConsumer(ctx context.Context, log *logrus.Entry, cause error) {
	if w.cons.silentFor() < consumerLostAfter {
		return
	}
	if !w.cons.rebind.TryLock() {
		return
	}
	defer w.cons.rebind.Unlock()
	if w.cons.silentFor() < consumerLostAfter {
		return
	}
	log.WithError(cause).WithField("silent_for", w.cons.silentFor().Round(time.Millisecond).String()).Warn("this host's consumer does not answer; asking the API to create it again")
	cons, err := w.bindConsumerWith(ctx, messaging.ConsumerRequest{
		AckWaitMS: w.cfg.AckWait.Milliseconds(), MaxDeliver: w.cfg.MaxDeliver, Unavailable: true,
	})
	if err != nil {
		log.WithError(err).Warn("could not replace this host's consumer; retrying")
		return
	}
	w.cons.set(cons)
	log.Info("this host's consumer was created again; jobs still queued are delivered again")
}

// settle tells the API that a job of this host has ended, so that its
// message leaves the job stream. Best effort, in the background: the API
// checks the record itself, and its sweep settles what this misses.
func (w *Worker) settle(host, jobID string) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := w.askAPI(ctx, w.subjects.HostSettled(host), messaging.SettledRequest{JobID: jobID}); err != nil {
			w.log.WithError(err).WithField("job_id", jobID).Debug("tell the API a job ended")
		}
	}()
}
