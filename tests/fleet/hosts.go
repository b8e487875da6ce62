package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/sirupsen/logrus"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/natsconn"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
	"github.com/libvirt-volume-provisioner/provisioner/worker"
)

// workerSettings are what every simulated hypervisor's worker runs with.
type workerSettings struct {
	urls          string
	subjects      messaging.Subjects
	ackWait       time.Duration
	maxDeliver    int
	shutdownGrace time.Duration
	log           *logrus.Logger
	auth          *fleetAuth
}

// simHost is a simulated hypervisor: the real worker code (worker.New and
// Run) over a stand-in pipeline, as one process that can be killed and
// restarted.
type simHost struct {
	state *standInHost
	set   *workerSettings

	mu  sync.Mutex
	cur *workerProcess
}

// workerProcess is one run of a simulated hypervisor's worker.
type workerProcess struct {
	nc     *nats.Conn
	pipe   *standInPipeline
	cancel context.CancelFunc
	done   chan error
}

func newSimHost(name, dir, image string, sleep time.Duration, t *tally, set *workerSettings) (*simHost, error) {
	cache := filepath.Join(dir, name)
	if err := os.MkdirAll(cache, 0o700); err != nil {
		return nil, fmt.Errorf("cache directory of %s: %w", name, err)
	}
	st := &standInHost{name: name, sleep: sleep, image: image, dir: cache, tally: t, volumes: map[string]volume.Volume{}}
	return &simHost{state: st, set: set}, nil
}

// start connects a new worker process of the host and runs it.
func (h *simHost) start(ctx context.Context) error {
	name := h.state.name
	opts := append([]nats.Option{nats.Name("fleet-worker-" + name), nats.CustomInboxPrefix(natsconn.WorkerInboxPrefix(name))},
		natsconn.Resilient(func(error) {}, func(string) {})...)
	opts = append(opts, h.set.auth.workerOpts(name)...)
	nc, err := nats.Connect(h.set.urls, opts...)
	if err != nil {
		return fmt.Errorf("connect worker %s: %w", name, err)
	}
	pipe := newStandInPipeline(h.state)
	pctx, cancel := context.WithCancel(ctx)
	cfg := worker.Config{Host: name, JSAPIPrefix: h.set.auth.jsPrefix(), MachineID: "fleet-" + name, Version: "fleet", AckWait: h.set.ackWait,
		MaxDeliver: h.set.maxDeliver, ShutdownGrace: h.set.shutdownGrace}
	w, err := worker.New(pctx, cfg, nc, h.set.subjects, pipe.parts(), h.set.log)
	if err != nil {
		cancel()
		nc.Close()
		return fmt.Errorf("worker %s: %w", name, err)
	}
	p := &workerProcess{nc: nc, pipe: pipe, cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := w.Run(pctx)
		p.done <- err
		if err != nil && pctx.Err() == nil {
			h.onFailure(ctx, p, err)
		}
	}()
	h.mu.Lock()
	h.cur = p
	h.mu.Unlock()
	return nil
}

// restartSec is how long systemd waits before restarting a failed worker
// (deploy/systemd/provisioner-worker.service: Restart=on-failure, RestartSec=2s).
const restartSec = 2 * time.Second

// onFailure handles a worker that exited on its own with err: it is
// counted and, as systemd would, restarted after restartSec.
func (h *simHost) onFailure(ctx context.Context, p *workerProcess, err error) {
	h.set.log.WithError(err).WithField("host", h.state.name).Error("fleet: worker exited; restarting it as systemd would")
	h.state.tally.workerExit(h.state.name, err)
	h.mu.Lock()
	current := h.cur == p
	h.mu.Unlock()
	p.nc.Close()
	p.pipe.kill()
	if !current {
		return
	}
	select {
	case <-ctx.Done():
		return
	case <-time.After(restartSec):
	}
	if err := h.start(ctx); err != nil {
		h.set.log.WithError(err).WithField("host", h.state.name).Error("fleet: restart failed")
	}
}

// kill ends the worker process like kill -9: its NATS connection closes
// without draining (no more acks or record writes), its conversions stop
// without effect, and it is not waited for.
func (h *simHost) kill() {
	h.mu.Lock()
	p := h.cur
	h.cur = nil
	h.mu.Unlock()
	if p == nil {
		return
	}
	p.nc.Close()
	p.pipe.kill()
	p.cancel()
}

// stop ends the worker process as SIGTERM does: no new jobs, running ones
// get the shutdown grace, then the connection drains.
func (h *simHost) stop() {
	h.mu.Lock()
	p := h.cur
	h.cur = nil
	h.mu.Unlock()
	if p == nil {
		return
	}
	p.cancel()
	select {
	case <-p.done:
	case <-time.After(h.set.shutdownGrace + 10*time.Second):
		h.set.log.WithField("host", h.state.name).Error("fleet: worker did not stop in time")
	}
	_ = p.nc.Drain()
}

// running is how many jobs the host runs now.
func (h *simHost) running() int {
	h.state.mu.Lock()
	defer h.state.mu.Unlock()
	return h.state.active
}
