package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/imagecache"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/sirupsen/logrus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// Slots is how many jobs a worker runs at once; the consumer's
// MaxAckPending is the same, so the rest wait in the stream.
const Slots = 2

// DefaultHeartbeat is the host registry's renewal interval unless
// Config.Heartbeat says otherwise. Each renewal is a write to a replicated
// bucket: a thousand hosts at 15 s are 67 writes a second (at 5 s, 200:
// more than the jobs of a busy fleet cost). A host counts as alive for
// three heartbeats.
const DefaultHeartbeat = 15 * time.Second

// Config configures a worker.
type Config struct {
	// Host is the host token this worker serves.
	Host string
	// JSAPIPrefix is the JetStream API prefix (PROVISIONER_NATS_JS_PREFIX):
	// empty for a worker in the account that holds the streams (the
	// embedded server), embedded.HostAPIPrefix for a worker in a host
	// account of its own (deploy/nats), which imports that account's
	// JetStream API under the prefix.
	JSAPIPrefix string
	// MachineID identifies the machine that owns Host.
	MachineID string
	Version   string
	// AckWait is the consumer's ack wait; in-progress acks go out every third of it.
	AckWait time.Duration
	// MaxDeliver bounds deliveries of one job; the last one fails it.
	MaxDeliver int
	// Heartbeat is the host registry renewal interval.
	Heartbeat time.Duration
	// ProgressInterval rate-limits progress updates and events.
	ProgressInterval time.Duration
	// TracerProvider makes the worker's spans; nil means the global one.
	TracerProvider trace.TracerProvider
	// ShutdownGrace is how long running jobs may go on after a stop is
	// asked for; then they are stopped and left for redelivery.
	ShutdownGrace time.Duration
	// MaxPendingAge fails a job that waited longer for a worker (0: none).
	MaxPendingAge time.Duration
	// MaxRunTime fails an attempt that runs longer (0: none).
	MaxRunTime time.Duration
	// CancelCheck is how often a running job's record is read for a
	// cancel besides the API's hints (default 2 s).
	CancelCheck time.Duration
	// VolumeAllow, when set, is the pattern (anchored) of the volume names
	// this worker may touch.
	VolumeAllow *regexp.Regexp
	// ImageBuckets, when not empty, are the only buckets (or bucket/prefix)
	// this worker reads images from; a job naming another fails before
	// anything is downloaded or written.
	ImageBuckets messaging.ImageSources
}

// Parts are the pipeline's implementations a worker drives; each job's
// plan (pipeline.Plan) works with them.
type Parts = pipeline.Parts

// Source and ImageCache are the image store and the host's image cache as
// the worker needs them (pipeline.Source, pipeline.ImageCache).
type (
	Source     = pipeline.Source
	ImageCache = pipeline.ImageCache
)

// Worker runs one host's jobs.
type Worker struct {
	cfg      Config
	space    pipeline.Space
	nc       *nats.Conn
	js       jetstream.JetStream
	subjects messaging.Subjects
	jobs     kvstate.Jobs
	hosts    kvstate.Hosts
	leases   kvstate.Leases
	cacheKV  jetstream.KeyValue
	parts    Parts
	log      *logrus.Logger
	metrics  *metrics
	started  time.Time
	active   atomic.Int32
	waiting  atomic.Int64
	// waitingReadAt is when Health last read the queue's length (Unix ns).
	waitingReadAt atomic.Int64
	tracer        trace.Tracer
	cons          hostConsumer

	// running maps the jobs this process runs to their attempt.
	runMu   sync.Mutex
	running map[string]int
}

type metrics struct {
	registry      *prometheus.Registry
	jobs          *prometheus.CounterVec
	active        prometheus.Gauge
	duration      *prometheus.HistogramVec
	stageDuration *prometheus.HistogramVec
	cache         *prometheus.CounterVec
	downloaded    prometheus.Counter
	populated     prometheus.Counter
	cacheSize     prometheus.GaugeFunc
	waiting       prometheus.GaugeFunc
}

func newMetrics(w *Worker) *metrics {
	m := &metrics{registry: prometheus.NewRegistry()}
	m.jobs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "libvirt_volume_provisioner_jobs_total", Help: "Jobs this worker ended, by status (completed, failed, cancelled).",
	}, []string{"status"})
	m.active = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "libvirt_volume_provisioner_active_jobs", Help: "Jobs this worker is running now.",
	})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "libvirt_volume_provisioner_job_duration_seconds", Help: "Duration of jobs by outcome.",
		Buckets: prometheus.ExponentialBuckets(0.25, 2, 14),
	}, []string{"outcome"})
	m.stageDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "libvirt_volume_provisioner_stage_duration_seconds", Help: "Duration of job stages.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 14),
	}, []string{"stage"})
	m.cache = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "libvirt_volume_provisioner_cache_lookups_total", Help: "Image cache lookups by result (hit, miss).",
	}, []string{"result"})
	m.downloaded = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "libvirt_volume_provisioner_downloaded_bytes_total", Help: "Image bytes downloaded from the object store.",
	})
	m.populated = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "libvirt_volume_provisioner_populated_bytes_total", Help: "Bytes of images' virtual disks written into volumes (the image's virtual size per job, not the volume's size).",
	})
	m.cacheSize = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "libvirt_volume_provisioner_cache_size_bytes", Help: "Bytes of images in this host's cache directory.",
	}, func() float64 { return float64(w.cacheBytes()) })
	m.waiting = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "libvirt_volume_provisioner_jobs_waiting", Help: "Jobs waiting in this host's queue (last seen).",
	}, func() float64 { return float64(w.waiting.Load()) })
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "libvirt_volume_provisioner_worker_info", Help: "Always 1; labels name this worker's host and version.",
		ConstLabels: prometheus.Labels{"host": w.cfg.Host, "version": w.cfg.Version},
	})
	info.Set(1)
	// Series start at zero, so rate() and increase() see the first event.
	for _, s := range []string{"completed", "failed", "cancelled"} {
		m.jobs.WithLabelValues(s)
	}
	for _, r := range []string{"hit", "miss"} {
		m.cache.WithLabelValues(r)
	}
	m.registry.MustRegister(info, m.jobs, m.active, m.duration, m.stageDuration, m.cache, m.downloaded, m.populated, m.cacheSize, m.waiting, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// New binds a worker to the streams and buckets the API created; it waits
// for them until ctx ends.
func New(ctx context.Context, cfg Config, nc *nats.Conn, subjects messaging.Subjects, parts Parts, log *logrus.Logger) (*Worker, error) {
	if !messaging.ValidHost(cfg.Host) {
		return nil, fmt.Errorf("host name %q is not a valid host token (lower-case letters, digits, dashes)", cfg.Host)
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 2 * time.Minute
	}
	if cfg.MaxDeliver <= 1 {
		cfg.MaxDeliver = 5
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = time.Second
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = otel.GetTracerProvider()
	}
	if cfg.CancelCheck <= 0 {
		cfg.CancelCheck = 2 * time.Second
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = 30 * time.Second
	}
	js, err := newJetStream(nc, cfg.JSAPIPrefix)
	if err != nil {
		return nil, err
	}
	var b messaging.Buckets
	for {
		bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		b, err = messaging.BindBuckets(bctx, js)
		cancel()
		if err == nil {
			break
		}
		log.WithError(err).Warn("waiting for the API to create streams and buckets")
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(time.Second):
		}
	}
	// During a leader election KV requests fail for a few seconds ("no
	// response from stream"): the worker retries them rather than failing
	// the job.
	// A replica that has not caught up may answer a read: each read
	// returns at least what this worker wrote (ReadYourWrites).
	retry := func(kv jetstream.KeyValue) jetstream.KeyValue {
		return kvstate.ReadYourWrites(kvstate.Retrying(kv, kvstate.DefaultRetryBudget))
	}
	w := &Worker{cfg: cfg, nc: nc, js: js, subjects: subjects, parts: parts, log: log, started: time.Now(),
		jobs: kvstate.Jobs{KV: retry(b.Jobs)}, hosts: kvstate.Hosts{KV: retry(b.Hosts)}, cacheKV: retry(b.Cache)}
	w.leases = kvstate.Leases{KV: retry(b.Volumes), Active: kvstate.JobActive(w.jobs, cfg.Host)}
	w.metrics = newMetrics(w)
	w.tracer = cfg.TracerProvider.Tracer("github.com/libvirt-volume-provisioner/provisioner/worker")
	return w, nil
}

// newJetStream is the JetStream API of nc, under apiPrefix when it is set.
func newJetStream(nc *nats.Conn, apiPrefix string) (jetstream.JetStream, error) {
	if apiPrefix == "" {
		return jetstream.New(nc)
	}
	js, err := jetstream.NewWithAPIPrefix(nc, apiPrefix)
	if err != nil {
		return nil, fmt.Errorf("JetStream API prefix %q (PROVISIONER_NATS_JS_PREFIX): %w", apiPrefix, err)
	}
	return js, nil
}

// Registry is the worker's Prometheus registry.
func (w *Worker) Registry() *prometheus.Registry { return w.metrics.registry }

// Run claims the host, reconciles the cache and works jobs until ctx ends.
// Jobs still running then are stopped and left for redelivery.
func (w *Worker) Run(ctx context.Context) error {
	h := kvstate.Host{Name: w.cfg.Host, MachineID: w.cfg.MachineID, Version: w.cfg.Version, StartedAt: time.Now().UTC(), LastSeen: time.Now().UTC(), Heartbeat: w.cfg.Heartbeat}
	rev, err := waitOut(ctx, w.log, "register host", func() (uint64, error) { return w.hosts.Claim(ctx, h) })
	if err != nil {
		return fmt.Errorf("register host %s: %w", w.cfg.Host, err)
	}
	// The consumer first: it waits for the API, which the cache list needs too.
	cons, err := w.bindConsumer(ctx)
	if err != nil {
		return err
	}
	w.cons.set(cons)
	sum, err := waitOut(ctx, w.log, "reconcile image cache", func() (imagecache.ReconcileSummary, error) { return w.parts.Cache.ReconcileReport(ctx) })
	if err != nil {
		return fmt.Errorf("reconcile image cache: %w", err)
	}
	w.log.WithFields(logrus.Fields{"host": w.cfg.Host, "partials_removed": sum.PartialsRemoved, "entries_kept": sum.EntriesKept,
		"missing_dropped": sum.MissingDropped, "size_mismatch_dropped": sum.SizeMismatchDropped, "orphans_removed": sum.OrphansRemoved,
		"adopted": sum.Adopted, "foreign_kept": sum.ForeignKept, "evicted": sum.Evicted, "evicted_bytes": sum.EvictedBytes}).Info("image cache reconciled")
	w.log.WithFields(logrus.Fields{"host": w.cfg.Host, "consumer": messaging.ConsumerName(w.cfg.Host), "ack_wait": w.cfg.AckWait.String()}).Info("worker started")

	// ctx ending stops fetching; running jobs go on until runCtx ends, a
	// grace period later (or when the host name is lost).
	runCtx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancel(nil)
	stopped := context.AfterFunc(ctx, func() {
		w.log.WithFields(logrus.Fields{"running": w.active.Load(), "grace": w.cfg.ShutdownGrace.String()}).Info("stopping: no new jobs; running ones may finish within the grace period")
		t := time.NewTimer(w.cfg.ShutdownGrace)
		defer t.Stop()
		select {
		case <-t.C:
			cancel(errShutdown)
		case <-runCtx.Done():
		}
	})
	defer stopped()
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := w.heartbeat(runCtx, h, rev); err != nil {
			cancel(err)
		}
	})
	if unsub, err := w.serveControl(runCtx); err != nil {
		return err
	} else {
		defer unsub()
	}
	var slots sync.WaitGroup
	for slot := range Slots {
		slots.Go(func() { w.slot(ctx, runCtx, slot) })
	}
	slots.Wait()
	cancel(nil)
	wg.Wait()
	if err := context.Cause(runCtx); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, errShutdown) {
		return err
	}
	return nil
}

// heartbeat renews the host entry; losing the name to another machine stops the worker.
func (w *Worker) heartbeat(ctx context.Context, h kvstate.Host, rev uint64) error {
	t := time.NewTicker(w.cfg.Heartbeat)
	defer t.Stop()
	// The queue length is read every sixth beat (and from each delivered
	// job's metadata): consumer info from a thousand hosts every beat would
	// load the cluster for a gauge.
	for beat := 0; ; beat++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		h.LastSeen = time.Now().UTC()
		h.ActiveJobs = int(w.active.Load())
		rctx, cancel := context.WithTimeout(ctx, w.cfg.Heartbeat)
		newRev, err := w.hosts.Renew(rctx, h, rev)
		if beat%6 == 0 {
			if info, ierr := w.cons.get().Info(rctx); ierr == nil {
				w.waiting.Store(int64(info.NumPending))
			}
		}
		cancel()
		if errors.Is(err, kvstate.ErrHostClaimed) {
			w.log.WithError(err).Error("host name lost; stopping")
			return err
		}
		if err != nil {
			w.log.WithError(err).Warn("host heartbeat failed")
			continue
		}
		rev = newRev
	}
}

// slot fetches and runs one job at a time until ctx ends; jobs run under
// runCtx, which outlives ctx by the shutdown grace period.
//
// A fetch that gets no answer (no responders, a timeout) for
// consumerLostAfter means the consumer is lost with its node: the slot
// asks the API for a new one (recoverConsumer).
func (w *Worker) slot(ctx, runCtx context.Context, slot int) {
	log := w.log.WithField("slot", slot)
	for ctx.Err() == nil && runCtx.Err() == nil {
		msg, err := w.fetch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				log.WithError(err).Warn("fetch failed")
				time.Sleep(500 * time.Millisecond)
			}
			w.recoverConsumer(ctx, log, err)
			continue
		}
		if msg != nil {
			w.handle(runCtx, msg)
		}
	}
}

// Health is the body of the worker's health endpoints.
type Health struct {
	Status     string    `json:"status"`
	Timestamp  time.Time `json:"timestamp"`
	Version    string    `json:"version"`
	Uptime     string    `json:"uptime"`
	Host       string    `json:"hypervisor"`
	ActiveJobs int       `json:"active_jobs"`
	Waiting    int64     `json:"waiting_jobs"`
	NATS       string    `json:"nats"`
}

// Health reports "degraded" when more than two jobs are active on the host
// (running and waiting together) or NATS is unreachable.
func (w *Worker) Health() Health {
	active := int(w.active.Load())
	if active >= 2 {
		// Both slots are busy: what waits behind them decides the
		// status, and the count from the last delivery may be stale.
		w.refreshWaiting()
	}
	h := Health{Status: "healthy", Timestamp: time.Now().UTC(), Version: w.cfg.Version, Uptime: time.Since(w.started).Round(time.Second).String(),
		Host: w.cfg.Host, ActiveJobs: active, Waiting: w.waiting.Load(), NATS: "ok"}
	if !w.nc.IsConnected() {
		h.NATS = "unreachable"
		h.Status = "degraded"
	}
	if int64(h.ActiveJobs)+h.Waiting > 2 {
		h.Status = "degraded"
	}
	return h
}

// refreshWaiting reads the queue's length from the host's consumer, at
// most once a second (a health probe hammering the endpoint costs the
// cluster one consumer info a second) and waiting at most half a second.
func (w *Worker) refreshWaiting() {
	now := time.Now().UnixNano()
	last := w.waitingReadAt.Load()
	if now-last < int64(time.Second) || !w.waitingReadAt.CompareAndSwap(last, now) || w.cons.cur.Load() == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if info, err := w.cons.get().Info(ctx); err == nil {
		w.waiting.Store(int64(info.NumPending))
	}
}

// CacheBucket is the cache index bucket, for building the image cache.
func (w *Worker) CacheBucket() jetstream.KeyValue { return w.cacheKV }

// SetCache sets the image cache (built from CacheBucket) before Run.
func (w *Worker) SetCache(c ImageCache) { w.parts.Cache = c }

// cacheBytes is the size of the files in the cache directory.
func (w *Worker) cacheBytes() int64 {
	if w.parts.Cache == nil {
		return 0
	}
	entries, err := os.ReadDir(w.parts.Cache.Dir())
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range entries {
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
	}
	return n
}

// waitOut runs a start-up step until it succeeds, fails for good, or ctx
// ends: a worker that starts while the NATS cluster elects a leader waits
// (transient errors are logged and retried every two seconds) instead of
// exiting.
func waitOut[T any](ctx context.Context, log *logrus.Logger, step string, fn func() (T, error)) (T, error) {
	for {
		v, err := fn()
		if !kvstate.Transient(err) || ctx.Err() != nil {
			return v, err
		}
		log.WithError(err).Warn(step + ": NATS is not answering yet (a leader election?); retrying")
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(2 * time.Second):
		}
	}
}
