package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// ServeWorkers answers the workers' NATS requests (messaging.HostConsumer,
// messaging.HostCacheList) in the API replicas' queue group until the
// returned function is called. Workers create no consumers and list no
// keys themselves, so NATS need not give them the permission to create a
// consumer, whose deliver subject nats-server does not check.
func (s *Server) ServeWorkers(ctx context.Context) (stop func(), err error) {
	var subs []*nats.Subscription
	stop = func() {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
	}
	for what, h := range map[string]func(context.Context, string, []byte) messaging.HostReply{
		"consumer": s.hostConsumer, "cache.list": s.hostCacheList,
	} {
		sub, err := s.nc.QueueSubscribe(s.subjects.AnyHostAPI(what), messaging.APIQueue, func(m *nats.Msg) { s.answerWorker(ctx, m, h) })
		if err != nil {
			stop()
			return nil, fmt.Errorf("serve worker requests on %s: %w", s.subjects.AnyHostAPI(what), err)
		}
		subs = append(subs, sub)
	}
	return stop, nil
}

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
	cons, err := s.js.CreateOrUpdateConsumer(ctx, messaging.JobStream, messaging.ConsumerConfig(s.subjects, host, ackWait, req.MaxDeliver))
	if err != nil {
		s.log.WithError(err).WithField("host", host).Warn("create the consumer of a worker")
		return messaging.HostReply{Error: messaging.HostConsumerError(err, host, s.cfg.MaxHosts).Error()}
	}
	s.log.WithFields(map[string]any{"host": host, "consumer": cons.CachedInfo().Name, "ack_wait": ackWait.String(), "max_deliver": req.MaxDeliver}).Info("worker consumer created or updated")
	return messaging.HostReply{Consumer: cons.CachedInfo().Name}
}

// hostCacheList returns host's cache index entries.
func (s *Server) hostCacheList(ctx context.Context, host string, _ []byte) messaging.HostReply {
	entries, err := s.cache.List(ctx, host)
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
