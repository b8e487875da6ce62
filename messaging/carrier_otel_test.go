package messaging_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

var _ propagation.TextMapCarrier = messaging.HeaderCarrier{}

func TestHeaderCarrierWithTraceContextPropagator(t *testing.T) {
	t.Parallel()
	traceID, err := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	require.NoError(t, err)
	spanID, err := trace.SpanIDFromHex("b7ad6b7169203331")
	require.NoError(t, err)
	ts, err := trace.ParseTraceState("rojo=00f067aa0ba902b7")
	require.NoError(t, err)
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled, TraceState: ts, Remote: true,
	})
	prop := propagation.TraceContext{}

	h := nats.Header{}
	prop.Inject(trace.ContextWithRemoteSpanContext(context.Background(), sc), messaging.HeaderCarrier(h))
	require.Equal(t, []string{"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, h["traceparent"])
	require.Equal(t, []string{"rojo=00f067aa0ba902b7"}, h["tracestate"])
	require.ElementsMatch(t, []string{"traceparent", "tracestate"}, messaging.HeaderCarrier(h).Keys())

	got := trace.SpanContextFromContext(prop.Extract(context.Background(), messaging.HeaderCarrier(h)))
	require.True(t, got.IsValid())
	require.True(t, got.IsRemote())
	require.Equal(t, traceID, got.TraceID())
	require.Equal(t, spanID, got.SpanID())
	require.True(t, got.IsSampled())
	require.Equal(t, "rojo=00f067aa0ba902b7", got.TraceState().String())
}

// A sender that capitalises header names (as some clients do) is still read.
func TestHeaderCarrierExtractCapitalisedHeaders(t *testing.T) {
	t.Parallel()
	h := nats.Header{"Traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}}
	got := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), messaging.HeaderCarrier(h)))
	require.True(t, got.IsValid())
	require.Equal(t, "0af7651916cd43dd8448eb211c80319c", got.TraceID().String())
	require.False(t, got.IsSampled())
}

func TestHeaderCarrierExtractWithoutHeaders(t *testing.T) {
	t.Parallel()
	got := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), messaging.HeaderCarrier(nats.Header{})))
	require.False(t, got.IsValid())
}
