package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
)

// opCounter counts, by kind, the client requests and publishes the cluster
// carried during the load (a wildcard subscription on the admin connection,
// so it costs the cluster a copy of every message: -count-ops only). The
// kinds say which of a job's operations dominate: KV writes and reads
// (each an R3 Raft round or a direct get), JetStream API calls, acks, the
// project's own subjects (events, host requests).
type opCounter struct {
	mu     sync.Mutex
	counts map[string]int
	sub    *nats.Subscription
}

func countOps(nc *nats.Conn) (*opCounter, error) {
	c := &opCounter{counts: map[string]int{}}
	sub, err := nc.Subscribe(">", func(m *nats.Msg) {
		kind := opKind(m.Subject)
		c.mu.Lock()
		c.counts[kind]++
		c.mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return nil, err
	}
	c.sub = sub
	return c, nil
}

// opKind names the operation a subject carries.
func opKind(subject string) string {
	parts := strings.Split(subject, ".")
	switch {
	case strings.HasPrefix(subject, "$KV."):
		if len(parts) > 1 {
			return "kv put+watch " + parts[1]
		}
	case strings.HasPrefix(subject, "$JS.API.DIRECT.GET."):
		bucket := strings.TrimPrefix(parts[4], "KV_")
		return "kv direct get " + bucket
	case strings.HasPrefix(subject, "$JS.API."):
		if len(parts) > 2 {
			return "js api " + strings.ToLower(parts[2]) + " " + strings.ToLower(strings.Join(parts[3:min(len(parts), 4)], "."))
		}
	case strings.HasPrefix(subject, "$JS.ACK."):
		return "ack"
	case strings.HasPrefix(subject, "$JS.FC.") || strings.HasPrefix(subject, "$JSC."):
		return "js internal"
	case strings.HasPrefix(subject, "_INBOX.") || strings.HasPrefix(subject, "_INBOX"):
		return "reply"
	}
	switch {
	case len(parts) >= 5 && parts[1] == "api":
		// <prefix>.api.hosts.<host>.<request>
		return "request " + strings.Join(parts[:3], ".") + ".*." + strings.Join(parts[4:], ".")
	case len(parts) >= 2:
		return "subject " + parts[0] + "." + parts[1]
	}
	return "other"
}

// report prints the counts per job, most frequent first.
func (c *opCounter) report(out io.Writer, jobs int) {
	_ = c.sub.Unsubscribe()
	c.mu.Lock()
	defer c.mu.Unlock()
	kinds := make([]string, 0, len(c.counts))
	total := 0
	for k, n := range c.counts {
		kinds = append(kinds, k)
		if k != "reply" {
			total += n
		}
	}
	sort.Slice(kinds, func(i, j int) bool { return c.counts[kinds[i]] > c.counts[kinds[j]] })
	fmt.Fprintf(out, "operations per job (%d jobs; replies not counted in the total): %.1f\n", jobs, float64(total)/float64(max(jobs, 1)))
	fmt.Fprintln(out, "  (kv put+watch: a write, and each delivery of it to a watcher: both API replicas watch the job and host buckets)")
	for _, k := range kinds {
		fmt.Fprintf(out, "  %-40s %8d  %6.2f/job\n", k, c.counts[k], float64(c.counts[k])/float64(max(jobs, 1)))
	}
}
