package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	stageErr := errors.New("qemu-img convert: exit status 1")
	// What a stage returns when its context is stopped.
	stopped := fmt.Errorf("populate: %w", context.Canceled)
	cases := []struct {
		name       string
		err, cause error
		want       outcome
		report     string
	}{
		{"every stage succeeded", nil, nil, outcomeCompleted, "completed"},
		{"a stage failed", stageErr, nil, outcomeFailed, "failed"},
		{"the disk filled", filledUp(fmt.Errorf("write: %w", syscall.ENOSPC)), nil, outcomeFailed, "failed"},
		{"run time exceeded", stopped, errRunTime, outcomeFailed, "failed"},
		{"run time exceeded as the last stage returned", nil, errRunTime, outcomeFailed, "failed"},
		{"cancelled mid-stage", stopped, errCancelled, outcomeCancelled, "cancelled"},
		{"cancelled after the last stage", nil, errCancelled, outcomeCancelled, "cancelled"},
		{"shutdown mid-stage", stopped, errShutdown, outcomeShutdown, "interrupted"},
		{"shutdown after the last stage", nil, errShutdown, outcomeShutdown, "interrupted"},
		{"fenced mid-stage", stopped, errFenced, outcomeFenced, "fenced"},
		{"fenced outranks a stage's own error", stageErr, errFenced, outcomeFenced, "fenced"},
		{"superseded, then found fenced", kvstate.ErrSuperseded, errFenced, outcomeFenced, "fenced"},
		{"superseded, then found cancelled", kvstate.ErrSuperseded, errCancelled, outcomeCancelled, "cancelled"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := classify(c.err, c.cause)
			if got != c.want {
				t.Fatalf("classify(%v, %v) = %v, want %v", c.err, c.cause, got, c.want)
			}
			if got.String() != c.report {
				t.Fatalf("%v reports %q, want %q", got, got.String(), c.report)
			}
		})
	}
}

func TestClassifyCompletion(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		err  error
		want outcome
	}{
		{"recorded", nil, outcomeCompleted},
		{"another attempt owns the record", fmt.Errorf("update: %w", kvstate.ErrSuperseded), outcomeFenced},
		{"cancelled at the last moment", &kvstate.TransitionError{From: kvstate.StatusCancelled, To: kvstate.StatusCompleted}, outcomeCancelled},
		{"NATS did not answer", errors.New("nats: timeout"), outcomeUnrecorded},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := classifyCompletion(c.err); got != c.want {
				t.Fatalf("classifyCompletion(%v) = %v, want %v", c.err, got, c.want)
			}
		})
	}
}

func TestRefusal(t *testing.T) {
	t.Parallel()
	w := &Worker{cfg: Config{MaxDeliver: 5, MaxPendingAge: time.Hour}}
	fresh := kvstate.Job{Status: kvstate.StatusPending, CreatedAt: time.Now().Add(-time.Minute)}
	stale := kvstate.Job{Status: kvstate.StatusPending, CreatedAt: time.Now().Add(-2 * time.Hour)}
	// A redelivered running job is as old as it is: its age is no refusal.
	staleRunning := kvstate.Job{Status: kvstate.StatusRunning, CreatedAt: time.Now().Add(-2 * time.Hour)}
	cases := []struct {
		name    string
		cur     kvstate.Job
		attempt int
		verr    error
		reason  string // a part of the reason; "" for none
		term    string
	}{
		{"may run", fresh, 1, nil, "", ""},
		{"a malformed message", fresh, 1, errors.New("volume_name is required"), "invalid job message: volume_name is required", "malformed"},
		{"malformed outranks the age", stale, 1, errors.New("bad"), "invalid job message: bad", "malformed"},
		{"pending too long", stale, 1, nil, "longer than the maximum pending age of 1h0m0s (PROVISIONER_MAX_PENDING_AGE); submit it again", "pending too long"},
		{"a running job is not aged", staleRunning, 2, nil, "", ""},
		{"the last delivery", fresh, 5, nil, "gave up after 5 deliveries", "max deliveries"},
		{"one before the last", fresh, 4, nil, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			reason, term := w.refusal(c.cur, c.attempt, c.verr)
			if c.reason == "" && reason != "" || !strings.Contains(reason, c.reason) || term != c.term {
				t.Fatalf("refusal = (%q, %q), want a reason with %q and %q", reason, term, c.reason, c.term)
			}
		})
	}
}
