package kvstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/telemetry"
)

// Errors of publishing a job message.
var (
	// ErrPublishRefused: the publish certainly stored nothing (the stream
	// answered with an error, or nothing listened on the subject).
	ErrPublishRefused = errors.New("the job stream refused the message")
	// ErrAlreadyQueued: the job stream refused a second message for one
	// job (a message of the job is still queued). It matches
	// ErrPublishRefused too.
	ErrAlreadyQueued = errors.New("a message of the job is already queued")
)

// JobQueue is the job stream (PROVISIONER_JOBS) as the API uses it: it
// publishes job messages on <prefix>.jobs.<host>.<job_id>, finds and
// removes them, and keeps the hosts' durable consumers.
type JobQueue struct {
	js       jetstream.JetStream
	stream   jetstream.Stream
	subjects messaging.Subjects
}

// QueuedJob is a job's message in the job stream.
type QueuedJob struct {
	Host, JobID string
	// Data is the message as published, and Time when it was stored.
	Data []byte
	Time time.Time
}

// publishError is an error of Publish: the client's error, as it was
// (its text and what it wraps), marked refused or already queued.
type publishError struct {
	err           error
	refused, dupe bool
}

func (e *publishError) Error() string { return e.err.Error() }
func (e *publishError) Unwrap() error { return e.err }

// Is matches ErrPublishRefused and ErrAlreadyQueued as they apply.
func (e *publishError) Is(target error) bool {
	return target == ErrPublishRefused && e.refused || target == ErrAlreadyQueued && e.dupe
}

// Publish queues m's job message, carrying ctx's trace context, with its
// job id as the message id (a repeat within the stream's duplicate window
// is dropped). An error that matches ErrPublishRefused certainly stored
// nothing; any other may have been stored (the answer was lost): ask
// Queued.
func (q JobQueue) Publish(ctx context.Context, m messaging.Job) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	msg := nats.NewMsg(q.subjects.Job(m.Hypervisor, m.JobID))
	msg.Data = data
	msg.Header.Set(messaging.HeaderJobVersion, fmt.Sprint(m.Version))
	telemetry.Propagator.Inject(ctx, messaging.HeaderCarrier(msg.Header))
	_, err = q.js.PublishMsg(ctx, msg, jetstream.WithMsgID(m.JobID))
	if err == nil {
		return nil
	}
	var apiErr *jetstream.APIError
	isAPI := errors.As(err, &apiErr)
	return &publishError{err: err,
		refused: !MayHaveStored(err),
		dupe:    isAPI && strings.Contains(apiErr.Description, "maximum messages per subject")}
}

// Queued reports whether host's job has a message in the job stream. It
// asks the stream's leader (a direct get may be answered by a replica that
// has not stored the message yet); an error means the leader did not say.
func (q JobQueue) Queued(ctx context.Context, host, jobID string) (bool, error) {
	req, _ := json.Marshal(map[string]string{"last_by_subj": q.subjects.Job(host, jobID)})
	msg, err := q.js.Conn().RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+messaging.JobStream, req)
	if err != nil {
		return false, fmt.Errorf("ask whether job %s is queued: %w", jobID, err)
	}
	var resp struct {
		Error *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return false, fmt.Errorf("ask whether job %s is queued: %w", jobID, err)
	}
	switch {
	case resp.Error == nil:
		return true, nil
	case resp.Error.Code == http.StatusNotFound:
		return false, nil
	}
	return false, fmt.Errorf("ask whether job %s is queued: %s (%d)", jobID, resp.Error.Description, resp.Error.Code)
}

// Find returns the message of the job jobID on whichever host it is
// queued; ErrQueuedJobNotFound when there is none.
func (q JobQueue) Find(ctx context.Context, jobID string) (QueuedJob, error) {
	raw, err := q.stream.GetLastMsgForSubject(ctx, q.subjects.AnyHostJob(jobID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return QueuedJob{}, fmt.Errorf("%w: %s", ErrQueuedJobNotFound, jobID)
	}
	if err != nil {
		return QueuedJob{}, fmt.Errorf("find queued job %s: %w", jobID, err)
	}
	host, _, err := q.subjects.ParseJob(raw.Subject)
	if err != nil {
		return QueuedJob{}, fmt.Errorf("%w: %s (%v)", ErrQueuedJobNotFound, jobID, err)
	}
	return QueuedJob{Host: host, JobID: jobID, Data: raw.Data, Time: raw.Time}, nil
}

// Drop deletes host's job message (a job cancelled while pending);
// ErrQueuedJobNotFound when there is none.
func (q JobQueue) Drop(ctx context.Context, host, jobID string) error {
	raw, err := q.stream.GetLastMsgForSubject(ctx, q.subjects.Job(host, jobID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("%w: %s", ErrQueuedJobNotFound, jobID)
	}
	if err != nil {
		return fmt.Errorf("find queued job %s: %w", jobID, err)
	}
	if err := q.stream.DeleteMsg(ctx, raw.Sequence); err != nil {
		return fmt.Errorf("drop queued job %s: %w", jobID, err)
	}
	return nil
}

// Purge removes every message of host's job (one that ended); a job with
// none is no error.
func (q JobQueue) Purge(ctx context.Context, host, jobID string) error {
	return q.stream.Purge(ctx, jetstream.WithPurgeSubject(q.subjects.Job(host, jobID)))
}

// JobRef names one job: its host and id.
type JobRef struct {
	Host, JobID string
}

// Waiting lists the jobs with a message in the stream (subjects that are
// not job subjects are left out).
func (q JobQueue) Waiting(ctx context.Context) ([]JobRef, error) {
	info, err := q.stream.Info(ctx, jetstream.WithSubjectFilter(q.subjects.AllJobs()))
	if err != nil {
		return nil, fmt.Errorf("list the queued jobs: %w", err)
	}
	out := make([]JobRef, 0, len(info.State.Subjects))
	for subject := range info.State.Subjects {
		host, jobID, err := q.subjects.ParseJob(subject)
		if err != nil {
			continue
		}
		out = append(out, JobRef{Host: host, JobID: jobID})
	}
	return out, nil
}

// Backlog is each host's jobs not yet acknowledged: NumPending +
// NumAckPending of the consumer filtering on its job subjects.
func (q JobQueue) Backlog(ctx context.Context) (map[string]uint64, error) {
	out := map[string]uint64{}
	lister := q.stream.ListConsumers(ctx)
	for info := range lister.Info() {
		host := consumerHost(q.subjects, info.Config)
		if host == "" {
			continue
		}
		out[host] += info.NumPending + uint64(info.NumAckPending)
	}
	return out, lister.Err()
}

// consumerHost is the host whose job subjects a consumer filters on, or "".
func consumerHost(subjects messaging.Subjects, c jetstream.ConsumerConfig) string {
	filter := c.FilterSubject
	if filter == "" && len(c.FilterSubjects) == 1 {
		filter = c.FilterSubjects[0]
	}
	host, ok := strings.CutSuffix(strings.TrimPrefix(filter, subjects.Prefix+".jobs."), ".>")
	if !ok || !messaging.ValidHost(host) {
		return ""
	}
	return host
}

// EnsureConsumer creates cfg's consumer of the job stream, or updates it
// to cfg, and returns its name. The error is the client's, unwrapped
// (messaging.HostConsumerError reads it).
func (q JobQueue) EnsureConsumer(ctx context.Context, cfg jetstream.ConsumerConfig) (string, error) {
	cons, err := q.js.CreateOrUpdateConsumer(ctx, messaging.JobStream, cfg)
	if err != nil {
		return "", err
	}
	return cons.CachedInfo().Name, nil
}

// CheckConsumer asks the consumer name for its state: nil when it
// answers, ErrConsumerNotFound when the stream has none of that name.
func (q JobQueue) CheckConsumer(ctx context.Context, name string) error {
	_, err := q.js.Consumer(ctx, messaging.JobStream, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("%w: %s", ErrConsumerNotFound, name)
	}
	return err
}

// DeleteConsumer deletes the consumer name; one that is gone already is
// no error.
func (q JobQueue) DeleteConsumer(ctx context.Context, name string) error {
	err := q.js.DeleteConsumer(ctx, messaging.JobStream, name)
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("delete consumer %s: %w", name, err)
	}
	return nil
}
