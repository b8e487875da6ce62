package main

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// Faults the harness can inject (-fault).
const (
	faultNone          = "none"
	faultKillLeader    = "kill-leader"       // kill -9 the job stream's leader node mid-run, then restart it
	faultKillEarly     = "kill-leader-early" // the same, as the load starts (the cluster's first minute)
	faultStopNode      = "stop-node"         // SIGSTOP the job stream's leader node, SIGCONT after -stop-for
	faultKillWorkers   = "kill-workers"      // kill 10% of the simulated workers mid-job, then restart them
	faultRestartAll    = "restart-all-workers"
	faultKillAPI       = "kill-api" // kill -9 one API replica under load, restart it later
	defaultRejoinLimit = 60 * time.Second
)

var faults = []string{faultNone, faultKillLeader, faultKillEarly, faultStopNode, faultKillWorkers, faultRestartAll, faultKillAPI}

// faultTrigger is the share of the jobs completed when a fault fires.
func faultTrigger(fault string) float64 {
	switch fault {
	case faultKillEarly:
		return 0.02
	case faultKillLeader, faultRestartAll:
		return 0.4
	default:
		return 0.3
	}
}

// faultResult is what a fault did and how the fleet took it.
type faultResult struct {
	at        time.Time
	desc      string
	node      string
	rejoin    time.Duration // until the restarted or resumed node was current again
	rejoinErr error
}

// inject waits until the trigger share of jobs completed, then applies the fault.
func (f *fleet) inject(ctx context.Context, res *faultResult) error {
	want := int(faultTrigger(f.opt.fault) * float64(f.opt.jobs))
	for f.tally.completedJobs() < max(want, 1) {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
	res.at = time.Now()
	switch f.opt.fault {
	case faultKillLeader, faultKillEarly:
		return f.killLeader(ctx, res)
	case faultStopNode:
		return f.stopNode(ctx, res)
	case faultKillWorkers:
		f.killWorkers(ctx, res)
	case faultRestartAll:
		f.restartAllWorkers(ctx, res)
	case faultKillAPI:
		return f.killAPI(ctx, res)
	}
	return nil
}

// killLeader kill -9s the node leading the job stream, restarts it after
// -restart-after and measures how long until it is current on every stream.
func (f *fleet) killLeader(ctx context.Context, res *faultResult) error {
	n, err := f.jobLeader(ctx)
	if err != nil {
		return err
	}
	f.cluster.kill(n)
	res.node = n.name
	f.logf("fault: killed %s (leader of %s) with %d jobs done", n.name, messaging.JobStream, f.tally.completedJobs())
	time.Sleep(f.opt.restartAfter)
	if err := f.cluster.start(n); err != nil {
		return err
	}
	res.rejoin, res.rejoinErr = waitCurrent(ctx, f.js, n, defaultRejoinLimit)
	res.desc = fmt.Sprintf("kill -9 %s (job stream leader), restarted after %s; current again after %.1f s",
		n.name, f.opt.restartAfter, res.rejoin.Seconds())
	return nil
}

// stopNode freezes the job stream's leader for -stop-for.
func (f *fleet) stopNode(ctx context.Context, res *faultResult) error {
	n, err := f.jobLeader(ctx)
	if err != nil {
		return err
	}
	if err := f.cluster.signal(n, syscall.SIGSTOP); err != nil {
		return err
	}
	res.node = n.name
	f.logf("fault: SIGSTOP %s (leader of %s) for %s", n.name, messaging.JobStream, f.opt.stopFor)
	time.Sleep(f.opt.stopFor)
	if err := f.cluster.signal(n, syscall.SIGCONT); err != nil {
		return err
	}
	res.rejoin, res.rejoinErr = waitCurrent(ctx, f.js, n, defaultRejoinLimit)
	res.desc = fmt.Sprintf("SIGSTOP %s (job stream leader) for %s; current again %.1f s after SIGCONT",
		n.name, f.opt.stopFor, res.rejoin.Seconds())
	return nil
}

func (f *fleet) jobLeader(ctx context.Context) (*node, error) {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	name, err := streamLeader(lctx, f.js, messaging.JobStream)
	if err != nil {
		return nil, err
	}
	n := f.cluster.byName(name)
	if n == nil {
		return nil, fmt.Errorf("job stream leader %q is not a node of the harness", name)
	}
	return n, nil
}

// killWorkers kills 10% of the hosts (those running jobs first) and
// restarts them after -restart-after.
func (f *fleet) killWorkers(ctx context.Context, res *faultResult) {
	victims := make([]*simHost, len(f.hosts))
	copy(victims, f.hosts)
	sort.SliceStable(victims, func(i, j int) bool { return victims[i].running() > victims[j].running() })
	victims = victims[:max(1, len(victims)/10)]
	running := 0
	for _, h := range victims {
		running += h.running()
		h.kill()
	}
	f.logf("fault: killed %d workers (running %d jobs)", len(victims), running)
	time.Sleep(f.opt.restartAfter)
	f.startHosts(ctx, victims)
	res.desc = fmt.Sprintf("killed %d simulated workers running %d jobs, restarted after %s", len(victims), running, f.opt.restartAfter)
}

// restartAllWorkers stops every worker as SIGTERM would, then starts them all at once.
func (f *fleet) restartAllWorkers(ctx context.Context, res *faultResult) {
	start := time.Now()
	var wg sync.WaitGroup
	for _, h := range f.hosts {
		wg.Go(h.stop)
	}
	wg.Wait()
	stopped := time.Since(start)
	f.logf("fault: stopped all %d workers in %.1f s; starting them all at once", len(f.hosts), stopped.Seconds())
	f.startHosts(ctx, f.hosts)
	res.desc = fmt.Sprintf("stopped all %d workers (SIGTERM-like, %.1f s) and started them at once (%.1f s)",
		len(f.hosts), stopped.Seconds(), time.Since(start).Seconds()-stopped.Seconds())
}

// killAPI kill -9s the first API replica and restarts it after -restart-after.
func (f *fleet) killAPI(ctx context.Context, res *faultResult) error {
	a := f.apis[0]
	a.kill()
	f.logf("fault: killed %s", a.name)
	time.Sleep(f.opt.restartAfter)
	if err := a.start(ctx, f.apiBin); err != nil {
		return err
	}
	res.desc = fmt.Sprintf("kill -9 %s under load, restarted after %s", a.name, f.opt.restartAfter)
	return nil
}

// dispatchGap is the longest pause between job starts in the minute after at.
func (t *tally) dispatchGap(at time.Time) time.Duration {
	t.mu.Lock()
	times := append([]time.Time(nil), t.startTimes...)
	t.mu.Unlock()
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	var gap time.Duration
	prev := at
	for _, s := range times {
		if s.Before(at) {
			continue
		}
		if s.After(at.Add(time.Minute)) {
			break
		}
		gap = max(gap, s.Sub(prev))
		prev = s
	}
	return gap
}
