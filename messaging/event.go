package messaging

import "time"

// Event is a progress event published on a job's event subject. It repeats
// the job record's progress so a watcher needs nothing else.
type Event struct {
	JobID   string    `json:"job_id"`
	Host    string    `json:"hypervisor"`
	Status  string    `json:"status"`
	Stage   string    `json:"stage,omitempty"`
	Percent int       `json:"percent"`
	Bytes   int64     `json:"bytes_processed,omitempty"`
	Total   int64     `json:"bytes_total,omitempty"`
	ETASec  *int64    `json:"eta_sec,omitempty"`
	Attempt int       `json:"attempt,omitempty"`
	Error   string    `json:"error,omitempty"`
	Time    time.Time `json:"time"`
}

// CacheDeleteRequest asks a worker to remove an image from its cache.
type CacheDeleteRequest struct {
	// Key is the cache key (the image's SHA-256, or its URL's).
	Key    string `json:"key"`
	Caller string `json:"caller,omitempty"`
}

// Results of a cache delete request.
const (
	CacheDeleted  = "deleted"
	CacheInUse    = "in_use"
	CacheNotFound = "not_found"
	CacheError    = "error"
)

// CacheDeleteReply is a worker's answer to a CacheDeleteRequest.
type CacheDeleteReply struct {
	Result  string `json:"result"`
	Message string `json:"message,omitempty"`
}
