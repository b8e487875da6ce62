package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// Ways a job is submitted.
const (
	viaREST = "rest"
	viaNATS = "nats"
)

// submitBudget is how long one submission is retried (an API replica down,
// an election) before it counts as not accepted.
const submitBudget = 90 * time.Second

// submission is one offered job.
type submission struct {
	key      string // the harness's name, in the image URL and volume name
	jobID    string
	host     string
	via      string
	sent     time.Time
	accepted time.Time
	err      error
	// firstErr is the first try's error, when there was a retry.
	firstErr error
	// note says how a REST submission was answered after a retry (which
	// replica, replayed or not, and the first error), for the findings.
	note string
}

// loader offers jobs through the APIs' REST endpoint and straight to NATS.
type loader struct {
	apis      []*apiProc
	js        []jetstream.JetStream
	subjects  messaging.Subjects
	http      *http.Client
	restEvery int // every restEvery-th job goes through REST (1: all)
	next      atomic.Uint64
}

// offer submits jobs jobs, round-robin over hosts, at rate jobs/s, and
// returns every submission once all have been answered. progress is called
// as each submission is sent.
func (l *loader) offer(ctx context.Context, hosts []string, jobs int, rate float64, onSent func(int)) []*submission {
	subs := make([]*submission, jobs)
	sem := make(chan struct{}, 256)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range jobs {
		due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		sem <- struct{}{}
		s := &submission{key: uuid.NewString(), host: hosts[i%len(hosts)], via: viaNATS}
		if l.restEvery > 0 && i%l.restEvery == 0 {
			s.via = viaREST
		}
		subs[i] = s
		wg.Go(func() {
			defer func() { <-sem }()
			l.submit(ctx, s, i)
		})
		if onSent != nil {
			onSent(i + 1)
		}
	}
	wg.Wait()
	return subs
}

// submit sends s, retrying until it is accepted or submitBudget ends.
func (l *loader) submit(ctx context.Context, s *submission, i int) {
	s.sent = time.Now()
	deadline := s.sent.Add(submitBudget)
	for attempt := 0; ; attempt++ {
		var err error
		if s.via == viaREST {
			err = l.postREST(ctx, s, i+attempt)
		} else {
			err = l.publish(ctx, s, i)
		}
		if err == nil {
			if attempt > 0 && s.note == "" {
				s.note = fmt.Sprintf("accepted on try %d after: %v", attempt+1, s.err)
			}
			s.accepted, s.err = time.Now(), nil
			return
		}
		if s.firstErr == nil {
			s.firstErr = err
		}
		s.err = err
		if time.Now().After(deadline) || ctx.Err() != nil {
			return
		}
		time.Sleep(time.Duration(min(attempt+1, 10)) * 200 * time.Millisecond)
	}
}

// jobBody is the REST request body of one harness job.
func jobBody(s *submission) map[string]any {
	return map[string]any{"hypervisor": s.host, "image_url": imageURL(s.key), "image_type": "raw",
		"volume_name": volumePrefix + s.key, "volume_size_gb": 1, "correlation_id": "fleet-" + s.key}
}

// postREST submits s to replica i mod 2, with the key as Idempotency-Key
// so that a retry after an ambiguous failure never makes a second job.
func (l *loader) postREST(ctx context.Context, s *submission, i int) error {
	body, _ := json.Marshal(jobBody(s))
	a := l.apis[i%len(l.apis)]
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.URL()+"/api/v1/jobs", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", s.key)
	resp, err := l.http.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", a.name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %d %s", a.name, resp.StatusCode, bytes.TrimSpace(b))
	}
	var got struct {
		JobID string `json:"job_id"`
	}
	if err := json.Unmarshal(b, &got); err != nil || got.JobID == "" {
		return fmt.Errorf("POST %s: no job_id in %s", a.name, b)
	}
	s.jobID = got.JobID
	if resp.Header.Get("Idempotent-Replayed") == "true" {
		s.note = fmt.Sprintf("%s answered with a replayed Idempotency-Key (after: %v)", a.name, s.err)
	}
	return nil
}

// publish sends s as a job message straight to the host's job subject;
// Nats-Msg-Id (the job id) makes a retried publish a duplicate JetStream drops.
func (l *loader) publish(ctx context.Context, s *submission, i int) error {
	s.jobID = s.key
	m := messaging.Job{Version: 1, Kind: messaging.KindProvision, JobID: s.jobID, Hypervisor: s.host, ImageURL: imageURL(s.key),
		ImageType: messaging.ImageRaw, VolumeName: volumePrefix + s.key, VolumeSizeGB: 1, CorrelationID: "fleet-" + s.key,
		Caller: "fleet-harness", SubmittedAt: s.sent.UTC()}
	data, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode job: %w", err)
	}
	msg := nats.NewMsg(l.subjects.Job(s.host, s.jobID))
	msg.Data = data
	msg.Header.Set(messaging.HeaderJobVersion, "1")
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := l.js[i%len(l.js)].PublishMsg(pctx, msg, jetstream.WithMsgID(s.jobID)); err != nil {
		return fmt.Errorf("publish job %s: %w", s.jobID, err)
	}
	return nil
}
