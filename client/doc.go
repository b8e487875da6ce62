// Package client calls the provisioner's REST API: submit a provisioning
// job or a cache fetch, read, wait for, watch and cancel jobs, list and
// remove cached images, list hosts.
//
// Requests and answers are the API's own types (package rest). Errors from
// the API are *APIError values carrying its error body and status; match
// them with errors.Is against ErrNotFound, ErrUnauthorized, ErrForbidden,
// ErrConflict, ErrUnavailable or ErrInvalid. An API that cannot be reached
// is an *UnreachableError. Requests are retried on 503 and connection
// errors under the client's RetryPolicy; a submission keeps one
// Idempotency-Key across its retries, so it makes at most one job.
package client
