package messaging

import (
	"encoding/json"
	"time"
)

// The API serves a few core NATS requests for workers, on subjects that
// carry the asking worker's host (so NATS permissions let a worker ask only
// for itself) and that any API replica answers (queue group APIQueue):
//
//   - HostConsumer: create or update the host's durable job consumer, with
//     the fixed configuration of ConsumerConfig. Workers create no consumers
//     themselves: a consumer create request names its own deliver subject,
//     which nats-server does not check against the creator's permissions.
//   - HostCacheList: list the host's cache index entries (listing keys needs
//     a consumer; a worker may only read its own keys by direct get).
//   - HostSettled: a job of the host has ended; the API removes its message
//     from the job stream once the job's record says so.
//
// Answers are a HostReply.

// APIQueue is the queue group the API replicas answer worker requests in.
const APIQueue = "provisioner-api"

// HostConsumer is the subject on which host's worker asks the API to create
// or update its durable job consumer (body: ConsumerRequest).
func (s Subjects) HostConsumer(host string) string {
	return s.Prefix + ".api.hosts." + host + ".consumer"
}

// HostCacheList is the subject on which host's worker asks the API for its
// cache index entries (empty body).
func (s Subjects) HostCacheList(host string) string {
	return s.Prefix + ".api.hosts." + host + ".cache.list"
}

// HostSettled is the subject on which host's worker tells the API that one
// of its jobs has ended (body: SettledRequest).
func (s Subjects) HostSettled(host string) string {
	return s.Prefix + ".api.hosts." + host + ".settled"
}

// HostAPI matches every API request of host's worker (its permission).
func (s Subjects) HostAPI(host string) string { return s.Prefix + ".api.hosts." + host + ".>" }

// AnyHostAPI is the wildcard form of a host request subject: "consumer" or
// "cache.list" with the host token wild.
func (s Subjects) AnyHostAPI(what string) string { return s.Prefix + ".api.hosts.*." + what }

// JobChanged is the subject on which the API tells host's worker that the
// record of jobID changed (a cancel). It carries no authority: the worker
// re-reads the record, and only the record decides.
func (s Subjects) JobChanged(host, jobID string) string {
	return s.Prefix + ".control." + host + ".jobs." + jobID + ".changed"
}

// ConsumerRequest is the body of a HostConsumer request: the worker's
// settings for its consumer, which the API bounds (MinAckWait..MaxAckWait,
// MinMaxDeliver..MaxMaxDeliver).
type ConsumerRequest struct {
	AckWaitMS  int64 `json:"ack_wait_ms"`
	MaxDeliver int   `json:"max_deliver"`
	// Unavailable: the worker's consumer stopped answering (its node died);
	// the API creates it again if it does not answer the API either.
	Unavailable bool `json:"unavailable,omitempty"`
}

// SettledRequest is the body of a HostSettled request.
type SettledRequest struct {
	JobID string `json:"job_id"`
}

// Bounds of a ConsumerRequest.
const (
	MinAckWait    = time.Second
	MaxAckWait    = 24 * time.Hour
	MinMaxDeliver = 2
	MaxMaxDeliver = 1000
)

// HostReply is the API's answer to a worker request: Error when it failed,
// otherwise Consumer (HostConsumer) or Entries (HostCacheList, a JSON array
// of cache entries as kvstate stores them).
type HostReply struct {
	Error    string          `json:"error,omitempty"`
	Consumer string          `json:"consumer,omitempty"`
	Entries  json.RawMessage `json:"entries,omitempty"`
}
