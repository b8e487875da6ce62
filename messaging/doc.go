// Package messaging holds the provisioner's NATS contract: the names of the
// stream, consumers and KV buckets, the subjects, the headers and the JSON
// payloads that travel on them, and the idempotent set-up of all of it.
//
// subjects.md at the repository root documents the same contract for
// operators; the two must agree.
package messaging
