package worker

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"
)

// outcome is how an attempt ended. classify and classifyCompletion decide
// it; conclude is the one place that acts on it (ack, nak or term, the
// rollback, the metrics, the event).
type outcome int

const (
	// outcomeCompleted: the job's work is done and recorded. Ack.
	outcomeCompleted outcome = iota
	// outcomeFailed: the job cannot succeed as asked. Roll back, record the
	// reason, term.
	outcomeFailed
	// outcomeCancelled: the job was cancelled while it ran. Roll back, term.
	outcomeCancelled
	// outcomeShutdown: the worker is stopping. Nak; the next delivery need
	// not wait for this attempt's heartbeat to expire.
	outcomeShutdown
	// outcomeUnrecorded: the work is done but the completion could not be
	// recorded. Nak; the job runs again.
	outcomeUnrecorded
	// outcomeFenced: another attempt may own the job (in-progress acks
	// failed for too long, or another attempt took it over). Touch nothing:
	// the volume and the message are the other attempt's.
	outcomeFenced
)

// String is the outcome as the job span and the log report it.
func (o outcome) String() string {
	switch o {
	case outcomeCompleted:
		return string(kvstate.StatusCompleted)
	case outcomeFailed:
		return string(kvstate.StatusFailed)
	case outcomeCancelled:
		return string(kvstate.StatusCancelled)
	case outcomeShutdown, outcomeUnrecorded:
		return "interrupted"
	case outcomeFenced:
		return "fenced"
	}
	return fmt.Sprintf("outcome(%d)", int(o))
}

// classify is how an attempt ended, from the error its stages returned and
// the cause that stopped its context (nil when nothing did). A cause
// outranks the error, which is often only its echo.
func classify(err, cause error) outcome {
	switch {
	case errors.Is(cause, errFenced):
		return outcomeFenced
	case errors.Is(cause, errShutdown):
		return outcomeShutdown
	case errors.Is(cause, errCancelled):
		return outcomeCancelled
	case err == nil && cause == nil:
		return outcomeCompleted
	}
	return outcomeFailed
}

// classifyCompletion is how a completed attempt ended once it tried to
// record its completion (err is what that returned).
func classifyCompletion(err error) outcome {
	var te *kvstate.TransitionError
	switch {
	case err == nil:
		return outcomeCompleted
	case errors.Is(err, kvstate.ErrSuperseded):
		return outcomeFenced
	case errors.As(err, &te):
		// Cancelled at the last moment: undone like any cancelled job.
		return outcomeCancelled
	}
	return outcomeUnrecorded
}

// ending is what conclude needs to settle an attempt.
type ending struct {
	log     *logrus.Entry
	msg     jetstream.Msg
	att     *kvstate.Attempt
	rep     *reporter
	job     messaging.Job
	res     result
	err     error
	cause   error
	started time.Time
	// final is the completed record (outcomeCompleted); recordErr is why
	// recording the completion failed.
	final     kvstate.Job
	recordErr error
}

// complete records a finished attempt's completion and classifies it.
func (w *Worker) complete(e *ending) outcome {
	final, err := w.recordCompletion(e.log, e.att, func(j *kvstate.Job) {
		now := time.Now().UTC()
		j.Status = kvstate.StatusCompleted
		j.FinishedAt = &now
		j.Progress = e.rep.final()
		j.CacheHit = &e.res.CacheHit
		j.ImagePath = e.res.ImagePath
		j.VolumePath = e.res.VolumePath
		j.Checksum = e.res.Checksum
		j.Cloned = e.res.Cloned
		j.SeedVolumePath = e.res.seed.path
	})
	e.final, e.recordErr = final, err
	return classifyCompletion(err)
}

// conclude settles an attempt that ended with o: the message, the volume,
// the record, the metrics and the event.
func (w *Worker) conclude(ctx context.Context, o outcome, e *ending) outcome {
	host, jobID := e.att.Record().Hypervisor, e.att.Record().JobID
	switch o {
	case outcomeFenced:
		if e.recordErr != nil {
			e.log.WithError(e.recordErr).Error("job stopped: another attempt took the job over")
		} else {
			e.log.WithError(e.cause).Error("job stopped")
		}
		return o
	case outcomeShutdown:
		_, _ = e.att.Update(ctx, func(j *kvstate.Job) error {
			e.rep.fold(j)
			j.HeartbeatAt = nil
			return nil
		})
		e.log.Info("job interrupted by shutdown; it will be redelivered")
		_ = e.msg.NakWithDelay(nakDelay)
		return o
	case outcomeUnrecorded:
		e.log.WithError(e.recordErr).Warn("could not record completion; the job will be redelivered")
		_ = e.msg.NakWithDelay(nakDelay)
		return o
	case outcomeCompleted:
		_ = e.msg.DoubleAck(ctx)
		w.settle(host, jobID)
		w.metrics.jobs.WithLabelValues(string(kvstate.StatusCompleted)).Inc()
		w.metrics.duration.WithLabelValues("completed").Observe(time.Since(e.started).Seconds())
		w.publishEvent(host, jobID, e.final)
		e.log.WithFields(logrus.Fields{"cache_hit": e.res.CacheHit, "volume_path": e.res.VolumePath, "seconds": time.Since(e.started).Seconds(), "stage": stages.Finalize}).Info("job completed")
		return o
	}
	if errors.Is(e.cause, errRunTime) {
		e.err = fmt.Errorf("the job %w of %s (PROVISIONER_MAX_RUN_TIME) in stage %s", errRunTime, w.cfg.MaxRunTime, e.rep.stage())
	}
	if e.err == nil && o == outcomeFailed {
		e.err = e.cause
	}
	e.err = w.undo(ctx, e)
	if o == outcomeCancelled {
		_ = e.msg.Term()
		w.settle(host, jobID)
		w.metrics.jobs.WithLabelValues(string(kvstate.StatusCancelled)).Inc()
		w.metrics.duration.WithLabelValues("cancelled").Observe(time.Since(e.started).Seconds())
		if cur, _, err := w.jobs.Get(ctx, host, jobID); err == nil {
			w.publishEvent(host, jobID, cur)
		}
		e.log.Info("job cancelled")
		return o
	}
	w.metrics.duration.WithLabelValues("failed").Observe(time.Since(e.started).Seconds())
	w.failAttempt(ctx, e.log.WithField("stage", e.rep.stage()), e.att, e.rep, e.err.Error())
	_ = e.msg.TermWithReason("failed")
	w.settle(host, jobID)
	return o
}

// undo takes back what a failed or cancelled attempt did to the volumes:
// it zeroes the ends of a reused volume it was overwriting (so the
// half-written disk never boots), removes a volume it created, and rolls
// back the seed volume. It returns err with what undoing said.
func (w *Worker) undo(ctx context.Context, e *ending) error {
	err, res := e.err, e.res
	if !res.Created && res.Writing && res.VolumePath != "" {
		if zerr := convert.ZeroEnds(res.VolumePath, res.VolumeSize); zerr != nil {
			err = fmt.Errorf("%w (and zeroing the volume's first and last MiB failed: %v)", err, zerr)
		} else if err != nil {
			err = fmt.Errorf("%w; the volume's first and last MiB were zeroed so the half-written disk does not boot", err)
		}
	}
	if res.Created {
		if derr := w.parts.Backend.Delete(ctx, e.job.VolumeName); derr != nil {
			e.log.WithError(derr).Error("rollback: could not remove the volume this job created")
			if err != nil {
				err = fmt.Errorf("%w (and removing the volume this job created failed: %v)", err, derr)
			}
		} else {
			e.log.WithField("volume", e.job.VolumeName).Info("rollback: removed the volume this job created")
		}
	}
	if res.seed.created || res.seed.writing {
		err = w.rollback(ctx, res.seed, err)
	}
	return err
}

// errFilledUp is the cause given to a job whose writes found the volumes'
// file system full (ENOSPC) although its check passed: something else
// wrote there meanwhile.
var errFilledUp = errors.New("the volumes' file system filled up while the job was writing (something else wrote there after the job's free-space check); nothing the job wrote is kept: the volume or golden it created was removed")

// filledUp gives a job's error the cause a person can act on when a write
// found the file system full.
func filledUp(err error) error {
	if err != nil && errors.Is(err, syscall.ENOSPC) && !errors.Is(err, errFilledUp) {
		return fmt.Errorf("%w: %w", errFilledUp, err)
	}
	return err
}
