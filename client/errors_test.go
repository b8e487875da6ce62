package client

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

func TestAPIErrorMatchesTheSentinelOfItsStatus(t *testing.T) {
	t.Parallel()
	for status, want := range map[int]error{400: ErrInvalid, 413: ErrInvalid, 422: ErrInvalid, 401: ErrUnauthorized,
		403: ErrForbidden, 404: ErrNotFound, 409: ErrConflict, 503: ErrUnavailable} {
		err := fmt.Errorf("wrapped: %w", &APIError{Status: status})
		require.ErrorIs(t, err, want, "status %d", status)
		for _, other := range []error{ErrInvalid, ErrUnauthorized, ErrForbidden, ErrNotFound, ErrConflict, ErrUnavailable} {
			if other != want {
				require.NotErrorIs(t, err, other, "status %d", status)
			}
		}
	}
	e := &APIError{Status: 409, Method: "POST", Path: "/api/v1/jobs", Body: rest.Error{Error: "conflict", Message: "volume vm-1 is busy", Code: 409}}
	require.Equal(t, "POST /api/v1/jobs: 409 conflict: volume vm-1 is busy", e.Error())
	require.Equal(t, "GET /x: 502 Bad Gateway", (&APIError{Status: 502, Method: "GET", Path: "/x"}).Error())
}

func TestJobErrorMatchesItsOutcome(t *testing.T) {
	t.Parallel()
	failed := &JobError{Job: rest.Job{JobID: "j1", Status: rest.StatusFailed, Error: "checksum mismatch"}}
	require.ErrorIs(t, failed, ErrJobFailed)
	require.False(t, errors.Is(failed, ErrJobCancelled))
	require.Equal(t, "job j1 failed: checksum mismatch", failed.Error())
	cancelled := &JobError{Job: rest.Job{JobID: "j2", Status: rest.StatusCancelled}}
	require.ErrorIs(t, cancelled, ErrJobCancelled)
	require.Equal(t, "job j2 was cancelled", cancelled.Error())
}

func TestBackoffGrowsWithinItsBounds(t *testing.T) {
	t.Parallel()
	p := RetryPolicy{Attempts: 10, MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}
	for n := 1; n <= 8; n++ {
		ceil := min(p.MinBackoff<<(n-1), p.MaxBackoff)
		for range 50 {
			d := p.backoff(n)
			require.GreaterOrEqual(t, d, ceil/2, "retry %d", n)
			require.LessOrEqual(t, d, ceil, "retry %d", n)
		}
	}
}

func TestNewRefusesABadBaseURL(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"127.0.0.1:8080", "ftp://h/", "http://", "://x"} {
		_, err := New(WithBaseURL(u))
		require.Error(t, err, u)
	}
	c, err := New(WithBaseURL("https://provisioner.example.com:8443/"))
	require.NoError(t, err)
	require.Equal(t, "https://provisioner.example.com:8443", c.BaseURL())
	_, err = New(WithRetryPolicy(RetryPolicy{}))
	require.ErrorContains(t, err, "attempts must be at least 1")
}
