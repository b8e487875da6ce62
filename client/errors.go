package client

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// Sentinels an *APIError matches (errors.Is) by its status.
var (
	ErrInvalid      = errors.New("invalid request")     // 400, 413, 415, 422
	ErrUnauthorized = errors.New("unauthorized")        // 401
	ErrForbidden    = errors.New("forbidden")           // 403
	ErrNotFound     = errors.New("not found")           // 404
	ErrConflict     = errors.New("conflict")            // 409
	ErrUnavailable  = errors.New("service unavailable") // 503
)

// Job outcomes Wait reports as a *JobError.
var (
	ErrJobFailed    = errors.New("job failed")
	ErrJobCancelled = errors.New("job cancelled")
)

// APIError is an answer in the API's error format (or, from something in
// front of the API, any answer that is not a success).
type APIError struct {
	// Status is the HTTP status code.
	Status int
	// Body is the API's error body; its Error and Message are empty when
	// the answer was not in the API's format.
	Body rest.Error
	// RequestID is the answer's X-Request-ID, for the API's logs.
	RequestID string
	// Method and Path are the request's.
	Method, Path string
}

func (e *APIError) Error() string {
	if e.Body.Message == "" {
		return fmt.Sprintf("%s %s: %d %s", e.Method, e.Path, e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.Path, e.Status, e.Body.Error, e.Body.Message)
}

// Is matches the sentinel of e's status.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrInvalid:
		return e.Status == http.StatusBadRequest || e.Status == http.StatusRequestEntityTooLarge ||
			e.Status == http.StatusUnsupportedMediaType || e.Status == http.StatusUnprocessableEntity
	case ErrUnauthorized:
		return e.Status == http.StatusUnauthorized
	case ErrForbidden:
		return e.Status == http.StatusForbidden
	case ErrNotFound:
		return e.Status == http.StatusNotFound
	case ErrConflict:
		return e.Status == http.StatusConflict
	case ErrUnavailable:
		return e.Status == http.StatusServiceUnavailable
	}
	return false
}

// UnreachableError is a request that got no answer from the API (after
// its retries): connection refused, DNS, TLS, reset.
type UnreachableError struct {
	// URL is the request's.
	URL string
	// Attempts is how many times it was tried.
	Attempts int
	Err      error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("API at %s is unreachable (%d attempts): %v", e.URL, e.Attempts, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// JobError is a job that ended failed or cancelled; it matches
// ErrJobFailed or ErrJobCancelled.
type JobError struct {
	Job rest.Job
}

func (e *JobError) Error() string {
	if e.Job.Status == rest.StatusCancelled {
		return fmt.Sprintf("job %s was cancelled", e.Job.JobID)
	}
	return fmt.Sprintf("job %s failed: %s", e.Job.JobID, e.Job.Error)
}

// Is matches ErrJobFailed or ErrJobCancelled.
func (e *JobError) Is(target error) bool {
	return (target == ErrJobFailed && e.Job.Status == rest.StatusFailed) || (target == ErrJobCancelled && e.Job.Status == rest.StatusCancelled)
}
