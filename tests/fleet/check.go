package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
)

// verdict is what the harness found about the jobs it offered.
type verdict struct {
	offered, accepted, notAccepted int
	completed, failed, cancelled   int
	nonTerminal, missing           int
	// lost: accepted but not completed exactly as its record says (failed,
	// cancelled, still pending or running, no record, or completed with no effect).
	lost int
	// doubled: more than one effect (a volume written twice).
	doubled    int
	overlapped int // doubled with the executions at the same time
	reruns     int // started more than once, but one effect (redelivery after a crash)
	maxPerHost int
	examples   []string
	exits      int
	firstExit  string
	p50, p99   time.Duration
	acceptRate float64
}

// waitEffects waits until every accepted submission has had an effect, or
// no new effect arrived for idle.
func waitEffects(ctx context.Context, t *tally, want int, idle time.Duration) {
	last, lastChange := -1, time.Now()
	for ctx.Err() == nil {
		n := t.completedJobs()
		if n >= want {
			return
		}
		if n != last {
			last, lastChange = n, time.Now()
		}
		if time.Since(lastChange) > idle {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// readRecords reads the job record of every accepted submission.
func readRecords(ctx context.Context, jobs kvstate.Jobs, subs []*submission) map[string]kvstate.Job {
	recs := make(map[string]kvstate.Job, len(subs))
	var mu sync.Mutex
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for _, s := range subs {
		if s.err != nil {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			for attempt := range 5 {
				gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				j, _, err := jobs.Get(gctx, s.host, s.jobID)
				cancel()
				if err == nil {
					mu.Lock()
					recs[s.key] = j
					mu.Unlock()
					return
				}
				if !kvstate.Transient(err) {
					return
				}
				time.Sleep(time.Duration(attempt+1) * 500 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	return recs
}

// judge compares every submission's record with the stand-in's counts.
func judge(subs []*submission, recs map[string]kvstate.Job, t *tally) verdict {
	t.mu.Lock()
	defer t.mu.Unlock()
	v := verdict{offered: len(subs), maxPerHost: t.maxPerHost, exits: t.exits, firstExit: t.firstExit}
	var dispatch []time.Duration
	var first, last time.Time
	for _, s := range subs {
		if s.err != nil {
			v.notAccepted++
			v.example(fmt.Sprintf("not accepted (%s, host %s): %v (first try: %v)", s.via, s.host, s.err, s.firstErr))
			continue
		}
		v.accepted++
		if first.IsZero() || s.sent.Before(first) {
			first = s.sent
		}
		if s.accepted.After(last) {
			last = s.accepted
		}
		if st, ok := t.firstStart[s.key]; ok {
			dispatch = append(dispatch, st.Sub(s.sent))
		}
		v.judgeOne(s, recs, t)
	}
	if d := last.Sub(first).Seconds(); d > 0 {
		v.acceptRate = float64(v.accepted) / d
	}
	sort.Slice(dispatch, func(i, j int) bool { return dispatch[i] < dispatch[j] })
	v.p50, v.p99 = percentile(dispatch, 0.50), percentile(dispatch, 0.99)
	return v
}

// judgeOne classifies one accepted job (t.mu held).
func (v *verdict) judgeOne(s *submission, recs map[string]kvstate.Job, t *tally) {
	effects := t.effects[s.key]
	if effects > 1 {
		v.doubled++
		kind := "one after the other"
		if t.overlapped(s.key) {
			v.overlapped++
			kind = "overlapping"
		}
		v.example(fmt.Sprintf("doubled: job %s on %s (%s): %d effects, %d starts, %s", s.jobID, s.host, s.via, effects, t.starts[s.key], kind))
	} else if t.starts[s.key] > 1 {
		v.reruns++
	}
	rec, ok := recs[s.key]
	switch {
	case !ok:
		v.missing++
		v.lost++
		v.example(fmt.Sprintf("lost: job %s on %s (%s): no record %s", s.jobID, s.host, s.via, s.note))
		return
	case rec.Status == kvstate.StatusCompleted:
		v.completed++
	case rec.Status == kvstate.StatusFailed:
		v.failed++
	case rec.Status == kvstate.StatusCancelled:
		v.cancelled++
	default:
		v.nonTerminal++
	}
	if rec.Status != kvstate.StatusCompleted || effects == 0 {
		v.lost++
		v.example(fmt.Sprintf("lost: job %s on %s (%s): status %s, attempt %d, %d effects, error %q %s",
			s.jobID, s.host, s.via, rec.Status, rec.Attempt, effects, rec.Error, s.note))
	}
}

// example keeps the first few findings to print.
func (v *verdict) example(s string) {
	if len(v.examples) < 20 {
		v.examples = append(v.examples, s)
	}
}

// percentile of sorted durations (0 when there are none).
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// print writes the findings and, last, the one summary line.
func (v verdict) print(w io.Writer, hosts int) {
	fmt.Fprintf(w, "jobs: offered=%d accepted=%d not_accepted=%d completed=%d failed=%d cancelled=%d non_terminal=%d no_record=%d reruns=%d doubled_overlapping=%d\n",
		v.offered, v.accepted, v.notAccepted, v.completed, v.failed, v.cancelled, v.nonTerminal, v.missing, v.reruns, v.overlapped)
	if v.exits > 0 {
		fmt.Fprintf(w, "workers that exited on their own (restarted after %s, as systemd would): %d; first: %s\n", restartSec, v.exits, v.firstExit)
	}
	for _, e := range v.examples {
		fmt.Fprintln(w, "  "+e)
	}
	fmt.Fprintf(w, "fleet: hosts=%d jobs=%d lost=%d doubled=%d max_per_host=%d dispatch_p50_ms=%.1f dispatch_p99_ms=%.1f accepted_per_s=%.1f\n",
		hosts, v.offered, v.lost+v.notAccepted, v.doubled, v.maxPerHost, ms(v.p50), ms(v.p99), v.acceptRate)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
