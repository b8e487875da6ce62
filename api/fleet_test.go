package api

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

func TestPublishQueuesKeepsTheLongestQueuesOnly(t *testing.T) {
	t.Parallel()
	s := &Server{metrics: newMetrics(), subjects: messaging.NewSubjects("")}
	perHost := func() string {
		out, err := testutil.CollectAndFormat(s.metrics.fleet.hostQueued, expfmt.TypeTextPlain, "libvirt_volume_provisioner_fleet_host_queued_jobs")
		require.NoError(t, err)
		return string(out)
	}

	s.publishQueues(map[string]uint64{"hv-a": 5, "hv-b": 9, "hv-c": 5, "hv-d": 0, "hv-e": 1}, 3)
	require.Equal(t, 20.0, testutil.ToFloat64(s.metrics.fleet.queued), "the total counts every host")
	require.Equal(t, 3, testutil.CollectAndCount(s.metrics.fleet.hostQueued), "three series at most")
	got := perHost()
	for _, h := range []string{`host="hv-b"} 9`, `host="hv-a"} 5`, `host="hv-c"} 5`} {
		require.Contains(t, got, h)
	}

	// hv-b drains and hv-a's queue is now among the shortest: their series go.
	s.publishQueues(map[string]uint64{"hv-a": 1, "hv-b": 0, "hv-c": 5, "hv-e": 2, "hv-f": 7}, 2)
	got = perHost()
	require.Equal(t, 2, testutil.CollectAndCount(s.metrics.fleet.hostQueued))
	require.Contains(t, got, `host="hv-f"} 7`)
	require.Contains(t, got, `host="hv-c"} 5`)
	require.NotContains(t, got, "hv-b")
	require.NotContains(t, got, "hv-a")
}
