package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/natsconn"
)

// publishers is how many NATS connections offer the direct-publish load.
const publishers = 4

// fleet is one run of the harness.
type fleet struct {
	opt     options
	out     io.Writer
	dir     string
	cluster *cluster
	apis    []*apiProc
	apiBin  string
	hosts   []*simHost
	tally   *tally
	set     *workerSettings
	admin   *nats.Conn
	js      jetstream.JetStream
	pubs    []*nats.Conn
	auth    *fleetAuth // nil: no client authentication
}

// result is what a run measured, for the test.
type result struct {
	verdict verdict
	fault   faultResult
	fleetUp time.Duration
}

func (f *fleet) logf(format string, args ...any) {
	fmt.Fprintf(f.out, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

// run brings the fleet up, offers the load, injects the fault, checks
// every job and prints the figures; the summary line comes last.
func run(ctx context.Context, opt options, out io.Writer) (res result, err error) {
	f := &fleet{opt: opt, out: out, tally: newTally()}
	if f.dir, err = os.MkdirTemp("", "provisioner-fleet-"); err != nil {
		return res, fmt.Errorf("run directory: %w", err)
	}
	defer func() { f.teardown(err == nil && res.verdict.clean()) }()
	if err := f.up(ctx); err != nil {
		return res, err
	}
	res.fleetUp, err = f.startFleet(ctx)
	if err != nil {
		return res, err
	}
	f.tally.mu.Lock()
	exits := f.tally.exits
	f.tally.mu.Unlock()
	f.logf("fleet up: %d hosts with their consumers in %.2f s (%d workers exited on their own meanwhile)", opt.hosts, res.fleetUp.Seconds(), exits)
	var ops *opCounter
	if opt.countOps {
		if ops, err = countOps(f.admin); err != nil {
			return res, fmt.Errorf("count operations: %w", err)
		}
	}
	meter := newCPUMeter(f.pids)
	selfStart, wallStart := selfCPU(), time.Now()
	res.verdict, res.fault, err = f.load(ctx)
	if err != nil {
		return res, err
	}
	f.printMemory()
	if ops != nil {
		ops.report(out, opt.jobs)
	}
	names := []string{"node-1", "node-2", "node-3"}
	for _, a := range f.apis {
		names = append(names, a.name)
	}
	meter.report(out, names, time.Since(wallStart), selfStart)
	if res.fault.desc != "" {
		fmt.Fprintf(out, "fault: %s; longest pause between job starts in the minute after: %.2f s\n",
			res.fault.desc, f.tally.dispatchGap(res.fault.at).Seconds())
		if res.fault.rejoinErr != nil {
			fmt.Fprintf(out, "fault: %v\n", res.fault.rejoinErr)
		}
	}
	if opt.natsBench != "" {
		f.natsBench(ctx, opt.natsBench)
	}
	fmt.Fprintf(out, "fleet_up_s=%.2f\n", res.fleetUp.Seconds())
	res.verdict.print(out, opt.hosts)
	return res, nil
}

// clean reports whether the run found nothing wrong.
func (v verdict) clean() bool {
	return v.lost == 0 && v.notAccepted == 0 && v.doubled == 0 && v.maxPerHost <= 2
}

// up builds the binaries and starts the cluster and the API replicas.
func (f *fleet) up(ctx context.Context) error {
	repo, err := repoRoot()
	if err != nil {
		return err
	}
	natsBin, apiBin, err := build(ctx, repo, f.dir)
	if err != nil {
		return err
	}
	f.apiBin = apiBin
	f.logf("built nats-server and bin/api into %s", f.dir)
	if f.opt.jwt {
		if f.auth, err = newJWTAuth(f.dir); err != nil {
			return err
		}
	}
	if f.cluster, err = startCluster(natsBin, filepath.Join(repo, "deploy", "nats", "cluster"), f.dir, f.auth.serverConf()); err != nil {
		return err
	}
	opts := append([]nats.Option{nats.Name("fleet-admin")}, natsconn.Resilient(func(error) {}, func(string) {})...)
	opts = append(opts, f.auth.adminOpts()...)
	if f.admin, err = nats.Connect(f.cluster.URLs(), opts...); err != nil {
		return fmt.Errorf("connect to the cluster: %w", err)
	}
	if f.js, err = jetstream.New(f.admin); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := f.cluster.waitJetStream(wctx, f.admin); err != nil {
		return err
	}
	f.logf("3-node cluster up: %s", f.cluster.URLs())
	if f.apis, err = newAPIs(f.dir, f.cluster.URLs(), f.opt.dispatch); err != nil {
		return err
	}
	for _, a := range f.apis {
		a.env = append(a.env, f.auth.apiEnv()...)
	}
	// One after the other: each creates or updates the streams and buckets at start.
	for _, a := range f.apis {
		if err := a.start(ctx, apiBin); err != nil {
			return err
		}
	}
	f.logf("%d API replicas ready", len(f.apis))
	return nil
}

// startFleet starts every simulated hypervisor and waits until each has
// its consumer; it returns how long that took.
func (f *fleet) startFleet(ctx context.Context) (time.Duration, error) {
	logf, err := os.OpenFile(filepath.Join(f.dir, "workers.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("open the workers' log: %w", err)
	}
	log := logrus.New()
	log.SetOutput(logf)
	log.SetFormatter(&logrus.JSONFormatter{})
	f.set = &workerSettings{urls: f.cluster.URLs(), subjects: messaging.NewSubjects(messaging.DefaultPrefix),
		ackWait: f.opt.ackWait, maxDeliver: 5, shutdownGrace: 2 * time.Second, log: log, auth: f.auth}
	image, err := writeStandInImage(f.dir)
	if err != nil {
		return 0, err
	}
	for i := range f.opt.hosts {
		h, err := newSimHost(fmt.Sprintf("hv-%05d", i+1), filepath.Join(f.dir, "hosts"), image, f.opt.duration, f.tally, f.set)
		if err != nil {
			return 0, err
		}
		f.hosts = append(f.hosts, h)
	}
	start := time.Now()
	var names []string
	for _, h := range f.hosts {
		names = append(names, h.state.name)
	}
	if err := f.auth.enroll(ctx, f.cluster.URLs(), names); err != nil {
		return 0, fmt.Errorf("enroll the hosts: %w", err)
	}
	if err := f.startHosts(ctx, f.hosts); err != nil {
		return 0, err
	}
	for {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		s, err := f.js.Stream(sctx, messaging.JobStream)
		cancel()
		if err == nil && s.CachedInfo().State.Consumers >= f.opt.hosts {
			return time.Since(start), nil
		}
		if time.Since(start) > 5*time.Minute {
			return 0, fmt.Errorf("only some of %d consumers exist after 5 minutes (%v)", f.opt.hosts, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startHosts starts hosts' workers, 32 at a time.
func (f *fleet) startHosts(ctx context.Context, hosts []*simHost) error {
	sem := make(chan struct{}, 32)
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	for _, h := range hosts {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := h.start(ctx); err != nil {
				mu.Lock()
				first = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return first
}

// load offers the jobs with the fault alongside, waits for them and judges them.
func (f *fleet) load(ctx context.Context) (verdict, faultResult, error) {
	var fres faultResult
	l, err := f.newLoader()
	if err != nil {
		return verdict{}, fres, err
	}
	names := make([]string, len(f.hosts))
	for i, h := range f.hosts {
		names[i] = h.state.name
	}
	fctx, cancelFault := context.WithCancel(ctx)
	defer cancelFault()
	faultDone := make(chan error, 1)
	go func() {
		if f.opt.fault == faultNone {
			faultDone <- nil
			return
		}
		faultDone <- f.inject(fctx, &fres)
	}()
	f.logf("offering %d jobs at %.0f/s (every %d-th through REST), each running %s", f.opt.jobs, f.opt.rate, f.opt.restEvery, f.opt.duration)
	subs := l.offer(ctx, names, f.opt.jobs, f.opt.rate, nil)
	accepted := 0
	for _, s := range subs {
		if s.err == nil {
			accepted++
		}
	}
	f.logf("offered: %d accepted; waiting for their effects", accepted)
	waitEffects(ctx, f.tally, accepted, f.opt.settle)
	if err := <-faultDone; err != nil {
		return verdict{}, fres, fmt.Errorf("fault %s: %w", f.opt.fault, err)
	}
	waitEffects(ctx, f.tally, accepted, f.opt.settle)
	recs := f.waitRecords(ctx, subs)
	return judge(subs, recs, f.tally), fres, nil
}

// waitRecords reads the records until every one is terminal or 30 s passed
// (a job's last record write follows its effect).
func (f *fleet) waitRecords(ctx context.Context, subs []*submission) map[string]kvstate.Job {
	jobs := kvstate.Jobs{KV: nil}
	kv, err := f.js.KeyValue(ctx, messaging.JobBucket)
	if err != nil {
		f.logf("bind %s: %v", messaging.JobBucket, err)
		return nil
	}
	jobs.KV = kv
	deadline := time.Now().Add(30 * time.Second)
	for {
		recs := readRecords(ctx, jobs, subs)
		done := true
		for _, s := range subs {
			if r, ok := recs[s.key]; s.err == nil && (!ok || !r.Status.Terminal()) {
				done = false
				break
			}
		}
		if done || time.Now().After(deadline) {
			return recs
		}
		time.Sleep(time.Second)
	}
}

func (f *fleet) newLoader() (*loader, error) {
	l := &loader{apis: f.apis, subjects: f.set.subjects, restEvery: f.opt.restEvery,
		http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 128}}}
	for i := range publishers {
		opts := append([]nats.Option{nats.Name(fmt.Sprintf("fleet-publisher-%d", i))}, natsconn.Resilient(func(error) {}, func(string) {})...)
		opts = append(opts, f.auth.adminOpts()...)
		nc, err := nats.Connect(f.cluster.URLs(), opts...)
		if err != nil {
			return nil, fmt.Errorf("connect publisher: %w", err)
		}
		js, err := jetstream.New(nc)
		if err != nil {
			return nil, err
		}
		f.pubs = append(f.pubs, nc)
		l.js = append(l.js, js)
	}
	return l, nil
}

// pids are the current process ids of the nodes and API replicas.
func (f *fleet) pids() map[string]int {
	m := map[string]int{}
	for _, n := range f.cluster.nodes {
		if n.cmd != nil && n.cmd.Process != nil {
			m[n.name] = n.cmd.Process.Pid
		}
	}
	for _, a := range f.apis {
		if a.cmd != nil && a.cmd.Process != nil {
			m[a.name] = a.cmd.Process.Pid
		}
	}
	return m
}

// printMemory prints each node's memory as its /varz reports it.
func (f *fleet) printMemory() {
	for _, n := range f.cluster.nodes {
		mem, err := nodeMemory(n)
		if err != nil {
			fmt.Fprintf(f.out, "memory: %v\n", err)
			continue
		}
		fmt.Fprintf(f.out, "memory: %s rss_mib=%.1f (varz)\n", n.name, float64(mem)/(1<<20))
	}
}

// teardown stops everything; the run's directory is kept (and named)
// unless the run was clean and -keep was not given.
func (f *fleet) teardown(clean bool) {
	for _, h := range f.hosts {
		h.kill()
	}
	for _, nc := range f.pubs {
		nc.Close()
	}
	if f.admin != nil {
		f.admin.Close()
	}
	for _, a := range f.apis {
		a.stop()
	}
	if f.cluster != nil {
		f.cluster.stop()
	}
	if clean && !f.opt.keep {
		os.RemoveAll(f.dir)
		return
	}
	fmt.Fprintf(f.out, "run directory kept: %s (workers.log, node-*.log, api-*.log)\n", f.dir)
}
