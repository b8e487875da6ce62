package worker

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
)

// minCancelCheckGap is the least time between two reads of a job's record,
// so that a flood of hints costs at most a read every so often.
const minCancelCheckGap = 100 * time.Millisecond

// watchCancel stops the job when its record turns cancelled. It reads the
// record (a direct get of its own key) every CancelCheck and at once when
// the API's hint arrives on messaging.JobChanged; the hint carries no
// authority, only the record decides. A worker creates no KV watch: that
// needs a consumer, and a consumer's creator picks where it delivers.
func (w *Worker) watchCancel(ctx context.Context, stop context.CancelCauseFunc, host, jobID string) {
	hint := make(chan struct{}, 1)
	sub, err := w.nc.Subscribe(w.subjects.JobChanged(host, jobID), func(*nats.Msg) {
		select {
		case hint <- struct{}{}:
		default:
		}
	})
	if err != nil {
		w.log.WithError(err).WithField("job_id", jobID).Warn("subscribe to cancel hints; checking the record on an interval only")
	} else {
		defer func() { _ = sub.Unsubscribe() }()
	}
	t := time.NewTicker(w.cfg.CancelCheck)
	defer t.Stop()
	for {
		if w.recordCancelled(ctx, host, jobID) {
			stop(errCancelled)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(minCancelCheckGap):
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-hint:
		}
	}
}

// recordCancelled reports whether the job's record says cancelled; a read
// that fails counts as not cancelled (the next check tries again).
func (w *Worker) recordCancelled(ctx context.Context, host, jobID string) bool {
	rctx, cancel := context.WithTimeout(ctx, w.cfg.CancelCheck)
	defer cancel()
	j, _, err := w.jobs.Get(rctx, host, jobID)
	if err != nil {
		if !errors.Is(err, kvstate.ErrJobNotFound) && ctx.Err() == nil {
			w.log.WithError(err).WithField("job_id", jobID).Debug("read the job record for a cancel")
		}
		return false
	}
	return j.Status == kvstate.StatusCancelled
}
