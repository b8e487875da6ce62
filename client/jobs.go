package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/google/uuid"

	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// SubmitOption configures one submission.
type SubmitOption func(*submitSettings)

type submitSettings struct{ key string }

// WithIdempotencyKey is the submission's Idempotency-Key (1 to 255
// printable characters). Without it each Submit or FetchImage call makes a
// random key of its own, kept across that call's retries; give your own to
// make a submission safe to repeat from a later process too.
func WithIdempotencyKey(key string) SubmitOption {
	return func(s *submitSettings) { s.key = key }
}

// Submission is an accepted job.
type Submission struct {
	JobID string
	// Replayed: the API had already accepted this submission (same
	// Idempotency-Key) and answered with that job.
	Replayed bool
}

// Submit asks for a volume to be provisioned.
func (c *Client) Submit(ctx context.Context, req rest.JobRequest, opts ...SubmitOption) (Submission, error) {
	return c.submit(ctx, "/api/v1/jobs", req, opts)
}

// FetchImage asks a host to download an image into its cache (a job that
// creates no volume).
func (c *Client) FetchImage(ctx context.Context, req rest.FetchRequest, opts ...SubmitOption) (Submission, error) {
	return c.submit(ctx, "/api/v1/cache/fetch", req, opts)
}

func (c *Client) submit(ctx context.Context, path string, body any, opts []SubmitOption) (Submission, error) {
	s := submitSettings{key: uuid.NewString()}
	for _, o := range opts {
		o(&s)
	}
	var out rest.Accepted
	h, err := c.do(ctx, call{method: http.MethodPost, path: path, body: body, header: http.Header{rest.HeaderIdempotencyKey: {s.key}}}, &out)
	if err != nil {
		return Submission{}, err
	}
	return Submission{JobID: out.JobID, Replayed: h.Get(rest.HeaderIdempotentReplayed) == "true"}, nil
}

// Get reads a job's record.
func (c *Client) Get(ctx context.Context, jobID string) (rest.Job, error) {
	var j rest.Job
	_, err := c.do(ctx, call{method: http.MethodGet, path: "/api/v1/jobs/" + url.PathEscape(jobID)}, &j)
	return j, err
}

// Cancel cancels a pending or running job; a job that already ended is an
// *APIError matching ErrInvalid.
func (c *Client) Cancel(ctx context.Context, jobID string) (rest.Cancelled, error) {
	var out rest.Cancelled
	_, err := c.do(ctx, call{method: http.MethodPost, path: "/api/v1/jobs/" + url.PathEscape(jobID) + "/cancel"}, &out)
	return out, err
}

// Wait follows a job until it ends and returns its final record: with a nil
// error when it completed, with a *JobError when it failed or was
// cancelled. When ctx ends first it returns ctx's error; the job goes on.
func (c *Client) Wait(ctx context.Context, jobID string) (rest.Job, error) {
	for _, err := range c.Watch(ctx, jobID) {
		if err != nil {
			return rest.Job{}, err
		}
	}
	j, err := c.Get(ctx, jobID)
	if err != nil {
		return j, err
	}
	if j.Status == rest.StatusFailed || j.Status == rest.StatusCancelled {
		return j, &JobError{Job: j}
	}
	return j, nil
}

// CacheQuery selects a page of GET /api/v1/cache/images.
type CacheQuery struct {
	// Hypervisor is the host (empty: the API's default).
	Hypervisor string
	// Offset and Limit page the list (Limit 0: the API's default, 100).
	Offset, Limit int
}

// ListImages lists a host's cached images.
func (c *Client) ListImages(ctx context.Context, q CacheQuery) (rest.CacheList, error) {
	v := url.Values{}
	if q.Hypervisor != "" {
		v.Set("hypervisor", q.Hypervisor)
	}
	if q.Offset > 0 {
		v.Set("offset", strconv.Itoa(q.Offset))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var out rest.CacheList
	_, err := c.do(ctx, call{method: http.MethodGet, path: "/api/v1/cache/images", query: v}, &out)
	return out, err
}

// DeleteImage removes an image from a host's cache by its cache key or
// content checksum (hypervisor empty: the API's default).
func (c *Client) DeleteImage(ctx context.Context, hypervisor, checksum string) (rest.CacheDeleted, error) {
	v := url.Values{}
	if hypervisor != "" {
		v.Set("hypervisor", hypervisor)
	}
	var out rest.CacheDeleted
	_, err := c.do(ctx, call{method: http.MethodDelete, path: "/api/v1/cache/images/" + url.PathEscape(checksum), query: v}, &out)
	return out, err
}

// Hosts lists the hypervisors in the host registry that the caller may use.
func (c *Client) Hosts(ctx context.Context) ([]rest.Host, error) {
	var out rest.HostList
	_, err := c.do(ctx, call{method: http.MethodGet, path: "/api/v1/hosts"}, &out)
	return out.Hosts, err
}

// Health reads the API's /health.
func (c *Client) Health(ctx context.Context) (rest.Health, error) {
	var out rest.Health
	_, err := c.do(ctx, call{method: http.MethodGet, path: "/health"}, &out)
	return out, err
}

// JobQuery selects a page of GET /api/v1/jobs.
type JobQuery struct {
	// Hypervisor limits the list to one host (empty: every host the caller
	// may use).
	Hypervisor string
	// Statuses limits the list to jobs in these states (empty: all).
	Statuses []rest.Status
	// Offset and Limit page the list (Limit 0: the API's default, 100).
	Offset, Limit int
}

// ListJobs lists job records, newest first.
func (c *Client) ListJobs(ctx context.Context, q JobQuery) (rest.JobList, error) {
	v := url.Values{}
	if q.Hypervisor != "" {
		v.Set("hypervisor", q.Hypervisor)
	}
	if len(q.Statuses) > 0 {
		parts := make([]string, len(q.Statuses))
		for i, s := range q.Statuses {
			parts[i] = string(s)
		}
		v.Set("status", strings.Join(parts, ","))
	}
	if q.Offset > 0 {
		v.Set("offset", strconv.Itoa(q.Offset))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var out rest.JobList
	_, err := c.do(ctx, call{method: http.MethodGet, path: "/api/v1/jobs", query: v}, &out)
	return out, err
}
