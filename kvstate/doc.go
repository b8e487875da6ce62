// Package kvstate keeps the provisioner's shared state in JetStream KV: job
// records and their state machine, the per-host image cache index, the host
// registry and volume leases. Every change is a compare-and-set on the key's
// revision, so concurrent writers (API replicas, a worker's slots, an
// operator) never overwrite each other.
package kvstate
