package messaging

import (
	"fmt"
	"regexp"
	"strings"
)

// DefaultPrefix is the first token of every subject the provisioner uses.
const DefaultPrefix = "provisioner"

// Names of the JetStream resources. They are fixed so that operators can script
// against them; the subject prefix is the only configurable part.
const (
	// JobStream is the work-queue stream that holds queued jobs.
	JobStream = "PROVISIONER_JOBS"
	// EventStream keeps recent progress events so late watchers can replay them.
	EventStream = "PROVISIONER_EVENTS"
	// JobBucket is the KV bucket of job records, keyed <host>.<job_id>.
	JobBucket = "provisioner_jobs"
	// CacheBucket is the KV bucket of image cache entries, keyed <host>.<sha256>.
	CacheBucket = "provisioner_cache"
	// HostBucket is the KV bucket of the host registry, keyed <host>.
	HostBucket = "provisioner_hosts"
	// VolumeBucket is the KV bucket of volume leases, keyed <host>.<volume>.
	VolumeBucket = "provisioner_volumes"
	// IdempotencyBucket maps Idempotency-Key headers to jobs, keyed by a hash
	// of the caller and the key.
	IdempotencyBucket = "provisioner_idempotency"
)

var hostRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidHost reports whether name can be used as a host token: lower-case
// letters, digits and dashes, 1 to 63 characters, no leading or trailing dash.
func ValidHost(name string) bool { return hostRE.MatchString(name) }

// SanitizeHost turns a machine host name into a valid host token: lower case,
// the first DNS label only, and every other character replaced by a dash.
func SanitizeHost(name string) string {
	name = strings.ToLower(strings.TrimSpace(name))
	if i := strings.IndexByte(name, '.'); i >= 0 {
		name = name[:i]
	}
	b := []byte(name)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			b[i] = '-'
		}
	}
	out := strings.Trim(string(b), "-")
	if len(out) > 63 {
		out = strings.TrimRight(out[:63], "-")
	}
	if out == "" {
		out = "localhost"
	}
	return out
}

// Subjects derives every subject from one prefix.
type Subjects struct {
	Prefix string
}

// NewSubjects returns the subjects for prefix, or for DefaultPrefix when empty.
func NewSubjects(prefix string) Subjects {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return Subjects{Prefix: prefix}
}

// Job is the subject a job for host is published on.
func (s Subjects) Job(host, jobID string) string {
	return fmt.Sprintf("%s.jobs.%s.%s", s.Prefix, host, jobID)
}

// JobsFilter matches every job of host.
func (s Subjects) JobsFilter(host string) string { return fmt.Sprintf("%s.jobs.%s.>", s.Prefix, host) }

// AllJobs matches every job subject.
func (s Subjects) AllJobs() string { return s.Prefix + ".jobs.>" }

// AnyHostJob matches the job jobID on any host.
func (s Subjects) AnyHostJob(jobID string) string {
	return fmt.Sprintf("%s.jobs.*.%s", s.Prefix, jobID)
}

// Event is the subject progress events of a job are published on.
func (s Subjects) Event(host, jobID string) string {
	return fmt.Sprintf("%s.events.%s.%s", s.Prefix, host, jobID)
}

// AllEvents matches every event subject.
func (s Subjects) AllEvents() string { return s.Prefix + ".events.>" }

// ParseJob splits a job subject into its host and job id tokens.
func (s Subjects) ParseJob(subject string) (host, jobID string, err error) {
	rest, ok := strings.CutPrefix(subject, s.Prefix+".jobs.")
	if !ok {
		return "", "", fmt.Errorf("subject %q is not a job subject (want %s.jobs.<host>.<job_id>)", subject, s.Prefix)
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 2 {
		return "", "", fmt.Errorf("subject %q is not a job subject (want %s.jobs.<host>.<job_id>)", subject, s.Prefix)
	}
	return parts[0], parts[1], nil
}

// CacheDelete is the request subject on which host's worker removes an image
// from its cache (core NATS request/reply).
func (s Subjects) CacheDelete(host string) string {
	return s.Prefix + ".control." + host + ".cache.delete"
}

// Control matches every control request of host.
func (s Subjects) Control(host string) string { return s.Prefix + ".control." + host + ".>" }

// ConsumerName is the durable consumer of host's worker.
func ConsumerName(host string) string { return "worker-" + host }

// JobKey is the key of a job record in JobBucket.
func JobKey(host, jobID string) string { return host + "." + jobID }

// CacheKey is the key of a cache entry in CacheBucket.
func CacheKey(host, digest string) string { return host + "." + digest }

// VolumeKey is the key of a volume lease in VolumeBucket.
func VolumeKey(host, volume string) string { return host + "." + volume }
