package kvstate

import (
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// TestRevisionMismatchOnReplicatedStreams: an R3 stream reports a
// compare-and-set conflict with code 10164, not 10071; both must be seen as
// a conflict (retried by Jobs.Update, ErrLeaseLost for a lease), or a
// cluster turns every concurrent update into a failure.
func TestRevisionMismatchOnReplicatedStreams(t *testing.T) {
	t.Parallel()
	r3 := &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequenceConstant, Description: "wrong last sequence"}
	require.True(t, isRevisionMismatch(r3))
	require.True(t, isRevisionMismatch(fmt.Errorf("%w: %w", r3, jetstream.ErrKeyRevisionMismatch)))
	require.True(t, isRevisionMismatch(&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence}))
	require.True(t, isRevisionMismatch(jetstream.ErrKeyExists))
	require.False(t, isRevisionMismatch(jetstream.ErrNoStreamResponse))
	require.False(t, isRevisionMismatch(&jetstream.APIError{Code: 503, ErrorCode: 10008}))
}
