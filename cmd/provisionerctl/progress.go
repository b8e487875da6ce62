package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/sys/unix"

	"github.com/libvirt-volume-provisioner/provisioner/client"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// isTerminal reports whether w is a terminal that can show bars: one
// that says how large it is (a pseudo-terminal of 0 rows, as script(1)
// without a terminal of its own makes, shows none of mpb's output).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return false
	}
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	return err == nil && ws.Row > 0 && ws.Col > 0
}

// tracked is one job the progress display follows.
type tracked struct {
	jobID string
	// label names the job for a person: its volume or host.
	label string
}

// follow watches the jobs until each ended and shows their progress on
// w: a live bar each on a terminal, otherwise a plain line per stage or
// status change. It returns the final records in the order of jobs and
// the first failure (a *client.JobError for a failed or cancelled job);
// when ctx ends first it returns ctx's error and the jobs go on.
func follow(ctx context.Context, c *client.Client, w io.Writer, jobs []tracked) ([]rest.Job, error) {
	var show display = &plainDisplay{w: w}
	if isTerminal(w) {
		show = newBarDisplay(ctx, w)
	}
	finals := make([]rest.Job, len(jobs))
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	for i, t := range jobs {
		row := show.add(t)
		wg.Go(func() {
			for ev, err := range c.Watch(ctx, t.jobID) {
				if err != nil {
					errs[i] = err
					row.stop(err)
					return
				}
				row.update(ev)
			}
			j, err := c.Get(ctx, t.jobID)
			finals[i], errs[i] = j, err
			if err == nil && (j.Status == rest.StatusFailed || j.Status == rest.StatusCancelled) {
				errs[i] = &client.JobError{Job: j}
			}
			row.finish(j, err)
		})
	}
	wg.Wait()
	show.wait()
	if ctx.Err() != nil {
		return finals, ctx.Err()
	}
	return finals, errors.Join(errs...)
}

// display shows the progress of several jobs.
type display interface {
	add(t tracked) row
	// wait returns once everything shown is flushed.
	wait()
}

// row is one job's line.
type row interface {
	update(ev rest.Event)
	// finish shows the final record (err: it could not be read).
	finish(j rest.Job, err error)
	// stop ends the line when watching stopped (err says why).
	stop(err error)
}

// plainDisplay prints one line per stage or status change: no control
// characters, for pipes and CI logs.
type plainDisplay struct {
	mu sync.Mutex
	w  io.Writer
}

func (d *plainDisplay) add(t tracked) row { return &plainRow{d: d, t: t} }
func (d *plainDisplay) wait()             {}

func (d *plainDisplay) println(line string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintln(d.w, line)
}

type plainRow struct {
	d                   *plainDisplay
	t                   tracked
	lastStatus, lastStg string
}

func (r *plainRow) update(ev rest.Event) {
	if ev.Status == r.lastStatus && ev.Stage == r.lastStg {
		return
	}
	r.lastStatus, r.lastStg = ev.Status, ev.Stage
	if rest.Status(ev.Status).Terminal() {
		return // finish prints the final line
	}
	line := fmt.Sprintf("%s %s: %s", r.t.jobID, r.t.label, ev.Status)
	if ev.Stage != "" {
		line += fmt.Sprintf(" %s %d%%", ev.Stage, ev.Percent)
	}
	if ev.Total > 0 {
		line += fmt.Sprintf(" %s/%s", bytesText(ev.Bytes), bytesText(ev.Total))
	}
	r.d.println(line)
}

func (r *plainRow) finish(j rest.Job, err error) {
	if err != nil {
		r.d.println(fmt.Sprintf("%s %s: cannot read the final state: %v", r.t.jobID, r.t.label, err))
		return
	}
	r.d.println(fmt.Sprintf("%s %s: %s", r.t.jobID, r.t.label, finalText(j)))
}

func (r *plainRow) stop(err error) {
	if errors.Is(err, context.Canceled) {
		r.d.println(fmt.Sprintf("%s %s: stopped watching (the job goes on)", r.t.jobID, r.t.label))
		return
	}
	r.d.println(fmt.Sprintf("%s %s: cannot watch: %v", r.t.jobID, r.t.label, err))
}

// finalText describes a job that ended.
func finalText(j rest.Job) string {
	switch j.Status {
	case rest.StatusCompleted:
		s := "completed 100%"
		if j.Progress != nil && j.Progress.BytesTotal > 0 {
			s += " " + bytesText(j.Progress.BytesTotal)
		}
		if j.CacheHit != nil && *j.CacheHit {
			s += " (cache hit)"
		}
		return s
	case rest.StatusFailed:
		return "failed: " + j.Error
	}
	return string(j.Status)
}

// barDisplay draws a live bar per job (mpb).
type barDisplay struct {
	p *mpb.Progress
}

func newBarDisplay(ctx context.Context, w io.Writer) *barDisplay {
	return &barDisplay{p: mpb.NewWithContext(context.WithoutCancel(ctx), mpb.WithOutput(w), mpb.WithWidth(100), mpb.WithRefreshRate(120*time.Millisecond))}
}

func (d *barDisplay) wait() { d.p.Wait() }

// barState is what a bar's decorators show, written by its watcher.
type barState struct {
	mu        sync.Mutex
	status    string
	stage     string
	percent   int
	bytes     int64
	total     int64
	eta       *int64
	rate      float64
	rateBytes int64
	rateAt    time.Time
	final     string
}

func (d *barDisplay) add(t tracked) row {
	st := &barState{status: "waiting"}
	text := func(f func() string) decor.Decorator {
		return decor.Any(func(decor.Statistics) string {
			st.mu.Lock()
			defer st.mu.Unlock()
			return f()
		})
	}
	bar := d.p.New(100, mpb.BarStyle().Lbound("[").Filler("=").Tip(">").Padding(" ").Rbound("]"),
		mpb.PrependDecorators(
			decor.Name(shortID(t.jobID)+" "+t.label+" ", decor.WCSyncSpaceR),
			text(func() string {
				if st.stage == "" || st.final != "" {
					return st.status
				}
				return st.stage
			}),
		),
		mpb.AppendDecorators(text(func() string {
			if st.final != "" {
				return st.final
			}
			s := fmt.Sprintf("%3d%%", st.percent)
			if st.total > 0 {
				s += fmt.Sprintf(" %s/%s", bytesText(st.bytes), bytesText(st.total))
			}
			if st.rate > 0 {
				s += " " + bytesText(int64(st.rate)) + "/s"
			}
			if st.eta != nil {
				s += " ETA " + (time.Duration(*st.eta) * time.Second).String()
			}
			return s
		})),
	)
	return &barRow{bar: bar, st: st}
}

type barRow struct {
	bar *mpb.Bar
	st  *barState
}

func (r *barRow) update(ev rest.Event) {
	st := r.st
	st.mu.Lock()
	now := time.Now()
	if ev.Stage != st.stage {
		st.rate, st.rateBytes, st.rateAt = 0, ev.Bytes, now
	} else if dt := now.Sub(st.rateAt).Seconds(); dt >= 0.5 && ev.Bytes >= st.rateBytes {
		st.rate = float64(ev.Bytes-st.rateBytes) / dt
		st.rateBytes, st.rateAt = ev.Bytes, now
	}
	st.status, st.stage, st.percent, st.bytes, st.total, st.eta = ev.Status, ev.Stage, ev.Percent, ev.Bytes, ev.Total, ev.ETASec
	st.mu.Unlock()
	if !rest.Status(ev.Status).Terminal() {
		r.bar.SetCurrent(int64(min(max(ev.Percent, 0), 99)))
	}
}

func (r *barRow) finish(j rest.Job, err error) {
	r.st.mu.Lock()
	if err != nil {
		r.st.final = "cannot read the final state: " + err.Error()
	} else {
		// The status is on the bar's left already.
		r.st.status = string(j.Status)
		r.st.final = strings.TrimPrefix(strings.TrimPrefix(finalText(j), string(j.Status)), ":")
		// The full error follows the bars; the bar keeps its width.
		r.st.final = clip(strings.TrimSpace(r.st.final), 50)
	}
	r.st.mu.Unlock()
	if err == nil && j.Status == rest.StatusCompleted {
		r.bar.SetCurrent(100)
		return
	}
	r.bar.Abort(false)
}

func (r *barRow) stop(err error) {
	r.st.mu.Lock()
	if errors.Is(err, context.Canceled) {
		r.st.final = "stopped watching (the job goes on)"
	} else {
		r.st.final = clip("cannot watch: "+err.Error(), 50)
	}
	r.st.mu.Unlock()
	r.bar.Abort(false)
}

// clip shortens s to at most n runes, marking the cut with an ellipsis.
func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// shortID is the first block of a job id.
func shortID(id string) string {
	if i := strings.IndexByte(id, '-'); i > 0 {
		return id[:i]
	}
	return id
}

// bytesText is n in binary units.
func bytesText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
