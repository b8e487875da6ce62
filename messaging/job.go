package messaging

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// JobVersion is the version of the job message this code writes. Messages
// without a version are read as version 1.
const JobVersion = 1

// Kinds of job.
const (
	// KindProvision fills a volume from an image.
	KindProvision = "provision"
	// KindCacheFetch downloads an image into the host's cache only.
	KindCacheFetch = "cache_fetch"
)

// Verification a job may ask for (Job.Verify).
const (
	// VerifyFull: before a volume is cloned from the image's golden, the
	// cached image's digest and the golden's digest are both checked again
	// (time proportional to the image). Without it a clone trusts the
	// sealed, read-only golden and the background scrub.
	VerifyFull = "full"
)

// Image types.
const (
	ImageQCOW2 = "qcow2"
	ImageRaw   = "raw"
)

// Limits of a job's fields.
const (
	// MaxVolumeSizeGB is the largest volume a job may ask for (64 TiB).
	MaxVolumeSizeGB = 65536
	// MaxVolumeNameLen is the longest volume name accepted (LVM's limit is 127).
	MaxVolumeNameLen = 127
	// MaxURLLen is the longest image URL accepted.
	MaxURLLen = 2048
	// MaxCorrelationIDLen is the longest correlation id accepted.
	MaxCorrelationIDLen = 128
	// MaxJobMessageBytes caps a job message on the wire.
	MaxJobMessageBytes = 64 * 1024
)

// Headers set on job messages.
const (
	// HeaderMsgID is JetStream's de-duplication header; it carries the job id.
	HeaderMsgID = "Nats-Msg-Id"
	// HeaderJobVersion carries the job message version.
	HeaderJobVersion = "Provisioner-Job-Version"
)

// Job is a job message as published on a job subject. A message carrying the
// REST request's fields plus job_id is valid: version and kind default.
type Job struct {
	Version       int    `json:"version,omitempty"`
	Kind          string `json:"kind,omitempty"`
	JobID         string `json:"job_id"`
	Hypervisor    string `json:"hypervisor,omitempty"`
	ImageURL      string `json:"image_url"`
	ImageType     string `json:"image_type,omitempty"`
	VolumeName    string `json:"volume_name,omitempty"`
	VolumeSizeGB  int64  `json:"volume_size_gb,omitempty"`
	CorrelationID string `json:"correlation_id,omitempty"`
	// Verify is "" (the default checks) or VerifyFull.
	Verify string `json:"verify,omitempty"`
	// CloudInit, on a provision job, asks for a NoCloud seed volume too; a
	// provision job with it may have no image (only the seed is written).
	CloudInit *CloudInit `json:"cloud_init,omitempty"`
	// Content names the upload a content job writes into its volume.
	Content *Content `json:"content,omitempty"`
	// Caller is the identity that submitted the job (set by the API).
	Caller string `json:"caller,omitempty"`
	// SubmittedAt is when the job was accepted.
	SubmittedAt time.Time `json:"submitted_at,omitzero"`
}

// FieldError is a validation failure of one field; its message is meant for
// the person who sent the request.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// DecodeJob parses a job message strictly: unknown fields, wrong types and
// trailing data are errors.
func DecodeJob(data []byte) (Job, error) {
	var j Job
	if len(data) > MaxJobMessageBytes {
		return j, fmt.Errorf("job message is %d bytes, more than the %d allowed", len(data), MaxJobMessageBytes)
	}
	if err := DecodeStrict(data, &j); err != nil {
		if errors.Is(err, ErrTrailingData) {
			return j, errors.New("job message has data after the JSON object")
		}
		return j, fmt.Errorf("job message is not valid JSON for a job: %w", err)
	}
	return j, nil
}

// ErrTrailingData: more follows the JSON object.
var ErrTrailingData = errors.New("data after the JSON object")

// DecodeStrict decodes one JSON object into dst: unknown fields, wrong types
// and anything after the object are errors, described for a person.
func DecodeStrict(data []byte, dst any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return DescribeJSONError(err)
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		return ErrTrailingData
	}
	return nil
}

// DescribeJSONError turns encoding/json errors into messages that name the field.
func DescribeJSONError(err error) error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		field := typeErr.Field
		if field == "" {
			return fmt.Errorf("the body must be a JSON object, not %s", typeErr.Value)
		}
		want := jsonTypeName(typeErr.Type.Kind().String())
		if typeErr.Value == "number" || strings.HasPrefix(typeErr.Value, "number ") {
			return fmt.Errorf("field %q must be %s, not %s", field, want, strings.Replace(typeErr.Value, "number ", "the fraction ", 1))
		}
		return fmt.Errorf("field %q must be %s, not %s", field, want, typeErr.Value)
	case errors.Is(err, io.EOF):
		return errors.New("the message is empty; send a JSON object")
	case errors.As(err, &syntaxErr):
		return fmt.Errorf("malformed JSON at byte %d: %v", syntaxErr.Offset, err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("malformed JSON: the body ends before the JSON object does")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return fmt.Errorf("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return err
}

func jsonTypeName(kind string) string {
	switch kind {
	case "int", "int64", "int32", "uint", "uint64":
		return "a whole number"
	case "float64":
		return "a number"
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	}
	return "a " + kind
}

// Normalize fills defaults: version, kind and image type.
func (j *Job) Normalize() {
	if j.Version == 0 {
		j.Version = JobVersion
	}
	if j.Kind == "" {
		j.Kind = KindProvision
	}
	if j.ImageType == "" && j.Kind != KindContent {
		j.ImageType = ImageQCOW2
	}
	j.ImageType = strings.ToLower(j.ImageType)
	j.Verify = strings.ToLower(j.Verify)
}

// Validate checks every field of a normalized job. The job id is checked too;
// callers that derive the id themselves set it first.
func (j *Job) Validate() error {
	if j.Version != JobVersion {
		return fieldErr("version", "unsupported job version %d (this worker reads version %d)", j.Version, JobVersion)
	}
	if u, err := uuid.Parse(j.JobID); err != nil || u.String() != j.JobID {
		return fieldErr("job_id", "must be a UUID in lower-case canonical form, such as 550e8400-e29b-41d4-a716-446655440000")
	}
	if j.Hypervisor != "" && !ValidHost(j.Hypervisor) {
		return fieldErr("hypervisor", "%q is not a host name (lower-case letters, digits and dashes, at most 63)", j.Hypervisor)
	}
	if j.Verify != "" && j.Verify != VerifyFull {
		return fieldErr("verify", "must be %q or absent, not %q", VerifyFull, j.Verify)
	}
	if len(j.CorrelationID) > MaxCorrelationIDLen {
		return fieldErr("correlation_id", "is longer than %d characters", MaxCorrelationIDLen)
	}
	switch j.Kind {
	case KindProvision:
		return j.validateProvision()
	case KindCacheFetch:
		if j.VolumeName != "" || j.VolumeSizeGB != 0 || j.CloudInit != nil || j.Content != nil {
			return fieldErr("volume_name", "a cache_fetch job takes no volume")
		}
		return j.validateImage()
	case KindContent:
		return j.validateContent()
	}
	return fieldErr("kind", "must be %s, not %q", describeKinds(), j.Kind)
}

// validateImage checks the image fields.
func (j *Job) validateImage() error {
	if err := ValidateImageURL(j.ImageURL); err != nil {
		return err
	}
	if j.ImageType != ImageQCOW2 && j.ImageType != ImageRaw {
		return fieldErr("image_type", "must be %q or %q, not %q", ImageQCOW2, ImageRaw, j.ImageType)
	}
	return nil
}

// validateProvision checks a provision job: an image and a size, a seed, or
// both.
func (j *Job) validateProvision() error {
	if j.CloudInit == nil || j.ImageURL != "" {
		if err := j.validateImage(); err != nil {
			return err
		}
	}
	if err := ValidateVolumeName(j.VolumeName); err != nil {
		return err
	}
	if j.Content != nil {
		return fieldErr("content", "only a content job carries content")
	}
	if j.CloudInit != nil {
		if err := j.CloudInit.Validate(j.VolumeName); err != nil {
			return err
		}
		if j.ImageURL == "" {
			// Only the seed is written.
			if j.VolumeSizeGB != 0 {
				return fieldErr("volume_size_gb", "a job without image_url writes only the cloud-init seed and takes no size")
			}
			return nil
		}
	}
	if j.VolumeSizeGB < 1 || j.VolumeSizeGB > MaxVolumeSizeGB {
		return fieldErr("volume_size_gb", "must be between 1 and %d (GiB), not %d", MaxVolumeSizeGB, j.VolumeSizeGB)
	}
	return nil
}

// validateContent checks a content job: a volume and its upload; the size
// is optional (ContentVolumeBytes).
func (j *Job) validateContent() error {
	if err := ValidateVolumeName(j.VolumeName); err != nil {
		return err
	}
	switch {
	case j.ImageURL != "":
		return fieldErr("image_url", "a content job takes no image")
	case j.CloudInit != nil:
		return fieldErr("cloud_init", "a content job takes no cloud-init data")
	case j.Content == nil:
		return fieldErr("content", "is required for a content job")
	case j.VolumeSizeGB < 0 || j.VolumeSizeGB > MaxVolumeSizeGB:
		return fieldErr("volume_size_gb", "must be between 1 and %d (GiB), or absent, not %d", MaxVolumeSizeGB, j.VolumeSizeGB)
	}
	if err := j.Content.Validate(); err != nil {
		return err
	}
	if j.VolumeSizeGB > 0 && j.Content.Size > j.VolumeSizeBytes() {
		return fieldErr("volume_size_gb", "%d GiB is smaller than the %d bytes of content", j.VolumeSizeGB, j.Content.Size)
	}
	return nil
}

// SeedVolume is the job's seed volume, "" when it has none.
func (j *Job) SeedVolume() string {
	if j.CloudInit == nil {
		return ""
	}
	return j.CloudInit.SeedVolume(j.VolumeName)
}

// VolumeSizeBytes is the requested size in bytes (volume_size_gb is GiB).
func (j *Job) VolumeSizeBytes() int64 { return j.VolumeSizeGB << 30 }

var volumeNameRE = regexp.MustCompile(`^[A-Za-z0-9_.][A-Za-z0-9_.-]*$`)

// lvmReserved are substrings LVM reserves for its internal volumes.
var lvmReserved = []string{"_cdata", "_cmeta", "_corig", "_iorig", "_mimage", "_mlog", "_pmspare",
	"_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig"}

// ValidateVolumeName accepts names that are valid LVM logical volume names,
// plain file names and libvirt volume names at once.
func ValidateVolumeName(name string) error {
	switch {
	case name == "":
		return fieldErr("volume_name", "is required")
	case len(name) > MaxVolumeNameLen:
		return fieldErr("volume_name", "is %d characters, more than the %d allowed", len(name), MaxVolumeNameLen)
	case name == "." || name == "..":
		return fieldErr("volume_name", "%q is reserved", name)
	case strings.HasPrefix(name, "-"):
		return fieldErr("volume_name", "must not start with '-'")
	case !volumeNameRE.MatchString(name):
		return fieldErr("volume_name", "%q may hold only letters, digits, '_', '.' and '-'", name)
	case strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".") || strings.Contains(name, ".."):
		// The name is a token of KV keys (VolumeKey), where '.' separates
		// tokens and none may be empty.
		return fieldErr("volume_name", "%q must not start or end with '.' or hold \"..\"", name)
	case strings.HasPrefix(name, "snapshot") || strings.HasPrefix(name, "pvmove"):
		return fieldErr("volume_name", "%q starts with a prefix LVM reserves (snapshot, pvmove)", name)
	}
	for _, r := range lvmReserved {
		if strings.Contains(name, r) {
			return fieldErr("volume_name", "%q contains %q, which LVM reserves", name, r)
		}
	}
	return nil
}

// ImageRef is an image URL split into what the object store needs.
type ImageRef struct {
	// URL is the URL as given.
	URL string
	// Secure is true for https.
	Secure bool
	// Endpoint is host:port, with the scheme's default port filled in.
	Endpoint string
	// Bucket and Object name the image in the object store.
	Bucket string
	Object string
}

// Host is the endpoint's host, without port or brackets.
func (r ImageRef) Host() string {
	host, _, err := net.SplitHostPort(r.Endpoint)
	if err != nil {
		return r.Endpoint
	}
	return host
}

// ParseImageURL checks an image URL's form and splits it: http or https, a
// host, /<bucket>/<object>, and no user info, query or fragment.
func ParseImageURL(raw string) (ImageRef, error) {
	var ref ImageRef
	if raw == "" {
		return ref, fieldErr("image_url", "is required")
	}
	if len(raw) > MaxURLLen {
		return ref, fieldErr("image_url", "is longer than %d characters", MaxURLLen)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return ref, fieldErr("image_url", "is not a URL: %v", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return ref, fieldErr("image_url", "scheme must be http or https, not %q", u.Scheme)
	}
	if u.User != nil {
		return ref, fieldErr("image_url", "must not carry credentials; the worker uses its own")
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(raw, "#") {
		return ref, fieldErr("image_url", "must not have a query string or fragment")
	}
	if u.Hostname() == "" {
		return ref, fieldErr("image_url", "has no host")
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return ref, fieldErr("image_url", "port %q is not a port number (1-65535)", port)
	}
	if host := strings.ToLower(u.Hostname()); !validHostName(host) {
		return ref, fieldErr("image_url", "host %q is neither an IP address nor a DNS name", host)
	}
	p := strings.TrimPrefix(u.EscapedPath(), "/")
	bucket, object, ok := strings.Cut(p, "/")
	if !ok || bucket == "" || object == "" || strings.HasSuffix(object, "/") {
		return ref, fieldErr("image_url", "must name an object as <scheme>://<endpoint>/<bucket>/<object>")
	}
	if !bucketRE.MatchString(bucket) || strings.Contains(bucket, "..") {
		return ref, fieldErr("image_url", "bucket %q is not a valid bucket name (3-63 lower-case letters, digits, '.' and '-')", bucket)
	}
	if object, err = url.PathUnescape(object); err != nil {
		return ref, fieldErr("image_url", "has a bad escape in its path")
	}
	for _, seg := range strings.Split(object, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return ref, fieldErr("image_url", "must not contain empty, '.' or '..' path segments")
		}
	}
	ref = ImageRef{URL: raw, Secure: u.Scheme == "https", Endpoint: net.JoinHostPort(strings.ToLower(u.Hostname()), port), Bucket: bucket, Object: object}
	return ref, nil
}

var bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

// ValidateImageURL reports whether raw is a well-formed image URL.
func ValidateImageURL(raw string) error {
	_, err := ParseImageURL(raw)
	return err
}

// NormalizeEndpoint turns a configured endpoint (host, host:port, [v6]:port,
// optionally with a scheme, which then decides the default port) into the
// host:port form ParseImageURL gives.
func NormalizeEndpoint(endpoint string, secure bool) string {
	endpoint = strings.ToLower(strings.TrimSpace(endpoint))
	if rest, ok := strings.CutPrefix(endpoint, "https://"); ok {
		endpoint, secure = rest, true
	} else if rest, ok := strings.CutPrefix(endpoint, "http://"); ok {
		endpoint, secure = rest, false
	}
	endpoint = strings.TrimSuffix(endpoint, "/")
	if host, port, err := net.SplitHostPort(endpoint); err == nil {
		return net.JoinHostPort(host, port)
	}
	port := "80"
	if secure {
		port = "443"
	}
	return net.JoinHostPort(strings.Trim(endpoint, "[]"), port)
}

// metadataHosts are cloud instance-metadata endpoints.
var metadataHosts = map[string]bool{
	"169.254.169.254": true, "fd00:ec2::254": true, "100.100.100.200": true,
	"metadata.google.internal": true, "metadata": true,
}

// RestrictedHost reports whether host (a name or an IP literal, without a
// port) is a loopback, link-local, unspecified, multicast or cloud metadata
// address, which an image URL may name only when an operator configured it
// as an object store endpoint.
func RestrictedHost(host string) bool {
	host = strings.ToLower(strings.Trim(host, "[]"))
	if host == "localhost" || strings.HasSuffix(host, ".localhost") || metadataHosts[host] {
		return true
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return false
	}
	return ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsUnspecified() ||
		ip.IsMulticast() || ip.IsInterfaceLocalMulticast() || metadataHosts[ip.String()]
}

var dnsNameRE = regexp.MustCompile(`^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?$`)

// validHostName accepts IP addresses and DNS names.
func validHostName(host string) bool {
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	return len(host) <= 253 && dnsNameRE.MatchString(host)
}
