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
