package tests

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/imagecache"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/source"

	"github.com/libvirt-volume-provisioner/provisioner/volume/file"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/libvirt-volume-provisioner/provisioner/api"
	"github.com/libvirt-volume-provisioner/provisioner/embedded"
	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/worker"
)

// TestOneTraceFromRequestToStages runs the API and a worker in this process
// with one tracer provider recording spans in memory, and follows a job from
// the HTTP request through the NATS hop to the worker's stages.
func TestOneTraceFromRequestToStages(t *testing.T) {
	t.Parallel()
	m := requireMinIO(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	dir := t.TempDir()
	port, err := testenv.FreePort()
	require.NoError(t, err)
	ns, err := embedded.Start(embedded.Options{Listen: "127.0.0.1:" + strconv.Itoa(port), DataDir: dir, MaxMemory: 64 << 20, MaxStore: 1 << 30})
	require.NoError(t, err)
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL(), mustNkey(t, ns.Credentials.API))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	subjects := messaging.NewSubjects("")
	require.NoError(t, messaging.Setup(ctx, js, subjects, messaging.DefaultLimits()))

	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	log := logrus.New()
	log.SetOutput(io.Discard)

	source, err := source.NewMinIO(m.Endpoint, m.AccessKey, m.SecretKey, false)
	require.NoError(t, err)
	files, err := file.New(filepath.Join(dir, "volumes"))
	require.NoError(t, err)
	w, err := worker.New(ctx, worker.Config{Host: "h1", MachineID: "m1", AckWait: 5 * time.Second, Heartbeat: time.Second, TracerProvider: tp},
		nc, subjects, worker.Parts{Source: source, Backend: files, Converter: convert.QemuImg{}}, log)
	require.NoError(t, err)
	cache, err := imagecache.New(filepath.Join(dir, "cache"), "h1", w.CacheIndex())
	require.NoError(t, err)
	w.SetCache(cache)
	var wg sync.WaitGroup
	wg.Go(func() { _ = w.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	srv, err := api.New(ctx, api.Config{DefaultHypervisor: "h1", Version: "test", TracerProvider: tp, ImageEndpoints: []string{m.Endpoint}}, nc, subjects, log)
	require.NoError(t, err)
	stopWorkers, err := srv.ServeWorkers(ctx) // the worker asks the API for its consumer
	require.NoError(t, err)
	t.Cleanup(stopWorkers)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	e := &env{t: t, apiURL: hs.URL, minio: m, bucket: "trace" + strconv.FormatInt(time.Now().UnixNano(), 36)}
	require.NoError(t, m.Bucket(ctx, e.bucket))
	require.Eventually(t, func() bool {
		return e.do(http.MethodGet, "/health", nil).json(t)["status"] == "healthy"
	}, 10*time.Second, 50*time.Millisecond, "the worker registers")

	qcow2, _ := image(t, 8<<20, 12)
	url := e.upload("images/trace.qcow2", qcow2, true)
	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-trace", "volume_size_gb": 1})
	j := e.waitStatus(id, "completed")

	var spans []sdktrace.ReadOnlySpan
	require.Eventually(t, func() bool {
		spans = rec.Ended()
		for _, s := range spans {
			if s.Name() == "job provision" {
				return true
			}
		}
		return false
	}, 5*time.Second, 20*time.Millisecond)
	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		if _, seen := byName[s.Name()]; !seen {
			byName[s.Name()] = s
		}
	}
	httpSpan := byName["POST /api/v1/jobs"]
	require.NotNil(t, httpSpan, "spans: %v", names(spans))
	require.Equal(t, trace.SpanKindServer, httpSpan.SpanKind())
	publish := byName["publish provisioner.jobs.h1"]
	require.NotNil(t, publish)
	require.Equal(t, httpSpan.SpanContext().SpanID(), publish.Parent().SpanID())
	job := byName["job provision"]
	require.Equal(t, publish.SpanContext().SpanID(), job.Parent().SpanID(), "the job continues the request's trace across NATS")
	traceID := httpSpan.SpanContext().TraceID()
	require.Equal(t, traceID, job.SpanContext().TraceID())
	require.Equal(t, traceID.String(), j.TraceID, "the job record keeps the trace id")
	for _, stage := range []string{"checksum", "cache_lookup", "downloading", "inspecting", "creating_volume", "populating", "finalizing"} {
		s := byName["stage "+stage]
		require.NotNil(t, s, "no span for stage %s; spans: %v", stage, names(spans))
		require.Equal(t, job.SpanContext().SpanID(), s.Parent().SpanID(), "stage %s is a child of the job", stage)
		require.Equal(t, traceID, s.SpanContext().TraceID())
	}
	attrs := map[string]string{}
	for _, a := range job.Attributes() {
		attrs[string(a.Key)] = a.Value.Emit()
	}
	require.Equal(t, id, attrs["job_id"])
	require.Equal(t, "h1", attrs["host"])
	require.Equal(t, "vm-trace", attrs["volume"])
	require.Equal(t, "false", attrs["cache_hit"])
	require.Equal(t, "completed", attrs["outcome"])
}

func names(spans []sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name())
	}
	return out
}

// otlpReceiver is an in-process OTLP trace receiver (gRPC) built on the
// OTLP proto package; it collects the names of spans per service.
type otlpReceiver struct {
	collectortrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans map[string][]string
}

func (r *otlpReceiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	r.add(req)
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (r *otlpReceiver) add(req *collectortrace.ExportTraceServiceRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				service = a.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				r.spans[service] = append(r.spans[service], s.GetName())
			}
		}
	}
}

func (r *otlpReceiver) has(service, span string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.spans[service] {
		if s == span {
			return true
		}
	}
	return false
}

// TestOTLPExportOverTheWire runs the api binary configured only by OTEL_*
// variables and checks its spans reach OTLP receivers over gRPC and over
// HTTP/protobuf.
func TestOTLPExportOverTheWire(t *testing.T) {
	t.Parallel()
	recv := &otlpReceiver{spans: map[string][]string{}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gs := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(gs, recv)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)

	httpRecv := &otlpReceiver{spans: map[string][]string{}}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req collectortrace.ExportTraceServiceRequest
		if r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		httpRecv.add(&req)
		w.Header().Set("Content-Type", "application/x-protobuf")
		out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		_, _ = w.Write(out)
	}))
	t.Cleanup(hs.Close)

	for _, c := range []struct {
		protocol, endpoint string
		recv               *otlpReceiver
	}{
		{"grpc", "http://" + lis.Addr().String(), recv},
		{"http/protobuf", hs.URL, httpRecv},
	} {
		e := newEnv(t, envOptions{noWorker: true, apiEnv: []string{
			"OTEL_EXPORTER_OTLP_ENDPOINT=" + c.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL=" + c.protocol,
			"OTEL_BSP_SCHEDULE_DELAY=50", "OTEL_EXPORTER_OTLP_INSECURE=true",
		}})
		r := e.do(http.MethodGet, "/api/v1/jobs/550e8400-e29b-41d4-a716-446655440000", nil)
		require.Equal(t, http.StatusNotFound, r.Status)
		require.Eventually(t, func() bool { return c.recv.has("provisioner-api", "GET /api/v1/jobs/{job_id}") }, 15*time.Second, 50*time.Millisecond,
			"no span over %s; got %v\napi log:\n%s", c.protocol, c.recv.spans, e.api.output())
	}
}

// TestLogLinesCarryTraceAndJob checks the worker's JSON log lines of a job
// carry trace_id, span_id, job_id, host and stage.
func TestLogLinesCarryTraceAndJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	qcow2, _ := image(t, 4<<20, 13)
	url := e.upload("images/log.qcow2", qcow2, true)
	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-log", "volume_size_gb": 1})
	j := e.waitStatus(id, "completed")
	require.Len(t, j.TraceID, 32)
	var jobLines, stageLines int
	for _, line := range strings.Split(e.workers["h1"].output(), "\n") {
		if !strings.Contains(line, id) {
			continue
		}
		var f map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &f), line)
		jobLines++
		require.Equal(t, j.TraceID, f["trace_id"], line)
		require.Len(t, f["span_id"], 16, line)
		require.Equal(t, "h1", f["host"], line)
		if f["stage"] != nil {
			stageLines++
		}
	}
	require.GreaterOrEqual(t, jobLines, 5)
	require.GreaterOrEqual(t, stageLines, 5)
}
