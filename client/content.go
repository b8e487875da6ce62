package client

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// Upload is content for a volume (PUT /api/v1/volumes/{hypervisor}/{volume_name}/content).
type Upload struct {
	// Hypervisor and Volume name the volume; Hypervisor is required.
	Hypervisor, Volume string
	// Body is read from its start on every attempt; Size is its length.
	Body io.ReadSeeker
	Size int64
	// SHA256 is the body's SHA-256 in hex; empty: computed from Body first.
	SHA256 string
	// VolumeSizeGB is the size of a new volume (0: the content's, rounded up
	// to a MiB; an existing volume is then reused if the content fits).
	VolumeSizeGB int64
	// CorrelationID is kept on the job record.
	CorrelationID string
}

// UploadContent streams u's body to the API, which keeps it in the host's
// content bucket and queues a job that writes it into the volume; the job
// is followed like any other (Wait, Watch). Retried on 503 and connection
// errors with one Idempotency-Key.
func (c *Client) UploadContent(ctx context.Context, u Upload, opts ...SubmitOption) (Submission, error) {
	s := submitSettings{key: uuid.NewString()}
	for _, o := range opts {
		o(&s)
	}
	if u.SHA256 == "" {
		sum, err := digest(u.Body)
		if err != nil {
			return Submission{}, err
		}
		u.SHA256 = sum
	}
	q := url.Values{}
	if u.VolumeSizeGB > 0 {
		q.Set("volume_size_gb", strconv.FormatInt(u.VolumeSizeGB, 10))
	}
	if u.CorrelationID != "" {
		q.Set("correlation_id", u.CorrelationID)
	}
	cl := call{method: http.MethodPut, path: rest.ContentPath(url.PathEscape(u.Hypervisor), url.PathEscape(u.Volume)), query: q,
		contentType: "application/octet-stream",
		header:      http.Header{rest.HeaderIdempotencyKey: {s.key}, rest.HeaderContentSHA256: {u.SHA256}}}
	target := *c.base
	target.Path = c.base.Path + cl.path
	target.RawQuery = q.Encode()
	for attempt := 1; ; attempt++ {
		if _, err := u.Body.Seek(0, io.SeekStart); err != nil {
			return Submission{}, fmt.Errorf("rewind the upload: %w", err)
		}
		resp, err := c.sendSized(ctx, cl, &target, io.LimitReader(u.Body, u.Size), u.Size)
		wait, retry := c.retryable(resp, err, attempt)
		if !retry {
			if err != nil {
				return Submission{}, c.unreachable(ctx, cl, attempt, err)
			}
			defer resp.Body.Close()
			var out rest.Accepted
			if err := decode(resp, cl, &out); err != nil {
				return Submission{}, err
			}
			return Submission{JobID: out.JobID, Replayed: resp.Header.Get(rest.HeaderIdempotentReplayed) == "true"}, nil
		}
		if resp != nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		select {
		case <-ctx.Done():
			return Submission{}, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// sendSized is sendReq with a body of a known length (never chunked).
func (c *Client) sendSized(ctx context.Context, cl call, u *url.URL, body io.Reader, size int64) (*http.Response, error) {
	if size == 0 {
		body = http.NoBody
	}
	cl.length = size
	return c.sendReq(ctx, cl, u, body)
}

// digest is the hex SHA-256 of what r holds.
func digest(r io.ReadSeeker) (string, error) {
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return "", fmt.Errorf("rewind the upload: %w", err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", fmt.Errorf("read the upload: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
