package api

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
)

// FleetOptions configure the fleet figures on /metrics (RunFleetMetrics).
type FleetOptions struct {
	// Interval is how often the queues are read from the consumers and
	// hosts are judged alive or stale; zero means 15 s.
	Interval time.Duration
	// TopHosts bounds the per-host queue gauge to the hosts with the
	// longest queues; zero or less exports none.
	TopHosts int
	// JobRetention is the job bucket's TTL: records older than it have
	// expired without a delete marker and leave the counts.
	JobRetention time.Duration
}

// fleetMetrics are the figures every API replica computes alike from the
// shared state: job records by status (a watch of the job bucket keeping
// counts), queued jobs (the hosts' consumers) and hosts alive or stale (a
// watch of the host registry). None of them reads NATS on a scrape.
type fleetMetrics struct {
	jobs        *prometheus.GaugeVec
	active      prometheus.Gauge
	queued      prometheus.Gauge
	hostQueued  *prometheus.GaugeVec
	hosts       *prometheus.GaugeVec
	refreshedAt prometheus.Gauge
	// top are the hosts the per-host gauge has now.
	top map[string]bool
}

func newFleetMetrics(reg prometheus.Registerer) *fleetMetrics {
	f := &fleetMetrics{top: map[string]bool{},
		jobs: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "libvirt_volume_provisioner_fleet_jobs",
			Help: "Job records in the job bucket by status, across the fleet (every API replica reports the same)."}, []string{"status"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{Name: "libvirt_volume_provisioner_fleet_active_jobs",
			Help: "Jobs running across the fleet."}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{Name: "libvirt_volume_provisioner_fleet_queued_jobs",
			Help: "Jobs in the job stream not yet acknowledged, all hosts (NumPending + NumAckPending of every host's consumer)."}),
		hostQueued: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "libvirt_volume_provisioner_fleet_host_queued_jobs",
			Help: "Jobs in the job stream not yet acknowledged, for the hosts with the longest queues only (PROVISIONER_FLEET_TOP_HOSTS); hosts with an empty queue are absent."}, []string{"host"}),
		hosts: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "libvirt_volume_provisioner_fleet_hosts",
			Help: "Hosts in the registry by state: alive (heartbeat within three intervals) or stale."}, []string{"state"}),
		refreshedAt: prometheus.NewGauge(prometheus.GaugeOpts{Name: "libvirt_volume_provisioner_fleet_refreshed_timestamp_seconds",
			Help: "When the queues and host states were last read (Unix time); 0 before the first read."}),
	}
	for _, st := range allStatuses {
		f.jobs.WithLabelValues(string(st))
	}
	f.hosts.WithLabelValues("alive")
	f.hosts.WithLabelValues("stale")
	reg.MustRegister(f.jobs, f.active, f.queued, f.hostQueued, f.hosts, f.refreshedAt)
	return f
}

var allStatuses = []kvstate.Status{kvstate.StatusPending, kvstate.StatusRunning, kvstate.StatusCompleted, kvstate.StatusFailed, kvstate.StatusCancelled}

// seenJob is what the fleet counts keep of one record: enough to count it,
// expire it and list it (GET /api/v1/jobs).
type seenJob struct {
	status  kvstate.Status
	created time.Time
	// at is when the record was last written (its expiry counts from it).
	at time.Time
}

// fleetState is the view of the job bucket and host registry the fleet
// figures and the job list share. Its goroutine writes it under mu.
type fleetState struct {
	mu     sync.RWMutex
	jobs   map[string]seenJob
	counts map[kvstate.Status]int
	hosts  map[string]kvstate.Host
	// ready: the watch of the job bucket has delivered every record that
	// existed when it started.
	ready bool
}

// RunFleetMetrics keeps the fleet figures on /metrics current until ctx
// ends: it watches the job and host buckets and reads the consumers of the
// job stream every interval. It returns once the watches are set up.
func (s *Server) RunFleetMetrics(ctx context.Context, o FleetOptions) error {
	if o.Interval <= 0 {
		o.Interval = 15 * time.Second
	}
	jobsW, err := s.state.Jobs.WatchAll(ctx)
	if err != nil {
		return err
	}
	hostsW, err := s.state.Hosts.WatchAll(ctx)
	if err != nil {
		_ = jobsW.Stop()
		return err
	}
	st := &fleetState{jobs: map[string]seenJob{}, counts: map[kvstate.Status]int{}, hosts: map[string]kvstate.Host{}}
	s.index.Store(st)
	go func() {
		defer func() { _ = jobsW.Stop(); _ = hostsW.Stop() }()
		tick := time.NewTicker(o.Interval)
		defer tick.Stop()
		s.refreshFleet(ctx, st, o)
		for {
			select {
			case <-ctx.Done():
				return
			case c, ok := <-jobsW.Changes():
				if !ok {
					if ctx.Err() != nil {
						return
					}
					s.log.Warn("the watch of the job bucket ended: the fleet metrics and the job list stop changing")
					return
				}
				if c != nil {
					s.countJob(st, c)
				} else {
					st.mu.Lock()
					st.ready = true
					st.mu.Unlock()
				}
			case c, ok := <-hostsW.Changes():
				if !ok {
					if ctx.Err() != nil {
						return
					}
					s.log.Warn("the watch of the host registry ended: the fleet metrics stop changing")
					return
				}
				if c != nil {
					seeHost(st, c)
				}
			case <-tick.C:
				s.refreshFleet(ctx, st, o)
			}
		}
	}()
	return nil
}

// countJob applies one change of the job bucket to the counts.
func (s *Server) countJob(st *fleetState, c *kvstate.Change[kvstate.Job]) {
	st.mu.Lock()
	defer st.mu.Unlock()
	old, had := st.jobs[c.Key]
	if had {
		st.counts[old.status]--
		delete(st.jobs, c.Key)
	}
	// A record is counted by its status alone: one with a field of another
	// type (c.Err) still counts.
	if rec := c.Value; !c.Deleted && rec.Status != "" {
		st.jobs[c.Key] = seenJob{status: rec.Status, created: rec.CreatedAt, at: c.At}
		st.counts[rec.Status]++
	}
	s.publishCounts(st)
}

func (s *Server) publishCounts(st *fleetState) {
	f := s.metrics.fleet
	for _, status := range allStatuses {
		f.jobs.WithLabelValues(string(status)).Set(float64(st.counts[status]))
	}
	f.active.Set(float64(st.counts[kvstate.StatusRunning]))
}

func seeHost(st *fleetState, c *kvstate.Change[kvstate.Host]) {
	if c.Deleted {
		delete(st.hosts, c.Key)
		return
	}
	if c.Err == nil {
		st.hosts[c.Key] = c.Value
	}
}

// refreshFleet drops expired records, judges hosts and reads the queues.
func (s *Server) refreshFleet(ctx context.Context, st *fleetState, o FleetOptions) {
	now := time.Now()
	if o.JobRetention > 0 {
		st.mu.Lock()
		for k, j := range st.jobs {
			if now.Sub(j.at) > o.JobRetention {
				st.counts[j.status]--
				delete(st.jobs, k)
			}
		}
		s.publishCounts(st)
		st.mu.Unlock()
	}
	alive := 0
	for _, h := range st.hosts {
		if h.Alive(now) {
			alive++
		}
	}
	s.metrics.fleet.hosts.WithLabelValues("alive").Set(float64(alive))
	s.metrics.fleet.hosts.WithLabelValues("stale").Set(float64(len(st.hosts) - alive))

	rctx, cancel := context.WithTimeout(ctx, max(s.cfg.NATSTimeout, o.Interval/2))
	defer cancel()
	queues, err := s.state.Queue.Backlog(rctx)
	if err != nil {
		s.log.WithError(err).Warn("read the hosts' queues for the fleet metrics")
		return
	}
	s.publishQueues(queues, o.TopHosts)
	s.metrics.fleet.refreshedAt.Set(float64(now.Unix()))
}

// publishQueues sets the fleet total and the per-host gauge of the top
// hosts (longest queue first, then by name, so replicas agree).
func (s *Server) publishQueues(queues map[string]uint64, top int) {
	f := s.metrics.fleet
	var total uint64
	hosts := make([]string, 0, len(queues))
	for h, n := range queues {
		total += n
		if n > 0 {
			hosts = append(hosts, h)
		}
	}
	f.queued.Set(float64(total))
	sort.Slice(hosts, func(i, j int) bool {
		if queues[hosts[i]] != queues[hosts[j]] {
			return queues[hosts[i]] > queues[hosts[j]]
		}
		return hosts[i] < hosts[j]
	})
	next := map[string]bool{}
	for i, h := range hosts {
		if i >= top {
			break
		}
		next[h] = true
		f.hostQueued.WithLabelValues(h).Set(float64(queues[h]))
	}
	for h := range f.top {
		if !next[h] {
			f.hostQueued.DeleteLabelValues(h)
		}
	}
	f.top = next
}
