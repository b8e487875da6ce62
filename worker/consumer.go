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

// fetchWait is how long one pull request waits for a job, and
// fetchHeartbeat how often the consumer confirms an idle pull is alive (two
// missed ones end the pull with jetstream.ErrNoHeartbeat). Long pulls keep
// an idle fleet quiet: a thousand idle hosts cost the cluster a hundred pull
// requests and five hundred heartbeats a second, not two thousand pulls.
const (
	fetchWait      = 20 * time.Second
	fetchHeartbeat = 4 * time.Second
)

// hostConsumer is the host's job consumer as the slots use it: replaced
// when it is lost, and watched through the slots' fetches.
type hostConsumer struct {
	cur atomic.Pointer[jetstream.Consumer]
	// failingSince is when fetches began to fail (Unix nanoseconds; 0 while
	// the consumer answers).
	failingSince atomic.Int64
	// rebind serialises replacing the consumer.
	rebind sync.Mutex
	// lostAfter is how long fetches must fail before the next replacement:
	// consumerLostAfter, doubled after each replacement up to
	// maxLostAfter, so an overloaded cluster that answers late is not
	// flooded with replacements; back to consumerLostAfter once a fetch
	// succeeds a minute after the last replacement.
	lostAfter  atomic.Int64
	replacedAt atomic.Int64
}

const maxLostAfter = time.Minute

func (c *hostConsumer) get() jetstream.Consumer { return *c.cur.Load() }

func (c *hostConsumer) set(cons jetstream.Consumer) {
	c.cur.Store(&cons)
	c.failingSince.Store(0)
}

// replaced records a replacement and lengthens the wait before the next.
func (c *hostConsumer) replaced() {
	c.replacedAt.Store(time.Now().UnixNano())
	c.lostAfter.Store(int64(min(2*c.threshold(), maxLostAfter)))
}

func (c *hostConsumer) threshold() time.Duration {
	if d := time.Duration(c.lostAfter.Load()); d > 0 {
		return d
	}
	return consumerLostAfter
}

// answered records a fetch the consumer answered.
func (c *hostConsumer) answered() {
	c.failingSince.Store(0)
	if c.lostAfter.Load() != 0 && time.Since(time.Unix(0, c.replacedAt.Load())) > maxLostAfter {
		c.lostAfter.Store(0)
	}
}

// lost reports whether the consumer counts as lost after a fetch failed
// with err: fetches have failed for the current threshold (its heartbeats
// stopping counts for consumerLostAfter of it: two missed heartbeats are
// already eight seconds of silence).
func (c *hostConsumer) lost(err error) bool {
	now := time.Now().UnixNano()
	c.failingSince.CompareAndSwap(0, now)
	failing := time.Duration(now - c.failingSince.Load())
	return failing >= c.threshold() || errors.Is(err, jetstream.ErrNoHeartbeat) && failing >= c.threshold()-consumerLostAfter
}

// fetch asks the consumer for one job, waiting up to fetchWait. A nil
// message with a nil error means the consumer answered that it has none.
func (w *Worker) fetch(ctx context.Context) (jetstream.Msg, error) {
	fctx, cancel := context.WithTimeout(ctx, fetchWait)
	defer cancel()
	msg, err := w.cons.get().Next(jetstream.FetchContext(fctx), jetstream.FetchHeartbeat(fetchHeartbeat))
	if err == nil || errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) {
		// Next reports the server's "request expired" as a timeout: the
		// consumer answered.
		w.cons.answered()
		return msg, nil
	}
	return nil, err
}

// recoverConsumer asks the API to create the consumer again once it counts
// as lost (its node died or is stopped; the API keeps a consumer that still
// answers it). Only one slot asks; the other finds the consumer replaced.
func (w *Worker) recoverConsumer(ctx context.Context, log *logrus.Entry, cause error) {
	if !w.cons.lost(cause) || !w.cons.rebind.TryLock() {
		return
	}
	defer w.cons.rebind.Unlock()
	log.WithError(cause).Warn("this host's consumer does not answer; asking the API to create it again")
	cons, err := w.bindConsumerWith(ctx, messaging.ConsumerRequest{
		AckWaitMS: w.cfg.AckWait.Milliseconds(), MaxDeliver: w.cfg.MaxDeliver, Unavailable: true,
	})
	if err != nil {
		log.WithError(err).Warn("could not replace this host's consumer; retrying")
		return
	}
	w.cons.set(cons)
	w.cons.replaced()
	log.WithField("next_after", w.cons.threshold().String()).Info("this host's consumer was created again; jobs still queued are delivered again")
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
