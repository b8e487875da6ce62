package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/libvirt-volume-provisioner/provisioner/auth"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/telemetry"
)

// Config configures the API server.
type Config struct {
	// DefaultHypervisor is used when a request names none; empty means a
	// request must name one.
	DefaultHypervisor string
	// ImageEndpoints are the object store endpoints (host:port) image URLs
	// may name; empty allows any.
	ImageEndpoints []string
	// ImageBuckets are the buckets (or bucket/prefix) image URLs may name;
	// empty allows any.
	ImageBuckets messaging.ImageSources
	// Version is reported by the health endpoints.
	Version string
	// NATSTimeout bounds each NATS operation of a request.
	NATSTimeout time.Duration
	// MaxBodyBytes caps request bodies.
	MaxBodyBytes int64
	// TracerProvider makes the API's spans; nil means the global one.
	TracerProvider trace.TracerProvider
	// Auth authenticates /api/v1 callers; nil (or empty) means every
	// caller is anonymous, which the command allows only on loopback.
	Auth *auth.Authenticator
	// ListenAddr is the REST listener's address: its host (and, on
	// loopback, localhost and the loopback addresses) is an allowed Host.
	ListenAddr string
	// AllowedHosts are further names requests may carry in Host (a load
	// balancer's or a TLS certificate's names).
	AllowedHosts []string
	// CORSOrigins are the browser origins (scheme://host[:port]) that may
	// call the API cross-origin; empty refuses every cross-origin request.
	CORSOrigins []string
	// SSEKeepAlive is how often an idle event stream sends a comment line;
	// zero means 15 s.
	SSEKeepAlive time.Duration
	// MaxHosts is the fleet maximum the job stream was set up with (named
	// in the error a host past it gets).
	MaxHosts int
	// Dispatch is the job stream's layout (messaging.Setup's; New makes ""
	// messaging.DispatchLimits).
	Dispatch messaging.Dispatch
	// MaxContentBytes caps an upload (PUT …/content); zero means
	// messaging.DefaultMaxContentBytes.
	MaxContentBytes int64
	// ContentReadTimeout bounds reading an upload's body (zero: 30 min).
	ContentReadTimeout time.Duration
	// ContentTTL is the content buckets' maximum age, a backstop for
	// uploads whose job never told the API it ended (zero: 24 h).
	ContentTTL time.Duration
	// Replicas of the content buckets (the streams' replica count).
	Replicas int
}

// Server serves the REST API.
type Server struct {
	cfg      Config
	nc       *nats.Conn
	subjects messaging.Subjects
	// state is everything the API reads and writes in JetStream.
	state   kvstate.State
	log     *logrus.Logger
	started time.Time
	metrics *metrics
	router  *mux.Router
	tracer  trace.Tracer
	allowed guard
	// index is the job bucket's view that RunFleetMetrics keeps (nil
	// until it runs); the job list reads it.
	index atomic.Pointer[fleetState]
}

type metrics struct {
	registry *prometheus.Registry
	requests *prometheus.CounterVec
	jobs     *prometheus.CounterVec
	fleet    *fleetMetrics
}

func newMetrics() *metrics {
	m := &metrics{registry: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "libvirt_volume_provisioner_requests_total",
		Help: "HTTP requests by route template, method and status code.",
	}, []string{"endpoint", "method", "status"})
	m.jobs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "libvirt_volume_provisioner_jobs_total",
		Help: "Jobs accepted by this API replica (status=started); workers export the jobs they ended (completed, failed, cancelled).",
	}, []string{"status"})
	m.jobs.WithLabelValues("started")
	m.fleet = newFleetMetrics(m.registry)
	m.registry.MustRegister(m.requests, m.jobs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// New builds a server on a connected NATS connection. The streams and
// buckets must exist (messaging.Setup).
func New(ctx context.Context, cfg Config, nc *nats.Conn, subjects messaging.Subjects, log *logrus.Logger) (*Server, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	state, err := kvstate.Open(ctx, js, subjects)
	if err != nil {
		return nil, err
	}
	if cfg.Dispatch == "" {
		cfg.Dispatch = messaging.DispatchLimits
	}
	if cfg.NATSTimeout <= 0 {
		cfg.NATSTimeout = 5 * time.Second
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 64 << 10
	}
	if cfg.MaxContentBytes <= 0 {
		cfg.MaxContentBytes = messaging.DefaultMaxContentBytes
	}
	if cfg.ContentReadTimeout <= 0 {
		cfg.ContentReadTimeout = 30 * time.Minute
	}
	if cfg.ContentTTL <= 0 {
		cfg.ContentTTL = 24 * time.Hour
	}
	if cfg.SSEKeepAlive <= 0 {
		cfg.SSEKeepAlive = defaultSSEKeepAlive
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = otel.GetTracerProvider()
	}
	for i, e := range cfg.ImageEndpoints {
		cfg.ImageEndpoints[i] = strings.ToLower(e)
	}
	state.Uploads.Replicas, state.Uploads.TTL = cfg.Replicas, cfg.ContentTTL
	s := &Server{cfg: cfg, nc: nc, subjects: subjects, state: state, log: log, started: time.Now(), metrics: newMetrics(),
		tracer:  cfg.TracerProvider.Tracer("github.com/libvirt-volume-provisioner/provisioner/api"),
		allowed: newGuard(cfg.ListenAddr, cfg.AllowedHosts, cfg.CORSOrigins)}
	s.routes()
	return s, nil
}

func (s *Server) routes() {
	r := mux.NewRouter()
	r.HandleFunc("/api/v1/jobs", s.createJob).Methods(http.MethodPost)
	r.HandleFunc("/api/v1/jobs", s.listJobs).Methods(http.MethodGet)
	r.HandleFunc("/api/v1/jobs/{job_id}", s.getJob).Methods(http.MethodGet)
	r.HandleFunc("/api/v1/jobs/{job_id}/cancel", s.cancelJob).Methods(http.MethodPost)
	r.HandleFunc("/api/v1/jobs/{job_id}/events", s.jobEvents).Methods(http.MethodGet)
	r.HandleFunc("/api/v1/hosts", s.listHosts).Methods(http.MethodGet)
	r.HandleFunc(contentRoute, s.putContent).Methods(http.MethodPut)
	r.HandleFunc("/api/v1/cache/images", s.listCache).Methods(http.MethodGet)
	r.HandleFunc("/api/v1/cache/fetch", s.fetchCache).Methods(http.MethodPost)
	r.HandleFunc("/api/v1/cache/images/{checksum}", s.deleteCachedImage).Methods(http.MethodDelete)
	r.HandleFunc("/api/v1/openapi.yaml", s.openAPI).Methods(http.MethodGet)
	r.HandleFunc("/health", s.health).Methods(http.MethodGet)
	r.HandleFunc("/healthz", s.health).Methods(http.MethodGet)
	r.HandleFunc("/livez", s.health).Methods(http.MethodGet)
	r.HandleFunc("/readyz", s.ready).Methods(http.MethodGet)
	r.Handle("/metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{})).Methods(http.MethodGet)
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not found", "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusMethodNotAllowed, "method not allowed", r.Method+" is not allowed on "+r.URL.Path)
	})
	r.Use(s.instrument, s.authenticate)
	s.router = r
}

// Handler is the server's HTTP handler: a span for every request (named
// from the route template, continuing the caller's W3C trace context),
// request ids on every response, and the guard (Host, Origin, body size and
// type) before any route.
func (s *Server) Handler() http.Handler {
	return otelhttp.NewHandler(withRequestID(s.guard(s.router)), "http",
		otelhttp.WithTracerProvider(s.cfg.TracerProvider), otelhttp.WithPropagators(telemetry.Propagator),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " unmatched" }))
}

type ctxKey int

const requestIDKey ctxKey = 0

// HeaderRequestID is the request id header, echoed or generated.
const HeaderRequestID = "X-Request-ID"

func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, c := range id {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// withRequestID echoes the caller's X-Request-ID (when printable and at most
// 128 characters) or generates one, on every response.
func withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(HeaderRequestID)
		if !validRequestID(id) {
			id = newRequestID()
		}
		w.Header().Set(HeaderRequestID, id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestIDKey, id)))
	})
}

func requestID(r *http.Request) string {
	id, _ := r.Context().Value(requestIDKey).(string)
	return id
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap is the wrapped writer, so http.ResponseController reaches its
// Flush and deadlines (the event stream needs both).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// instrument counts requests by route template (never the raw path).
func (s *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		endpoint := "unmatched"
		if route := mux.CurrentRoute(r); route != nil {
			if tpl, err := route.GetPathTemplate(); err == nil {
				endpoint = tpl
			}
		}
		span := trace.SpanFromContext(r.Context())
		span.SetName(r.Method + " " + endpoint)
		span.SetAttributes(attribute.String("http.route", endpoint), attribute.String("request_id", requestID(r)))
		next.ServeHTTP(sw, r)
		s.metrics.requests.WithLabelValues(endpoint, r.Method, strconv.Itoa(sw.code)).Inc()
		s.log.WithFields(telemetry.LogFields(r.Context())).WithFields(logrus.Fields{"request_id": requestID(r), "method": r.Method, "endpoint": endpoint, "status": sw.code}).Debug("request")
	})
}
