package kvstate

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

func TestConsumerHostIsTheHostOfItsFilter(t *testing.T) {
	t.Parallel()
	subjects := messaging.NewSubjects("")
	require.Equal(t, "hv-01", consumerHost(subjects, messaging.ConsumerConfig(subjects, "hv-01", messaging.MinAckWait, messaging.MinMaxDeliver)))
}
