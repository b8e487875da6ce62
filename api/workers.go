package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// ServeWorkers answers the workers' NATS requests (messaging.HostConsumer,
// messaging.HostCacheList) in the API replicas' queue group until the
// returned function is called. Workers create no consumers and list no
// keys themselves, so NATS need not give them the permission to create a
// consumer, whose deliver subject nats-server does not check.
func (s *Server) ServeWorkers(ctx context.Context) (stop func(), err error) {
	var subs []*nats.Subscription
	sem := make(chan struct{}, workerRequests)
	stop = func() {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
	}
	for what, h := range map[string]func(context.Context, string, []byte) messaging.HostReply{
		"consumer": s.hostConsumer, "cache.list": s.hostCacheList, "settled": s.hostSettled,
	} {
		sub, err := s.nc.QueueSubscribe(s.subjects.AnyHostAPI(what), messaging.APIQueue, func(m *nats.Msg) {
			// Answered concurrently (a settle may wait for a replica to
			// catch up), up to workerRequests at once.
			sem <- struct{}{}
			go func() {
				defer func() { <-sem }()
				s.answerWorker(ctx, m, h)
			}()
		})
		if err != nil {
			stop()
			return nil, fmt.Errorf("serve worker requests on %s: %w", s.subjects.AnyHostAPI(what), err)
		}
		subs = append(subs, sub)
	}
	return stop, nil
}

// workerRequests bounds the worker requests an API replica answers at once.
const workerRequests = 64

// answerWorker runs h for the host named by m's subject and replies. A
// message without a reply subject is dropped: a worker's own requests always
// have one, and messages nats-server publishes for a client on a subject the
// client chose (responses sent to a forged reply subject) never do.
func (s *Server) answerWorker(ctx context.Context, m *nats.Msg, h func(context.Context, string, []byte) messaging.HostReply) {
	host := hostOfAPISubject(s.subjects, m.Subject)
	if m.Reply == "" || !messaging.ValidHost(host) {
		s.log.WithField("subject", m.Subject).Warn("worker request without a reply subject or host ignored")
		return
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.NATSTimeout)
	defer cancel()
	rep := h(rctx, host, m.Data)
	data, err := json.Marshal(rep)
	if err == nil && len(data) > int(s.nc.MaxPayload())-1024 {
		data, err = json.Marshal(messaging.HostReply{Error: fmt.Sprintf("the answer for host %s is %d bytes, more than NATS carries in one message", host, len(data))})
	}
	if err != nil {
		return
	}
	if err := m.Respond(data); err != nil {
		s.log.WithError(err).WithField("host", host).Warn("answer worker request")
	}
}

// hostOfAPISubject is the host token of <prefix>.api.hosts.<host>.…
func hostOfAPISubject(subjects messaging.Subjects, subject string) string {
	rest := subject[min(len(subject), len(subjects.Prefix+".api.hosts.")):]
	for i := range len(rest) {
		if rest[i] == '.' {
			return rest[:i]
		}
	}
	return ""
}

// hostConsumer creates or updates host's durable job consumer with the fixed
// configuration of messaging.ConsumerConfig and the worker's bounded settings.
func (s *Server) hostConsumer(ctx context.Context, host string, body []byte) messaging.HostReply {
	var req messaging.ConsumerRequest
	if err := messaging.DecodeStrict(body, &req); err != nil {
		return messaging.HostReply{Error: "malformed consumer request: " + err.Error()}
	}
	ackWait := time.Duration(req.AckWaitMS) * time.Millisecond
	if ackWait < messaging.MinAckWait || ackWait > messaging.MaxAckWait {
		return messaging.HostReply{Error: fmt.Sprintf("ack wait %s is outside %s..%s", ackWait, messaging.MinAckWait, messaging.MaxAckWait)}
	}
	if req.MaxDeliver < messaging.MinMaxDeliver || req.MaxDeliver > messaging.MaxMaxDeliver {
		return messaging.HostReply{Error: fmt.Sprintf("max deliver %d is outside %d..%d", req.MaxDeliver, messaging.MinMaxDeliver, messaging.MaxMaxDeliver)}
	}
	cfg := s.cfg.Dispatch.Consumer(messaging.ConsumerConfig(s.subjects, host, ackWait, req.MaxDeliver))
	if req.Unavailable {
		s.replaceLostConsumer(ctx, host, cfg.Durable)
	}
	name, err := s.state.Queue.EnsureConsumer(ctx, cfg)
	if err != nil {
		s.log.WithError(err).WithField("host", host).Warn("create the consumer of a worker")
		return messaging.HostReply{Error: messaging.HostConsumerError(err, host, s.cfg.MaxHosts).Error()}
	}
	s.log.WithFields(map[string]any{"host": host, "consumer": name, "ack_wait": ackWait.String(), "max_deliver": req.MaxDeliver}).Info("worker consumer created or updated")
	return messaging.HostReply{Consumer: name}
}

// consumerAnswerWithin bounds how long a consumer's leader may take to
// answer before the API counts the consumer as lost.
const consumerAnswerWithin = time.Second

// replaceLostConsumer deletes host's consumer when it does not answer the
// API either, twice (its one replica was on a node that died or is stopped), so
// that the create that follows places a new one on a live node. The new
// consumer delivers every job still in the stream again; the records fence
// those that ran or are running. A consumer that answers is kept.
func (s *Server) replaceLostConsumer(ctx context.Context, host, name string) {
	var err error
	for try := 0; try < 2; try++ { // one late answer is not a lost consumer
		ictx, cancel := context.WithTimeout(ctx, consumerAnswerWithin)
		err = s.state.Queue.CheckConsumer(ictx, name)
		cancel()
		if err == nil || errors.Is(err, kvstate.ErrConsumerNotFound) {
			return
		}
	}
	log := s.log.WithFields(map[string]any{"host": host, "consumer": name})
	log.WithError(err).Warn("the consumer of a worker does not answer; creating it again")
	dctx, cancel := context.WithTimeout(ctx, consumerAnswerWithin)
	defer cancel()
	if err := s.state.Queue.DeleteConsumer(dctx, name); err != nil {
		// The delete is proposed to the meta leader whether or not the
		// dead consumer's node answers it.
		log.WithError(err).Info("delete the lost consumer: no answer (its node is gone); creating it anyway")
	}
}

// hostSettled removes an ended job's message from the job stream
// (DispatchLimits; under DispatchWorkQueue the worker's ack did). It acts
// only when the record is terminal, so a worker's word alone removes
// nothing; a record read too early is left for the sweep (SweepSettled).
func (s *Server) hostSettled(ctx context.Context, host string, body []byte) messaging.HostReply {
	var req messaging.SettledRequest
	if err := messaging.DecodeStrict(body, &req); err != nil || !canonicalUUID(req.JobID) {
		return messaging.HostReply{Error: "malformed settled request"}
	}
	if s.cfg.Dispatch != messaging.DispatchLimits {
		if rec, _, err := s.state.Jobs.Get(ctx, host, req.JobID); err == nil {
			s.settleContent(ctx, rec)
		}
		return messaging.HostReply{}
	}
	// The record was written just before the worker asked; a replica
	// that has not caught up may still show it running.
	var err error
	for try := 0; try < 5; try++ {
		if err = s.settle(ctx, host, req.JobID); !errors.Is(err, errNotEnded) && !errors.Is(err, kvstate.ErrJobNotFound) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return messaging.HostReply{Error: err.Error()}
	}
	return messaging.HostReply{}
}

func canonicalUUID(s string) bool {
	u, err := uuid.Parse(s)
	return err == nil && u.String() == s
}

// errNotEnded: a job's record is not terminal (yet, as read).
var errNotEnded = errors.New("the job has not ended")

// settle purges host's job message if its record is terminal.
func (s *Server) settle(ctx context.Context, host, jobID string) error {
	rec, _, err := s.state.Jobs.Get(ctx, host, jobID)
	if err != nil {
		return fmt.Errorf("settle job %s: %w", jobID, err)
	}
	if !rec.Status.Terminal() {
		return fmt.Errorf("settle job %s: %w (%s)", jobID, errNotEnded, rec.Status)
	}
	s.settleContent(ctx, rec)
	if err := s.state.Queue.Purge(ctx, host, jobID); err != nil {
		return fmt.Errorf("settle job %s: remove its message: %w", jobID, err)
	}
	return nil
}

// SweepEvery is how often SweepSettled looks for ended jobs whose message
// is still in the job stream (a worker that died between writing the
// record and telling the API, or an API that was down).
const SweepEvery = 5 * time.Minute

// SweepSettled removes, now and every interval until ctx ends, the messages
// of jobs whose records are terminal (DispatchLimits only). Every API
// replica sweeps; a purge repeated by another replica changes nothing.
func (s *Server) SweepSettled(ctx context.Context, interval time.Duration) {
	if s.cfg.Dispatch != messaging.DispatchLimits {
		return
	}
	if interval <= 0 {
		interval = SweepEvery
	}
	t := time.NewTimer(time.Duration(rand.Int64N(int64(interval / 10))))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := s.sweepOnce(ctx)
		if err != nil {
			s.log.WithError(err).Warn("sweep ended jobs out of the job stream")
		} else if n > 0 {
			s.log.WithField("removed", n).Info("swept ended jobs out of the job stream")
		}
		t.Reset(interval)
	}
}

// sweepOnce settles every job in the stream whose record is terminal.
func (s *Server) sweepOnce(ctx context.Context) (int, error) {
	waiting, err := s.state.Queue.Waiting(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, j := range waiting {
		if err := s.settle(ctx, j.Host, j.JobID); err == nil {
			n++
		}
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
	}
	return n, nil
}

// hostCacheList returns host's cache index entries.
func (s *Server) hostCacheList(ctx context.Context, host string, _ []byte) messaging.HostReply {
	entries, err := s.state.Cache.List(ctx, host)
	if err != nil {
		return messaging.HostReply{Error: err.Error()}
	}
	data, err := json.Marshal(entries)
	if err != nil {
		return messaging.HostReply{Error: err.Error()}
	}
	if entries == nil {
		data = []byte("[]")
	}
	return messaging.HostReply{Entries: data}
}

// hintJobChanged tells the job's worker to re-read its record now (a
// cancel); best effort: the worker also re-reads it on an interval.
func (s *Server) hintJobChanged(host, jobID string) {
	if err := s.nc.Publish(s.subjects.JobChanged(host, jobID), nil); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		s.log.WithError(err).WithField("job_id", jobID).Warn("tell the worker its job changed")
	}
}
