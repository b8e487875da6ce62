// Package worker runs a hypervisor host's jobs: it claims the host name in
// the registry, binds the host's durable consumer (MaxAckPending 2) and works
// both deliveries at once, keeping each alive with in-progress acks from a
// timer, watching the job record for cancellation, and reporting progress
// to the record and as events.
package worker
