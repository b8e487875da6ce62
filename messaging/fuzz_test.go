package messaging_test

// Fuzz targets for the job message decoder and the field checks every job
// passes before a worker acts on it. Run one with, for example:
//
//	go test -run '^$' -fuzz '^FuzzDecodeJob$' -fuzztime 60s ./messaging
//
// Without -fuzz, `go test ./messaging` runs the seeds below and the corpus
// under testdata/fuzz/<FuzzName>/.

import (
	"encoding/json"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// canonicalUUID is the lower-case canonical UUID form Validate demands.
var canonicalUUID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// s3Bucket is the S3 bucket naming rule (3-63 of lower-case letters, digits,
// '.' and '-', starting and ending with a letter or digit, no "..").
var s3Bucket = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

var jobSeeds = []string{
	// valid
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","hypervisor":"hv-01","image_url":"http://minio:9000/images/ubuntu.qcow2","volume_name":"vm-1","volume_size_gb":10}`,
	`{"version":1,"kind":"provision","job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"https://minio.example.com/images/dir/ubuntu-24.04.raw","image_type":"RAW","volume_name":"vm_1.root","volume_size_gb":65536,"correlation_id":"abc"}`,
	`{"kind":"cache_fetch","job_id":"550e8400-e29b-41d4-a716-446655440000","hypervisor":"hv-01","image_url":"http://[::1]:9000/images/a.qcow2"}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/ubuntu.qcow2","volume_name":"vm-1","volume_size_gb":1,"caller":"cert:ops","submitted_at":"2024-01-02T03:04:05Z"}`,
	// invalid
	``,
	`null`,
	`[]`,
	`{}`,
	`{"job_id":"550E8400-E29B-41D4-A716-446655440000","image_url":"http://minio:9000/images/ubuntu.qcow2","volume_name":"vm-1","volume_size_gb":10}`,
	`{"job_id":"urn:uuid:550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/ubuntu.qcow2","volume_name":"vm-1","volume_size_gb":10}`,
	`{"job_id":"{550e8400-e29b-41d4-a716-446655440000}","image_url":"http://minio:9000/images/ubuntu.qcow2","volume_name":"vm-1","volume_size_gb":10}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://u:p@minio:9000/images/x.qcow2","volume_name":"vm-1","volume_size_gb":10}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/../x.qcow2","volume_name":"vm-1","volume_size_gb":10}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/x.qcow2?X-Amz-Signature=1","volume_name":"vm-1","volume_size_gb":10}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"file:///etc/shadow","volume_name":"vm-1","volume_size_gb":10}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/x.qcow2","volume_name":"../etc/passwd","volume_size_gb":10}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/x.qcow2","volume_name":"-rf","volume_size_gb":10}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/x.qcow2","volume_name":"vm-1","volume_size_gb":65537}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/x.qcow2","volume_name":"vm-1","volume_size_gb":-1}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/x.qcow2","volume_name":"vm-1","volume_size_gb":1.5}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/x.qcow2","volume_name":"vm-1","volume_size_gb":"10"}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/x.qcow2","volume_name":"vm-1","volume_size_gb":10,"extra":1}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/x.qcow2","volume_name":"vm-1","volume_size_gb":10} {}`,
	`{"kind":"cache_fetch","job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/x.qcow2","volume_name":"vm-1"}`,
	`{"kind":"delete","job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/x.qcow2","volume_name":"vm-1","volume_size_gb":10}`,
	`{"version":2,"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/x.qcow2","volume_name":"vm-1","volume_size_gb":10}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","hypervisor":"HV_01","image_url":"http://minio:9000/images/x.qcow2","volume_name":"vm-1","volume_size_gb":10}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/x.qcow2","image_type":"vmdk","volume_name":"vm-1","volume_size_gb":10}`,
	`{"JOB_ID":"550e8400-e29b-41d4-a716-446655440000","Image_URL":"http://minio:9000/images/x.qcow2","volume_name":"vm-1","volume_name":"vm-2","volume_size_gb":10}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/x.qcow2","volume_name":"snapshot1","volume_size_gb":10}`,
	`{"job_id":"550e8400-e29b-41d4-a716-446655440000","image_url":"http://minio:9000/images/x.qcow2","volume_name":"vm\u0000","volume_size_gb":10}`,
	"{\"job_id\":\"550e8400-e29b-41d4-a716-446655440000\",\"correlation_id\":\"\xff\xfe\"}",
}

// FuzzDecodeJob feeds arbitrary bytes through what a worker does with a job
// message: DecodeJob, Normalize, Validate. Nothing may panic, and a job that
// validates must satisfy every rule the worker relies on afterwards.
func FuzzDecodeJob(f *testing.F) {
	for _, s := range jobSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := messaging.DecodeJob(data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("DecodeJob returned an empty error message")
			}
			return
		}
		if len(data) > messaging.MaxJobMessageBytes {
			t.Fatalf("DecodeJob accepted %d bytes, more than MaxJobMessageBytes", len(data))
		}
		j.Normalize()
		if err := j.Validate(); err != nil {
			return
		}
		checkValidJob(t, j)

		// A validated job survives the trip through JSON unchanged: what the
		// API publishes is what the worker validates.
		out, err := json.Marshal(j)
		if err != nil {
			t.Fatalf("marshal a valid job: %v", err)
		}
		j2, err := messaging.DecodeJob(out)
		if err != nil {
			t.Fatalf("re-decode %s: %v", out, err)
		}
		j2.Normalize()
		if err := j2.Validate(); err != nil {
			t.Fatalf("re-encoded valid job %s no longer validates: %v", out, err)
		}
		if !j2.SubmittedAt.Equal(j.SubmittedAt) {
			t.Fatalf("submitted_at changed in the round trip: %v -> %v", j.SubmittedAt, j2.SubmittedAt)
		}
		j2.SubmittedAt = j.SubmittedAt
		if j2 != j {
			t.Fatalf("round trip changed the job:\n%#v\n%#v", j, j2)
		}
	})
}

func checkValidJob(t *testing.T, j messaging.Job) {
	t.Helper()
	if j.Version != messaging.JobVersion {
		t.Fatalf("valid job has version %d", j.Version)
	}
	if !canonicalUUID.MatchString(j.JobID) {
		t.Fatalf("valid job has a non-canonical job_id %q", j.JobID)
	}
	if u, err := uuid.Parse(j.JobID); err != nil || u.String() != j.JobID {
		t.Fatalf("valid job_id %q does not round-trip through uuid", j.JobID)
	}
	if j.Hypervisor != "" && !messaging.ValidHost(j.Hypervisor) {
		t.Fatalf("valid job has a bad hypervisor %q", j.Hypervisor)
	}
	if j.ImageType != messaging.ImageQCOW2 && j.ImageType != messaging.ImageRaw {
		t.Fatalf("valid job has image_type %q", j.ImageType)
	}
	if len(j.CorrelationID) > messaging.MaxCorrelationIDLen {
		t.Fatalf("valid job has a %d-byte correlation_id", len(j.CorrelationID))
	}
	ref, err := messaging.ParseImageURL(j.ImageURL)
	if err != nil {
		t.Fatalf("valid job's image_url %q does not parse: %v", j.ImageURL, err)
	}
	checkImageRef(t, j.ImageURL, ref)
	switch j.Kind {
	case messaging.KindProvision:
		if err := messaging.ValidateVolumeName(j.VolumeName); err != nil {
			t.Fatalf("valid provision job has a bad volume_name %q: %v", j.VolumeName, err)
		}
		checkVolumeName(t, j.VolumeName)
		if j.VolumeSizeGB < 1 || j.VolumeSizeGB > messaging.MaxVolumeSizeGB {
			t.Fatalf("valid provision job has volume_size_gb %d", j.VolumeSizeGB)
		}
		if b := j.VolumeSizeBytes(); b <= 0 || b > int64(messaging.MaxVolumeSizeGB)<<30 {
			t.Fatalf("VolumeSizeBytes %d out of range", b)
		}
	case messaging.KindCacheFetch:
		if j.VolumeName != "" || j.VolumeSizeGB != 0 {
			t.Fatalf("valid cache_fetch job carries a volume: %q %d", j.VolumeName, j.VolumeSizeGB)
		}
	default:
		t.Fatalf("valid job has kind %q", j.Kind)
	}
}

var urlSeeds = []string{
	"http://minio:9000/images/ubuntu.qcow2",
	"https://minio.example.com/images/a/b/c.raw",
	"http://MINIO:9000/images/x",
	"http://[::1]:9000/images/x",
	"http://[fe80::1%25eth0]:9000/images/x",
	"http://10.0.0.1/images/x%20y",
	"http://minio:9000/images/a%2Fb",
	"http://minio:9000/images/a%2F..%2Fb",
	"http://minio:9000/images/a//b",
	"http://minio:9000/images/./b",
	"http://minio:9000/images/",
	"http://minio:9000/images",
	"http://minio:9000//x",
	"http://minio:9000/Images/x",
	"http://minio:9000/a..b/x",
	"http://minio:9000/ab/x",
	"http://user:pass@minio:9000/images/x",
	"http://minio:9000/images/x?versionId=1",
	"http://minio:9000/images/x?",
	"http://minio:9000/images/x#frag",
	"ftp://minio/images/x",
	"file:///etc/passwd",
	"http:///images/x",
	"http://minio:abc/images/x",
	"http://minio:9000/images/x%zz",
	"//minio/images/x",
	"",
	"http://" + strings.Repeat("a", 2100) + "/images/x",
}

// FuzzParseImageURL checks that every URL ParseImageURL accepts is one a
// worker can hand to MinIO without surprises.
func FuzzParseImageURL(f *testing.F) {
	for _, s := range urlSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		ref, err := messaging.ParseImageURL(raw)
		if err != nil {
			if ve := messaging.ValidateImageURL(raw); ve == nil {
				t.Fatalf("ValidateImageURL accepts %q that ParseImageURL refuses", raw)
			}
			return
		}
		if messaging.ValidateImageURL(raw) != nil {
			t.Fatalf("ValidateImageURL refuses %q that ParseImageURL accepts", raw)
		}
		checkImageRef(t, raw, ref)
		// Parsing is deterministic and idempotent.
		again, err := messaging.ParseImageURL(ref.URL)
		if err != nil || again != ref {
			t.Fatalf("parsing %q again gave %#v, %v; first %#v", ref.URL, again, err, ref)
		}
	})
}

func checkImageRef(t *testing.T, raw string, ref messaging.ImageRef) {
	t.Helper()
	if len(raw) > messaging.MaxURLLen {
		t.Fatalf("accepted a %d-byte URL", len(raw))
	}
	if ref.URL != raw {
		t.Fatalf("ref.URL %q is not the input %q", ref.URL, raw)
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	scheme = strings.ToLower(scheme) // schemes are case-insensitive
	if !ok || (scheme != "http" && scheme != "https") {
		t.Fatalf("accepted %q whose scheme is not http or https", raw)
	}
	if ref.Secure != (scheme == "https") {
		t.Fatalf("Secure=%v for scheme %q", ref.Secure, scheme)
	}
	authority, _, _ := strings.Cut(rest, "/")
	if strings.Contains(authority, "@") {
		t.Fatalf("accepted user info in %q", raw)
	}
	if strings.Contains(raw, "?") {
		t.Fatalf("accepted a query in %q", raw)
	}
	if strings.Contains(raw, "#") {
		t.Fatalf("accepted a fragment in %q", raw)
	}
	if !s3Bucket.MatchString(ref.Bucket) || strings.Contains(ref.Bucket, "..") {
		t.Fatalf("accepted bucket %q of %q", ref.Bucket, raw)
	}
	if ref.Object == "" {
		t.Fatalf("accepted an empty object in %q", raw)
	}
	for _, seg := range strings.Split(ref.Object, "/") {
		if seg == "" || seg == "." || seg == ".." {
			t.Fatalf("object %q of %q has segment %q", ref.Object, raw, seg)
		}
	}
	if reason := badEndpointHost(ref.Endpoint); reason != "" {
		t.Fatalf("ParseImageURL accepted %q: %s", raw, reason)
	}
	host, port, err := net.SplitHostPort(ref.Endpoint)
	if err != nil {
		t.Fatalf("endpoint %q of %q is not host:port: %v", ref.Endpoint, raw, err)
	}
	if host == "" || port == "" {
		t.Fatalf("endpoint %q of %q lacks a host or port", ref.Endpoint, raw)
	}
	for _, c := range port {
		if c < '0' || c > '9' {
			t.Fatalf("endpoint %q of %q has a non-numeric port", ref.Endpoint, raw)
		}
	}
	if host != strings.ToLower(host) {
		t.Fatalf("endpoint %q of %q is not lower case", ref.Endpoint, raw)
	}
	if strings.ContainsAny(host, "/@?#\\ \t\r\n") {
		t.Fatalf("endpoint host %q of %q holds a URL delimiter or space", host, raw)
	}
	// The API compares ref.Endpoint with configured endpoints normalized by
	// NormalizeEndpoint; an endpoint must already be in that form.
	if n := messaging.NormalizeEndpoint(ref.Endpoint, ref.Secure); n != ref.Endpoint {
		t.Fatalf("endpoint %q of %q normalizes to %q", ref.Endpoint, raw, n)
	}
}

var volumeNameSeeds = []string{
	"vm-1", "vm_1.root", "a", ".", "..", "...", ".hidden", "-rf", "a/b", "../x", "snapshot", "snapshot-1", "pvmove0",
	"vm_tmeta", "vm_rimage_0", "x\x00", "vm 1", "vm\n1", "é", strings.Repeat("a", 127), strings.Repeat("a", 128), "",
}

// FuzzValidateVolumeName: a name ValidateVolumeName accepts is safe as a
// file name in the volume directory, an LV name and a libvirt volume name.
func FuzzValidateVolumeName(f *testing.F) {
	for _, s := range volumeNameSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if err := messaging.ValidateVolumeName(name); err != nil {
			return
		}
		checkVolumeName(t, name)
	})
}

func checkVolumeName(t *testing.T, name string) {
	t.Helper()
	switch {
	case name == "":
		t.Fatal("accepted an empty volume name")
	case len(name) > messaging.MaxVolumeNameLen:
		t.Fatalf("accepted a %d-byte volume name", len(name))
	case name == "." || name == "..":
		t.Fatalf("accepted volume name %q", name)
	case strings.HasPrefix(name, "-"):
		t.Fatalf("accepted volume name %q with a leading '-'", name)
	case strings.ContainsAny(name, "/\\\x00"):
		t.Fatalf("accepted volume name %q with a path separator or NUL", name)
	case strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".") || strings.Contains(name, ".."):
		t.Fatalf("accepted volume name %q, which makes a KV key with an empty token", name)
	}
	for _, c := range []byte(name) {
		if c <= ' ' || c >= 0x7f {
			t.Fatalf("accepted volume name %q with byte %#x", name, c)
		}
	}
}

// hostName is a DNS name (labels of letters, digits, '-' and '_', dots
// between them, an optional final dot), lower case as ParseImageURL gives it.
var hostName = regexp.MustCompile(`^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?$`)

// badEndpointHost says what is wrong with an endpoint that is not
// <host name or IP address>:<port 1..65535>, or "" when nothing is.
func badEndpointHost(endpoint string) string {
	host, port, err := net.SplitHostPort(endpoint)
	if err != nil {
		return "the endpoint " + strconv.Quote(endpoint) + " is not host:port: " + err.Error()
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "port " + strconv.Quote(port) + " is not 1..65535"
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return ""
	}
	if len(host) > 253 || !hostName.MatchString(host) {
		return "host " + strconv.Quote(host) + " is neither a host name nor an IP address"
	}
	return ""
}
