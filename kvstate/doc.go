// Package kvstate keeps the provisioner's shared state in JetStream: job
// records and their state machine, the per-host image cache index, the host
// registry, volume leases (and the API's reservations of them) and the
// callers' Idempotency-Keys in KV buckets; and, as the API uses them, the
// job queue (JobQueue: publish, find, drop and purge job messages, the
// hosts' consumers) and the uploads waiting in the content buckets
// (Uploads). Open binds all of it as a State. Every change of a record is
// a compare-and-set on the key's revision, so concurrent writers (API
// replicas, a worker's slots, an operator) never overwrite each other.
//
// A lookup that finds nothing returns an error that names what is missing
// (ErrJobNotFound, ErrHostNotFound, ErrCacheEntryNotFound,
// ErrQueuedJobNotFound, ErrConsumerNotFound), each matching ErrNotFound.
package kvstate
