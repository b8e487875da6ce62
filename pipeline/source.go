package pipeline

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// maxChecksumBytes caps how much of a .sha256 object is read.
const maxChecksumBytes = 4 << 10

// MinIOSource reads images from one MinIO (or S3-compatible) endpoint.
type MinIOSource struct {
	client   *minio.Client
	endpoint string
	secure   bool
}

var _ Source = (*MinIOSource)(nil)

// NewMinIOSource makes a source for endpoint (host or host:port) with static
// credentials; useSSL selects https.
func NewMinIOSource(endpoint, accessKey, secretKey string, useSSL bool) (*MinIOSource, error) {
	norm := messaging.NormalizeEndpoint(endpoint, useSSL)
	if norm == "" || strings.HasPrefix(norm, ":") {
		return nil, fmt.Errorf("MinIO endpoint %q has no host", endpoint)
	}
	client, err := minio.New(norm, &minio.Options{
		Creds:  credentials.NewStaticV4(accessKey, secretKey, ""),
		Secure: useSSL,
	})
	if err != nil {
		return nil, fmt.Errorf("make MinIO client for %s: %w", norm, err)
	}
	return &MinIOSource{client: client, endpoint: norm, secure: useSSL}, nil
}

// Endpoint is the source's endpoint as host:port, lower-case, with the
// scheme's default port filled in (the form messaging.ImageRef.Endpoint has).
func (s *MinIOSource) Endpoint() string { return s.endpoint }

// Secure reports whether the source talks https.
func (s *MinIOSource) Secure() bool { return s.secure }

func (s *MinIOSource) location(bucket, object string) string {
	return fmt.Sprintf("s3://%s/%s", bucket, object)
}

// describeErr turns a MinIO error response into a message a person can act on.
func (s *MinIOSource) describeErr(what, bucket, object string, err error) error {
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
	}
	return fmt.Errorf("read %s %s on %s: %w", what, loc, s.endpoint, err)
}

// Checksum reads <object>.sha256 and returns the digest it holds. found is
// false when there is no such object.
func (s *MinIOSource) Checksum(ctx context.Context, bucket, object string) (string, bool, error) {
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
func (s *MinIOSource) Open(ctx context.Context, bucket, object string) (io.ReadCloser, ObjectInfo, error) {
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
