// Package telemetry sets up OpenTelemetry tracing from the standard OTEL_*
// environment variables and ties traces to the logrus JSON logs.
package telemetry

import (
	"context"
	"errors"
	"os"
	"time"

	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// Propagator is the W3C trace context and baggage propagator used on HTTP and
// NATS alike.
var Propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// Setup installs a tracer provider for service. Spans are exported when the
// environment asks for it (OTEL_TRACES_EXPORTER, or an
// OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT; OTEL_EXPORTER_OTLP_PROTOCOL picks
// grpc or http/protobuf); otherwise spans are still made, so trace ids reach
// logs, job records and downstream services. shutdown flushes the exporter,
// waiting at most 5 seconds.
func Setup(ctx context.Context, service, version string) (tp trace.TracerProvider, shutdown func(), err error) {
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		semconv.ServiceName(service), semconv.ServiceVersion(version)))
	if err != nil {
		return nil, nil, err
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if exportRequested() {
		exp, err := autoexport.NewSpanExporter(ctx)
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	} else {
		// Nothing exports spans: they are not recorded, but still get
		// trace and span ids, which logs and job records carry and NATS
		// headers propagate.
		opts = append(opts, sdktrace.WithSampler(sdktrace.NeverSample()))
	}
	sdk := sdktrace.NewTracerProvider(opts...)
	otel.SetTracerProvider(sdk)
	otel.SetTextMapPropagator(Propagator)
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(error) {}))
	return sdk, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sdk.Shutdown(sctx)
	}, nil
}

func exportRequested() bool {
	if v := os.Getenv("OTEL_TRACES_EXPORTER"); v != "" {
		return v != "none"
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// ErrNoSpan is returned by IDs for a context without a valid span.
var ErrNoSpan = errors.New("no span in context")

// IDs returns the hex trace and span ids of ctx's span.
func IDs(ctx context.Context) (traceID, spanID string, err error) {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return "", "", ErrNoSpan
	}
	return sc.TraceID().String(), sc.SpanID().String(), nil
}

// LogFields are the trace_id and span_id of ctx's span, for log lines.
func LogFields(ctx context.Context) map[string]any {
	traceID, spanID, err := IDs(ctx)
	if err != nil {
		return map[string]any{}
	}
	return map[string]any{"trace_id": traceID, "span_id": spanID}
}
