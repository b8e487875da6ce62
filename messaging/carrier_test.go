package messaging_test

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// carrier_otel_test.go checks the carrier with OpenTelemetry's propagator.

func TestHeaderCarrierSetGet(t *testing.T) {
	t.Parallel()
	c := messaging.HeaderCarrier(nats.Header{})
	c.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	c.Set("tracestate", "rojo=00f067aa0ba902b7")

	// Set keeps the key exactly as given.
	require.Equal(t, []string{"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, c["traceparent"])
	require.NotContains(t, c, "Traceparent")

	tests := []struct {
		key  string
		want string
	}{
		{"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		{"Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		{"TRACEPARENT", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		{"TraceState", "rojo=00f067aa0ba902b7"},
		{"baggage", ""},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, c.Get(tt.key), "Get(%q)", tt.key)
	}
}

func TestHeaderCarrierSetReplaces(t *testing.T) {
	t.Parallel()
	c := messaging.HeaderCarrier{"traceparent": {"a", "b"}}
	c.Set("traceparent", "c")
	require.Equal(t, []string{"c"}, c["traceparent"])
	require.Equal(t, "c", c.Get("traceparent"))
}

func TestHeaderCarrierGetFirstValue(t *testing.T) {
	t.Parallel()
	c := messaging.HeaderCarrier{"Traceparent": {"first", "second"}, "Empty": {}}
	require.Equal(t, "first", c.Get("Traceparent"))
	require.Equal(t, "first", c.Get("traceparent"))
	require.Equal(t, "", c.Get("Empty"))
	require.Equal(t, "", c.Get("empty"))
}

func TestHeaderCarrierGetPrefersExactKey(t *testing.T) {
	t.Parallel()
	c := messaging.HeaderCarrier{"traceparent": {"lower"}, "TRACEPARENT": {"upper"}}
	require.Equal(t, "lower", c.Get("traceparent"))
	require.Equal(t, "upper", c.Get("TRACEPARENT"))
}

func TestHeaderCarrierKeys(t *testing.T) {
	t.Parallel()
	require.Empty(t, messaging.HeaderCarrier(nats.Header{}).Keys())
	require.NotNil(t, messaging.HeaderCarrier(nil).Keys())

	h := nats.Header{}
	h.Set(messaging.HeaderMsgID, "id-1")
	c := messaging.HeaderCarrier(h)
	c.Set("traceparent", "tp")
	c.Set("tracestate", "ts")
	require.ElementsMatch(t, []string{messaging.HeaderMsgID, "traceparent", "tracestate"}, c.Keys())

	// The carrier writes through to the NATS header it wraps.
	require.Equal(t, "tp", h.Get("traceparent"))
}
