// Command fleet is the fleet harness: a real 3-node nats-server
// cluster (separate processes, R3 streams and buckets), two replicas of the
// real bin/api, and N simulated hypervisors in this process, each running
// the real worker code (worker.New and Run) over a stand-in pipeline that
// sleeps instead of writing (standin.go). Load comes through the APIs'
// REST endpoint and straight from NATS; faults can be injected. It checks
// that every job had exactly one effect, that no host ran more than two
// jobs at once and that no job was left unfinished, and ends with one line:
//
//	fleet: hosts=N jobs=N lost=N doubled=N max_per_host=N dispatch_p50_ms=X dispatch_p99_ms=X accepted_per_s=X
//
// Run it with make fleet, make fleet-quick or go run ./tests/fleet -h.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// options are the harness's flags.
type options struct {
	hosts        int
	jobs         int
	rate         float64
	duration     time.Duration
	fault        string
	jwt          bool
	stopFor      time.Duration
	restartAfter time.Duration
	ackWait      time.Duration
	restEvery    int
	keep         bool
	settle       time.Duration
	natsBench    string
	dispatch     string
	countOps     bool
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("fleet", flag.ContinueOnError)
	fs.IntVar(&o.hosts, "hosts", 100, "simulated hypervisors")
	fs.IntVar(&o.jobs, "jobs", 1000, "jobs to offer")
	fs.Float64Var(&o.rate, "rate", 200, "offered jobs per second")
	fs.DurationVar(&o.duration, "duration", time.Second, "how long the stand-in pipeline runs each job")
	fs.StringVar(&o.fault, "fault", faultNone, "fault to inject: "+strings.Join(faults, " | "))
	fs.BoolVar(&o.jwt, "jwt", false, "run the cluster with the project's NATS JWT setup (deploy/nats): every host enrolled in an account of its own")
	fs.DurationVar(&o.stopFor, "stop-for", 30*time.Second, "how long -fault stop-node keeps the node stopped")
	fs.DurationVar(&o.restartAfter, "restart-after", 5*time.Second, "how long a killed node, worker or API stays down")
	fs.DurationVar(&o.ackWait, "ack-wait", 30*time.Second, "the workers' PROVISIONER_ACK_WAIT (a killed worker's jobs come back after it)")
	fs.IntVar(&o.restEvery, "rest-every", 2, "every n-th job goes through REST, the rest straight to NATS (0: none through REST)")
	fs.BoolVar(&o.keep, "keep", false, "keep the run's directory (configs, logs, stores) even when nothing went wrong")
	fs.DurationVar(&o.settle, "settle", 0, "how long to wait for the last jobs with no progress (default: 2 ack waits + 30 s)")
	fs.StringVar(&o.dispatch, "dispatch", "limits", "the APIs' PROVISIONER_DISPATCH: limits or workqueue")
	fs.BoolVar(&o.countOps, "count-ops", false, "count the operations the cluster carries during the load, by kind, per job (a wildcard subscription: it adds load)")
	fs.StringVar(&o.natsBench, "nats-bench", "", "after the fleet run, run this nats CLI's JetStream publish benchmark on the same cluster (scripts/install-nats-cli.sh builds bin/nats)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if !slices.Contains(faults, o.fault) {
		return o, fmt.Errorf("-fault %q: want one of %s", o.fault, strings.Join(faults, ", "))
	}
	if o.hosts < 1 || o.jobs < 1 || o.rate <= 0 {
		return o, errors.New("-hosts, -jobs and -rate must be positive")
	}
	if o.jwt && o.natsBench != "" {
		return o, errors.New("-nats-bench connects without credentials: it cannot run with -jwt")
	}
	if o.settle == 0 {
		o.settle = 2*o.ackWait + 30*time.Second
	}
	return o, nil
}

func main() {
	opt, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, opt, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
	if res.verdict.lost+res.verdict.notAccepted > 0 || res.verdict.doubled > 0 || res.verdict.maxPerHost > 2 {
		os.Exit(3)
	}
}

// repoRoot is the directory of the module's go.mod, above the working directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory: run the harness inside the repository")
		}
		dir = parent
	}
}
