package main

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// runClean runs the harness and requires every offered job accepted,
// nothing lost or run twice and at most two jobs at once per host.
func runClean(ctx context.Context, t *testing.T, opt options) result {
	t.Helper()
	res, err := run(ctx, opt, t.Output())
	require.NoError(t, err)
	v := res.verdict
	require.Equal(t, opt.jobs, v.accepted, "every offered job is accepted")
	require.Zero(t, v.lost, "lost jobs: %v", v.examples)
	require.Zero(t, v.doubled, "jobs with more than one effect: %v", v.examples)
	require.LessOrEqual(t, v.maxPerHost, 2, "jobs running at once on one host")
	return res
}

// TestFleetKillLeader is a small fleet (20 simulated hypervisors, 200 jobs
// over REST and NATS) on a real 3-node cluster whose job stream leader is
// killed with 40% of the jobs done and restarted 5 s later: nothing may be
// lost or run twice, no host may run more than two jobs at once, and the
// restarted node must be current on every stream within 30 s.
func TestFleetKillLeader(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts a 3-node NATS cluster and two APIs")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	opt := options{hosts: 20, jobs: 200, rate: 50, duration: time.Second, fault: faultKillLeader,
		restartAfter: 5 * time.Second, ackWait: 30 * time.Second, restEvery: 2, settle: 60 * time.Second}
	res := runClean(ctx, t, opt)
	require.NotEmpty(t, res.fault.node, "the job stream leader was killed")
	require.NoError(t, res.fault.rejoinErr)
	require.LessOrEqual(t, res.fault.rejoin, 30*time.Second, "the restarted node is current again within 30 s")
}

// TestFleetJWT is a small fleet on the cluster in the project's NATS JWT
// setup (-jwt): the operator.conf include and a full resolver per node, 20
// hosts enrolled in accounts of their own in one push, the API replicas with
// api.creds, every worker with its host's credentials and JetStream under
// its account's prefix. Every job completes exactly once.
func TestFleetJWT(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts a 3-node NATS cluster and two APIs")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	opt := options{hosts: 20, jobs: 100, rate: 50, duration: 500 * time.Millisecond, fault: faultNone,
		ackWait: 30 * time.Second, restEvery: 2, settle: 60 * time.Second, jwt: true}
	runClean(ctx, t, opt)
}

// TestFleetFaults runs the harness's other faults one after the other, each
// on a small fleet of its own (20 simulated hypervisors, 120 jobs over REST
// and NATS): a node of the cluster stopped (SIGSTOP) for 30 s, the job
// stream leader killed as the load starts, 10% of the workers killed
// mid-job, the whole fleet restarted at once, and one API replica killed
// under load. In every case nothing may be lost or run twice and no host
// may run more than two jobs at once.
func TestFleetFaults(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts 3-node NATS clusters and two APIs")
	}
	for _, fault := range []string{faultStopNode, faultKillEarly, faultKillWorkers, faultRestartAll, faultKillAPI} {
		t.Run(fault, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
			defer cancel()
			opt := options{hosts: 20, jobs: 120, rate: 40, duration: time.Second, fault: fault, stopFor: 30 * time.Second,
				restartAfter: 5 * time.Second, ackWait: 30 * time.Second, restEvery: 2, settle: 75 * time.Second}
			res := runClean(ctx, t, opt)
			require.NotEmpty(t, res.fault.desc, "the fault was injected")
			if res.fault.node != "" {
				require.NoError(t, res.fault.rejoinErr)
				require.LessOrEqual(t, res.fault.rejoin, 30*time.Second, "the node is current again within 30 s")
			}
		})
	}
}
