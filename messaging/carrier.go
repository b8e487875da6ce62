package messaging

import (
	"strings"

	"github.com/nats-io/nats.go"
)

// HeaderCarrier adapts NATS message headers to OpenTelemetry's TextMapCarrier
// (Get, Set, Keys), so the W3C trace context travels as lower-case
// "traceparent" and "tracestate" headers.
type HeaderCarrier nats.Header

// Get returns the first value of key, matching case-insensitively.
func (c HeaderCarrier) Get(key string) string {
	if v, ok := c[key]; ok && len(v) > 0 {
		return v[0]
	}
	for k, v := range c {
		if strings.EqualFold(k, key) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

// Set stores value under key exactly as given (NATS headers keep case).
func (c HeaderCarrier) Set(key, value string) { c[key] = []string{value} }

// Keys lists the header names.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
