package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// natsBench runs the nats CLI's JetStream publish benchmark against the
// harness's cluster (an R3 file stream of its own, like the job stream), as
// the broker's own ceiling; the simulated workers are stopped first so that
// it has the machine to itself. It prints the CLI's summary lines.
func (f *fleet) natsBench(ctx context.Context, cli string) {
	for _, h := range f.hosts {
		h.kill()
	}
	time.Sleep(2 * time.Second)
	bctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	args := []string{"bench", "js", "pub", "async", "fleetbench.x", "--server", f.cluster.URLs(), "--create", "--purge",
		"--replicas", "3", "--storage", "file", "--clients", "4", "--msgs", "100000", "--size", "512", "--no-progress"}
	cmd := exec.CommandContext(bctx, cli, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	fmt.Fprintf(f.out, "nats bench (%s %s):\n", cli, strings.Join(args, " "))
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.Contains(line, "stats:") || strings.Contains(line, "msgs/sec") || strings.Contains(line, "error") {
			fmt.Fprintln(f.out, "  "+strings.TrimSpace(line))
		}
	}
	if err != nil {
		fmt.Fprintf(f.out, "  nats bench failed: %v\n", err)
	}
}
