// Package api is the REST front-end: it validates requests, writes job
// records, publishes jobs to their host's subject and answers reads from
// JetStream KV, all through kvstate (a kvstate.State). It holds no job state
// of its own, so any number of replicas can serve one NATS cluster.
package api
