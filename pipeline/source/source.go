package source

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// maxChecksumBytes caps how much of a .sha256 object is read.
const maxChecksumBytes = 4 << 10

// MinIO reads images from one MinIO (or S3-compatible) endpoint.
type MinIO struct {
	client   *minio.Client
	endpoint string
	secure   bool
}

var _ ResumableSource = (*MinIO)(nil)

// NewMinIO makes a source for endpoint (host or host:port) with static
// credentials; useSSL selects https.
func NewMinIO(endpoint, accessKey, secretKey string, useSSL bool) (*MinIO, error) {
	norm := messaging.NormalizeEndpoint(endpoint, useSSL)
	if norm == "" || strings.HasPrefix(norm, ":") {
		return nil, fmt.Errorf("MinIO endpoint %q has no host", endpoint)
	}
	client, err := minio.New(norm, &minio.Options{
		Creds:  credentials.NewStaticV4(accessKey, secretKey, ""),
		Secure: useSSL,
		// One attempt per request: the cache retries transient failures
		// itself, within its retry budget, and resumes downloads.
		MaxRetries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("make MinIO client for %s: %w", norm, err)
	}
	return &MinIO{client: client, endpoint: norm, secure: useSSL}, nil
}

// Endpoint is the source's endpoint as host:port, lower-case, with the
// scheme's default port filled in (the form messaging.ImageRef.Endpoint has).
func (s *MinIO) Endpoint() string { return s.endpoint }

// Secure reports whether the source talks https.
func (s *MinIO) Secure() bool { return s.secure }

func (s *MinIO) location(bucket, object string) string {
	return fmt.Sprintf("s3://%s/%s", bucket, object)
}

// describeErr turns a MinIO error response into a message a person can act on.
func (s *MinIO) describeErr(what, bucket, object string, err error) error {
	resp := minio.ToErrorResponse(err)
	loc := s.location(bucket, object)
	switch resp.Code {
	case "NoSuchKey":
		return fmt.Errorf("%s %s not found on %s: %w", what, loc, s.endpoint, err)
	case "NoSuchBucket":
		return fmt.Errorf("%s %s not found on %s: bucket %q does not exist: %w", what, loc, s.endpoint, bucket, err)
	case "AccessDenied":
		return fmt.Errorf("access to %s %s denied on %s: check the worker's MinIO credentials and the bucket policy: %w", what, loc, s.endpoint, err)
	case "InvalidAccessKeyId", "SignatureDoesNotMatch":
		return fmt.Errorf("MinIO on %s rejected the worker's credentials reading %s %s: %w", s.endpoint, what, loc, err)
	case "PreconditionFailed":
		return fmt.Errorf("%s %s on %s was replaced: %w: %w", what, loc, s.endpoint, ErrObjectChanged, err)
	}
	return fmt.Errorf("read %s %s on %s: %w", what, loc, s.endpoint, err)
}

// Checksum reads <object>.sha256 and returns the digest it holds. found is
// false when there is no such object.
func (s *MinIO) Checksum(ctx context.Context, bucket, object string) (string, bool, error) {
	name := object + ".sha256"
	obj, err := s.client.GetObject(ctx, bucket, name, minio.GetObjectOptions{})
	if err != nil {
		return "", false, s.describeErr("checksum object", bucket, name, err)
	}
	defer obj.Close()
	data, err := io.ReadAll(io.LimitReader(obj, maxChecksumBytes+1))
	if err != nil {
		if minio.ToErrorResponse(err).Code == "NoSuchKey" {
			return "", false, nil
		}
		return "", false, s.describeErr("checksum object", bucket, name, err)
	}
	if len(data) > maxChecksumBytes {
		return "", false, fmt.Errorf("checksum object %s on %s is larger than %d bytes; it should hold one SHA-256 digest", s.location(bucket, name), s.endpoint, maxChecksumBytes)
	}
	digest, err := ParseChecksum(data)
	if err != nil {
		return "", false, fmt.Errorf("checksum object %s on %s: %w", s.location(bucket, name), s.endpoint, err)
	}
	return digest, true, nil
}

// ParseChecksum reads the content of a .sha256 file: a bare 64-digit hex
// digest, or a sha256sum line ("<hex>  name" or "<hex> *name"). It returns
// the digest in lower case.
func ParseChecksum(data []byte) (string, error) {
	text := strings.TrimSpace(string(data))
	if text == "" {
		return "", errors.New("it is empty; it should hold a SHA-256 digest (64 hex digits), optionally followed by a file name as sha256sum prints it")
	}
	line, _, _ := strings.Cut(text, "\n")
	line = strings.TrimSpace(line)
	field := line
	if i := strings.IndexAny(line, " \t"); i >= 0 {
		field = line[:i]
		rest := strings.TrimLeft(line[i:], " \t")
		if strings.TrimPrefix(rest, "*") == "" {
			return "", fmt.Errorf("line %q has no file name after the digest; expected \"<hex>  name\" or a bare digest", truncate(line, 100))
		}
	}
	if len(field) != 64 {
		return "", fmt.Errorf("%q is not a SHA-256 digest (64 hex digits), as a bare digest or a sha256sum line", truncate(line, 100))
	}
	if _, err := hex.DecodeString(field); err != nil {
		return "", fmt.Errorf("%q is not a SHA-256 digest (64 hex digits), as a bare digest or a sha256sum line", truncate(line, 100))
	}
	return strings.ToLower(field), nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Open stats the object, so that a missing object or a refused access is a
// clear error, then opens it for reading.
func (s *MinIO) Open(ctx context.Context, bucket, object string) (io.ReadCloser, ObjectInfo, error) {
	st, err := s.client.StatObject(ctx, bucket, object, minio.StatObjectOptions{})
	if err != nil {
		return nil, ObjectInfo{}, s.describeErr("image", bucket, object, err)
	}
	opts := minio.GetObjectOptions{}
	if st.ETag != "" {
		// Read the version we stat'ed; a replaced object fails instead of mixing.
		if err := opts.SetMatchETag(st.ETag); err != nil {
			return nil, ObjectInfo{}, fmt.Errorf("open image %s: %w", s.location(bucket, object), err)
		}
	}
	obj, err := s.client.GetObject(ctx, bucket, object, opts)
	if err != nil {
		return nil, ObjectInfo{}, s.describeErr("image", bucket, object, err)
	}
	return obj, ObjectInfo{Size: st.Size, ETag: st.ETag}, nil
}

// ErrObjectChanged is wrapped by errors of a read pinned to an ETag that
// the object no longer has (HTTP 412): it was replaced or rewritten.
var ErrObjectChanged = errors.New("the object changed")

// ResumableSource is a Source whose downloads the cache can resume after
// a transient failure. The cache uses Stat and OpenAt instead of Open when
// its Source implements this.
type ResumableSource interface {
	Source
	// Stat returns the object's size and ETag.
	Stat(ctx context.Context, bucket, object string) (ObjectInfo, error)
	// OpenAt opens the object for reading from offset to its end. A
	// non-empty etag pins the read to that version: if the object's ETag
	// differs, reading fails with an error wrapping ErrObjectChanged.
	OpenAt(ctx context.Context, bucket, object string, offset int64, etag string) (io.ReadCloser, error)
}

// Stat returns the object's size and ETag.
func (s *MinIO) Stat(ctx context.Context, bucket, object string) (ObjectInfo, error) {
	st, err := s.client.StatObject(ctx, bucket, object, minio.StatObjectOptions{})
	if err != nil {
		return ObjectInfo{}, s.describeErr("image", bucket, object, err)
	}
	return ObjectInfo{Size: st.Size, ETag: st.ETag}, nil
}

// OpenAt opens the object from offset (a range request when offset > 0),
// pinned to etag when it is not empty. The request is made on the first Read.
func (s *MinIO) OpenAt(ctx context.Context, bucket, object string, offset int64, etag string) (io.ReadCloser, error) {
	opts := minio.GetObjectOptions{}
	if etag != "" {
		if err := opts.SetMatchETag(etag); err != nil {
			return nil, fmt.Errorf("open image %s: %w", s.location(bucket, object), err)
		}
	}
	if offset > 0 {
		if err := opts.SetRange(offset, 0); err != nil {
			return nil, fmt.Errorf("open image %s at byte %d: %w", s.location(bucket, object), offset, err)
		}
	}
	obj, err := s.client.GetObject(ctx, bucket, object, opts)
	if err != nil {
		return nil, s.describeErr("image", bucket, object, err)
	}
	return &describedReader{r: obj, s: s, bucket: bucket, object: object}, nil
}

// describedReader turns the object store's error responses met while
// reading (the request is made on the first Read) into clear errors.
type describedReader struct {
	r              io.ReadCloser
	s              *MinIO
	bucket, object string
}

func (d *describedReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if err != nil && err != io.EOF {
		var resp minio.ErrorResponse
		if errors.As(err, &resp) && resp.Code != "" {
			err = d.s.describeErr("image", d.bucket, d.object, err)
		}
	}
	return n, err
}

func (d *describedReader) Close() error { return d.r.Close() }

// ErrStalled is the cause of an attempt abandoned because no bytes came.
var ErrStalled = errors.New("no data from the object store")

// IsTransient reports whether err, met talking to the object store, may
// heal by itself: refused, reset or cut connections, timeouts, HTTP 5xx,
// 408, 429 and the S3 slow-down codes. Missing objects, refused access,
// changed objects (HTTP 412) and everything else are permanent.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrObjectChanged) {
		return false
	}
	var resp minio.ErrorResponse
	if errors.As(err, &resp) && (resp.StatusCode != 0 || resp.Code != "") {
		switch resp.Code {
		case "SlowDown", "SlowDownRead", "SlowDownWrite", "ServiceUnavailable", "InternalError",
			"RequestTimeout", "XMinioServerNotInitialized", "Throttling", "ThrottlingException",
			"RequestLimitExceeded", "RequestThrottled", "OperationTimedOut":
			return true
		}
		switch {
		case resp.StatusCode >= 500, resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode == http.StatusTooManyRequests:
			return true
		}
		return false
	}
	if errors.Is(err, ErrStalled) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	for _, e := range []error{syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EPIPE,
		syscall.ETIMEDOUT, syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.ENETDOWN, syscall.EHOSTDOWN} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return true
	}
	if errors.Is(err, io.EOF) {
		// a connection closed before the response, e.g. by a restarting server
		return true
	}
	return false
}

// ObjectInfo describes an object in the store.
type ObjectInfo struct {
	Size int64
	ETag string
}

// Source reads images from an object store.
type Source interface {
	// Checksum returns the hex SHA-256 published next to the object as
	// <object>.sha256; found is false when there is no such object.
	Checksum(ctx context.Context, bucket, object string) (digest string, found bool, err error)
	// Open opens the object for reading.
	Open(ctx context.Context, bucket, object string) (io.ReadCloser, ObjectInfo, error)
}
