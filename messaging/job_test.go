package messaging_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

const (
	testJobID    = "550e8400-e29b-41d4-a716-446655440000"
	testImageURL = "http://minio:9000/images/ubuntu.qcow2"
)

// validJob is a normalized provision job that passes Validate.
func validJob() messaging.Job {
	return messaging.Job{
		Version:      messaging.JobVersion,
		Kind:         messaging.KindProvision,
		JobID:        testJobID,
		Hypervisor:   "hv-01",
		ImageURL:     testImageURL,
		ImageType:    messaging.ImageQCOW2,
		VolumeName:   "vm-1",
		VolumeSizeGB: 10,
	}
}

func TestDecodeJobValid(t *testing.T) {
	t.Parallel()
	body := `{"version":1,"kind":"provision","job_id":"` + testJobID + `","hypervisor":"hv-01",` +
		`"image_url":"` + testImageURL + `","image_type":"raw","volume_name":"vm-1","volume_size_gb":20,` +
		`"correlation_id":"c-1","caller":"alice","submitted_at":"2024-05-01T10:00:00Z"}`
	j, err := messaging.DecodeJob([]byte(body))
	require.NoError(t, err)
	require.Equal(t, messaging.Job{
		Version: 1, Kind: "provision", JobID: testJobID, Hypervisor: "hv-01", ImageURL: testImageURL,
		ImageType: "raw", VolumeName: "vm-1", VolumeSizeGB: 20, CorrelationID: "c-1", Caller: "alice",
		SubmittedAt: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC),
	}, j)
}

func TestDecodeJobErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
		want string
	}{
		{
			name: "unknown field",
			body: `{"job_id":"x","colour":"red"}`,
			want: `job message is not valid JSON for a job: unknown field "colour"`,
		},
		{
			name: "wrong type",
			body: `{"job_id":"x","volume_size_gb":"10"}`,
			want: `job message is not valid JSON for a job: field "volume_size_gb" must be a whole number, not string`,
		},
		{
			name: "string field given a number",
			body: `{"job_id":5}`,
			want: `job message is not valid JSON for a job: field "job_id" must be a string, not number`,
		},
		{
			name: "not an object",
			body: `[1,2]`,
			want: `job message is not valid JSON for a job: the body must be a JSON object, not array`,
		},
		{
			name: "trailing object",
			body: `{"job_id":"x"} {"job_id":"y"}`,
			want: `job message has data after the JSON object`,
		},
		{
			name: "trailing garbage",
			body: `{"job_id":"x"} garbage`,
			want: `job message has data after the JSON object`,
		},
		{
			name: "truncated",
			body: `{"job_id":"x",`,
			want: `job message is not valid JSON for a job: malformed JSON: the body ends before the JSON object does`,
		},
		{
			name: "syntax error",
			body: `{"job_id":x}`,
			want: `job message is not valid JSON for a job: malformed JSON at byte 11: invalid character 'x' looking for beginning of value`,
		},
		{
			name: "empty",
			body: ``,
			want: `job message is not valid JSON for a job: the message is empty; send a JSON object`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := messaging.DecodeJob([]byte(tt.body))
			require.EqualError(t, err, tt.want)
		})
	}
}

func TestDecodeJobSizeLimit(t *testing.T) {
	t.Parallel()
	prefix := `{"job_id":"` + testJobID + `"}`

	atLimit := prefix + strings.Repeat(" ", messaging.MaxJobMessageBytes-len(prefix))
	require.Len(t, atLimit, 64*1024)
	j, err := messaging.DecodeJob([]byte(atLimit))
	require.NoError(t, err)
	require.Equal(t, testJobID, j.JobID)

	over := atLimit + " "
	_, err = messaging.DecodeJob([]byte(over))
	require.EqualError(t, err, "job message is 65537 bytes, more than the 65536 allowed")
}

func TestNormalize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   messaging.Job
		want messaging.Job
	}{
		{
			name: "defaults",
			in:   messaging.Job{},
			want: messaging.Job{Version: 1, Kind: messaging.KindProvision, ImageType: messaging.ImageQCOW2},
		},
		{
			name: "image type lowered",
			in:   messaging.Job{ImageType: "RAW"},
			want: messaging.Job{Version: 1, Kind: messaging.KindProvision, ImageType: messaging.ImageRaw},
		},
		{
			name: "set values kept",
			in:   messaging.Job{Version: 7, Kind: messaging.KindCacheFetch, ImageType: "qcow2"},
			want: messaging.Job{Version: 7, Kind: messaging.KindCacheFetch, ImageType: "qcow2"},
		},
		{
			name: "kind is not lowered",
			in:   messaging.Job{Kind: "Provision"},
			want: messaging.Job{Version: 1, Kind: "Provision", ImageType: messaging.ImageQCOW2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			j := tt.in
			j.Normalize()
			require.Equal(t, tt.want, j)
		})
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(*messaging.Job)
		field  string // empty when the job is valid
		want   string
	}{
		{name: "valid provision", mutate: func(*messaging.Job) {}},
		{name: "no hypervisor", mutate: func(j *messaging.Job) { j.Hypervisor = "" }},
		{name: "raw image", mutate: func(j *messaging.Job) { j.ImageType = messaging.ImageRaw }},
		{name: "full verification", mutate: func(j *messaging.Job) { j.Verify = messaging.VerifyFull }},
		{
			name: "verify unknown", mutate: func(j *messaging.Job) { j.Verify = "quick" },
			field: "verify", want: `verify: must be "full" or absent, not "quick"`,
		},
		{name: "size 1", mutate: func(j *messaging.Job) { j.VolumeSizeGB = 1 }},
		{name: "size 65536", mutate: func(j *messaging.Job) { j.VolumeSizeGB = 65536 }},
		{name: "correlation id 128", mutate: func(j *messaging.Job) { j.CorrelationID = strings.Repeat("c", 128) }},
		{name: "cache fetch without volume", mutate: func(j *messaging.Job) {
			j.Kind, j.VolumeName, j.VolumeSizeGB = messaging.KindCacheFetch, "", 0
		}},
		{
			name: "version 2", mutate: func(j *messaging.Job) { j.Version = 2 },
			field: "version", want: "version: unsupported job version 2 (this worker reads version 1)",
		},
		{
			name: "version 0 (not normalized)", mutate: func(j *messaging.Job) { j.Version = 0 },
			field: "version", want: "version: unsupported job version 0 (this worker reads version 1)",
		},
		{
			name: "job id empty", mutate: func(j *messaging.Job) { j.JobID = "" },
			field: "job_id", want: "job_id: must be a UUID in lower-case canonical form, such as 550e8400-e29b-41d4-a716-446655440000",
		},
		{
			name: "job id not a UUID", mutate: func(j *messaging.Job) { j.JobID = "job-1" },
			field: "job_id", want: "job_id: must be a UUID in lower-case canonical form, such as 550e8400-e29b-41d4-a716-446655440000",
		},
		{
			name: "job id without dashes", mutate: func(j *messaging.Job) { j.JobID = strings.ReplaceAll(testJobID, "-", "") },
			field: "job_id", want: "job_id: must be a UUID in lower-case canonical form, such as 550e8400-e29b-41d4-a716-446655440000",
		},
		{
			name: "job id in braces", mutate: func(j *messaging.Job) { j.JobID = "{" + testJobID + "}" },
			field: "job_id", want: "job_id: must be a UUID in lower-case canonical form, such as 550e8400-e29b-41d4-a716-446655440000",
		},
		{
			name: "job id as URN", mutate: func(j *messaging.Job) { j.JobID = "urn:uuid:" + testJobID },
			field: "job_id", want: "job_id: must be a UUID in lower-case canonical form, such as 550e8400-e29b-41d4-a716-446655440000",
		},
		{
			name: "hypervisor invalid", mutate: func(j *messaging.Job) { j.Hypervisor = "HV_01" },
			field: "hypervisor", want: `hypervisor: "HV_01" is not a host name (lower-case letters, digits and dashes, at most 63)`,
		},
		{
			name: "image url missing", mutate: func(j *messaging.Job) { j.ImageURL = "" },
			field: "image_url", want: "image_url: is required",
		},
		{
			name: "image type unknown", mutate: func(j *messaging.Job) { j.ImageType = "vmdk" },
			field: "image_type", want: `image_type: must be "qcow2" or "raw", not "vmdk"`,
		},
		{
			name: "image type upper case (not normalized)", mutate: func(j *messaging.Job) { j.ImageType = "QCOW2" },
			field: "image_type", want: `image_type: must be "qcow2" or "raw", not "QCOW2"`,
		},
		{
			name: "size 0", mutate: func(j *messaging.Job) { j.VolumeSizeGB = 0 },
			field: "volume_size_gb", want: "volume_size_gb: must be between 1 and 65536 (GiB), not 0",
		},
		{
			name: "size -1", mutate: func(j *messaging.Job) { j.VolumeSizeGB = -1 },
			field: "volume_size_gb", want: "volume_size_gb: must be between 1 and 65536 (GiB), not -1",
		},
		{
			name: "size 65537", mutate: func(j *messaging.Job) { j.VolumeSizeGB = 65537 },
			field: "volume_size_gb", want: "volume_size_gb: must be between 1 and 65536 (GiB), not 65537",
		},
		{
			name: "volume name missing", mutate: func(j *messaging.Job) { j.VolumeName = "" },
			field: "volume_name", want: "volume_name: is required",
		},
		{
			name: "correlation id too long", mutate: func(j *messaging.Job) { j.CorrelationID = strings.Repeat("c", 129) },
			field: "correlation_id", want: "correlation_id: is longer than 128 characters",
		},
		{
			name: "kind unknown", mutate: func(j *messaging.Job) { j.Kind = "delete" },
			field: "kind", want: `kind: must be "provision", "cache_fetch" or "content", not "delete"`,
		},
		{
			name: "cache fetch with volume name", mutate: func(j *messaging.Job) { j.Kind, j.VolumeSizeGB = messaging.KindCacheFetch, 0 },
			field: "volume_name", want: "volume_name: a cache_fetch job takes no volume",
		},
		{
			name: "cache fetch with volume size", mutate: func(j *messaging.Job) { j.Kind, j.VolumeName = messaging.KindCacheFetch, "" },
			field: "volume_name", want: "volume_name: a cache_fetch job takes no volume",
		},
		{
			name: "cache fetch with both", mutate: func(j *messaging.Job) { j.Kind = messaging.KindCacheFetch },
			field: "volume_name", want: "volume_name: a cache_fetch job takes no volume",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			j := validJob()
			tt.mutate(&j)
			err := j.Validate()
			if tt.field == "" {
				require.NoError(t, err)
				return
			}
			require.EqualError(t, err, tt.want)
			var fe *messaging.FieldError
			require.True(t, errors.As(err, &fe), "error %T is not a *FieldError", err)
			require.Equal(t, tt.field, fe.Field)
		})
	}
}

func TestVolumeSizeBytes(t *testing.T) {
	t.Parallel()
	for gb, want := range map[int64]int64{1: 1 << 30, 10: 10 << 30, messaging.MaxVolumeSizeGB: 1 << 46} {
		j := messaging.Job{VolumeSizeGB: gb}
		require.Equal(t, want, j.VolumeSizeBytes(), "volume_size_gb %d", gb)
	}
}

func TestValidateVolumeName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		want string // empty when valid
	}{
		{"vm-1", ""},
		{"a.b_c", ""},
		{"_x", ""},
		{".hidden", `volume_name: ".hidden" must not start or end with '.' or hold ".."`},
		{"a..b", `volume_name: "a..b" must not start or end with '.' or hold ".."`},
		{"a.", `volume_name: "a." must not start or end with '.' or hold ".."`},
		{"VM-Disk.0", ""},
		{"mysnapshot", ""},
		{strings.Repeat("a", 127), ""},
		{"", "volume_name: is required"},
		{".", `volume_name: "." is reserved`},
		{"..", `volume_name: ".." is reserved`},
		{"-x", "volume_name: must not start with '-'"},
		{"a/b", `volume_name: "a/b" may hold only letters, digits, '_', '.' and '-'`},
		{"a b", `volume_name: "a b" may hold only letters, digits, '_', '.' and '-'`},
		{"a+b", `volume_name: "a+b" may hold only letters, digits, '_', '.' and '-'`},
		{"vm\n", `volume_name: "vm\n" may hold only letters, digits, '_', '.' and '-'`},
		{"snapshot1", `volume_name: "snapshot1" starts with a prefix LVM reserves (snapshot, pvmove)`},
		{"pvmove0", `volume_name: "pvmove0" starts with a prefix LVM reserves (snapshot, pvmove)`},
		{"x_tdata", `volume_name: "x_tdata" contains "_tdata", which LVM reserves`},
		{"x_rimage_1", `volume_name: "x_rimage_1" contains "_rimage", which LVM reserves`},
		{"a_cmeta.b", `volume_name: "a_cmeta.b" contains "_cmeta", which LVM reserves`},
		{strings.Repeat("a", 128), "volume_name: is 128 characters, more than the 127 allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := messaging.ValidateVolumeName(tt.name)
			if tt.want == "" {
				require.NoError(t, err)
				return
			}
			require.EqualError(t, err, tt.want)
			var fe *messaging.FieldError
			require.ErrorAs(t, err, &fe)
			require.Equal(t, "volume_name", fe.Field)
		})
	}
}

func TestParseImageURLValid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		url  string
		want messaging.ImageRef
	}{
		{
			name: "http default port",
			url:  "http://minio/images/u.qcow2",
			want: messaging.ImageRef{Endpoint: "minio:80", Bucket: "images", Object: "u.qcow2"},
		},
		{
			name: "https default port",
			url:  "https://minio/images/u.qcow2",
			want: messaging.ImageRef{Secure: true, Endpoint: "minio:443", Bucket: "images", Object: "u.qcow2"},
		},
		{
			name: "explicit port",
			url:  "http://minio:9000/images/u.qcow2",
			want: messaging.ImageRef{Endpoint: "minio:9000", Bucket: "images", Object: "u.qcow2"},
		},
		{
			name: "empty port takes the default",
			url:  "https://minio:/images/u.qcow2",
			want: messaging.ImageRef{Secure: true, Endpoint: "minio:443", Bucket: "images", Object: "u.qcow2"},
		},
		{
			name: "upper-case host lowered, path case kept",
			url:  "HTTPS://MinIO.Example.COM:9443/images/U.qcow2",
			want: messaging.ImageRef{Secure: true, Endpoint: "minio.example.com:9443", Bucket: "images", Object: "U.qcow2"},
		},
		{
			name: "nested object",
			url:  "http://minio:9000/images/a/b/c.qcow2",
			want: messaging.ImageRef{Endpoint: "minio:9000", Bucket: "images", Object: "a/b/c.qcow2"},
		},
		{
			name: "escaped object",
			url:  "http://minio:9000/images/my%20image.qcow2",
			want: messaging.ImageRef{Endpoint: "minio:9000", Bucket: "images", Object: "my image.qcow2"},
		},
		{
			name: "dots inside a segment",
			url:  "http://minio:9000/images/a..b/.c",
			want: messaging.ImageRef{Endpoint: "minio:9000", Bucket: "images", Object: "a..b/.c"},
		},
		{
			name: "ipv4 host",
			url:  "http://10.0.0.1:9000/images/u.raw",
			want: messaging.ImageRef{Endpoint: "10.0.0.1:9000", Bucket: "images", Object: "u.raw"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ref, err := messaging.ParseImageURL(tt.url)
			require.NoError(t, err)
			want := tt.want
			want.URL = tt.url
			require.Equal(t, want, ref)
			require.NoError(t, messaging.ValidateImageURL(tt.url))
		})
	}
}

func TestParseImageURLInvalid(t *testing.T) {
	t.Parallel()
	const noObject = "image_url: must name an object as <scheme>://<endpoint>/<bucket>/<object>"
	tests := []struct {
		name string
		url  string
		want string
	}{
		{"empty", "", "image_url: is required"},
		{"too long", "http://minio/images/" + strings.Repeat("a", 2048-len("http://minio/images/")+1), "image_url: is longer than 2048 characters"},
		{"file scheme", "file:///images/u.qcow2", `image_url: scheme must be http or https, not "file"`},
		{"ftp scheme", "ftp://minio/images/u.qcow2", `image_url: scheme must be http or https, not "ftp"`},
		{"s3 scheme", "s3://images/u.qcow2", `image_url: scheme must be http or https, not "s3"`},
		{"no scheme", "/images/u.qcow2", `image_url: scheme must be http or https, not ""`},
		{"credentials", "http://user:pass@minio/images/u.qcow2", "image_url: must not carry credentials; the worker uses its own"},
		{"user only", "http://user@minio/images/u.qcow2", "image_url: must not carry credentials; the worker uses its own"},
		{"query", "http://minio/images/u.qcow2?version=2", "image_url: must not have a query string or fragment"},
		{"empty query", "http://minio/images/u.qcow2?", "image_url: must not have a query string or fragment"},
		{"fragment", "http://minio/images/u.qcow2#frag", "image_url: must not have a query string or fragment"},
		{"no host", "http:///images/u.qcow2", "image_url: has no host"},
		{"port but no host", "http://:9000/images/u.qcow2", "image_url: has no host"},
		{"no path", "http://minio", noObject},
		{"root path", "http://minio/", noObject},
		{"bucket only", "http://minio/images", noObject},
		{"bucket with slash", "http://minio/images/", noObject},
		{"empty bucket", "http://minio//u.qcow2", noObject},
		{"trailing slash", "http://minio/images/dir/", noObject},
		{"dot-dot segment", "http://minio/images/a/../u.qcow2", "image_url: must not contain empty, '.' or '..' path segments"},
		{"dot segment", "http://minio/images/./u.qcow2", "image_url: must not contain empty, '.' or '..' path segments"},
		{"dot-dot object", "http://minio/images/..", "image_url: must not contain empty, '.' or '..' path segments"},
		{"escaped dot-dot", "http://minio/images/%2E%2E/u.qcow2", "image_url: must not contain empty, '.' or '..' path segments"},
		{"escaped slash dot-dot", "http://minio/images/a%2F..%2Fb", "image_url: must not contain empty, '.' or '..' path segments"},
		{"bad escape", "http://minio/images/%zz", `image_url: is not a URL: parse "http://minio/images/%zz": invalid URL escape "%zz"`},
		{"bad port", "http://minio:port/images/u", `image_url: is not a URL: parse "http://minio:port/images/u": invalid port ":port" after host`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ref, err := messaging.ParseImageURL(tt.url)
			require.EqualError(t, err, tt.want)
			require.Equal(t, messaging.ImageRef{}, ref)
			var fe *messaging.FieldError
			require.ErrorAs(t, err, &fe)
			require.Equal(t, "image_url", fe.Field)
			require.EqualError(t, messaging.ValidateImageURL(tt.url), tt.want)
		})
	}
}

func TestParseImageURLLengthLimit(t *testing.T) {
	t.Parallel()
	prefix := "http://minio/images/"
	atLimit := prefix + strings.Repeat("a", messaging.MaxURLLen-len(prefix))
	require.Len(t, atLimit, 2048)
	ref, err := messaging.ParseImageURL(atLimit)
	require.NoError(t, err)
	require.Len(t, ref.Object, 2048-len(prefix))
}

func TestNormalizeEndpoint(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in     string
		secure bool
		want   string
	}{
		{"minio", false, "minio:80"},
		{"minio", true, "minio:443"},
		{"minio:9000", false, "minio:9000"},
		{"minio:9000", true, "minio:9000"},
		{"  MinIO.Example.COM:9000  ", false, "minio.example.com:9000"},
		{"http://minio:9000", false, "minio:9000"},
		{"https://minio", true, "minio:443"},
		{"HTTPS://MINIO/", true, "minio:443"},
		{"minio:9000/", false, "minio:9000"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, messaging.NormalizeEndpoint(tt.in, tt.secure))
		})
	}
}

// The worker and the API compare an image URL's endpoint with the configured
// one, so the two forms must agree.
func TestNormalizeEndpointMatchesImageRef(t *testing.T) {
	t.Parallel()
	tests := []struct {
		configured string
		secure     bool
		url        string
	}{
		{"minio", false, "http://minio/images/u.qcow2"},
		{"MinIO:9000", false, "http://minio:9000/images/u.qcow2"},
		{"minio.example.com", true, "https://MINIO.example.com/images/u.qcow2"},
		{"minio.example.com:443", true, "https://minio.example.com/images/u.qcow2"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			t.Parallel()
			ref, err := messaging.ParseImageURL(tt.url)
			require.NoError(t, err)
			require.Equal(t, messaging.NormalizeEndpoint(tt.configured, tt.secure), ref.Endpoint)
		})
	}
}

func TestParseImageURLBucketAndIPv6(t *testing.T) {
	t.Parallel()
	ref, err := messaging.ParseImageURL("http://[::1]:9000/images/u.qcow2")
	require.NoError(t, err)
	require.Equal(t, "[::1]:9000", ref.Endpoint)
	require.Equal(t, ref.Endpoint, messaging.NormalizeEndpoint("[::1]:9000", false))
	require.Equal(t, "[::1]:443", messaging.NormalizeEndpoint("[::1]", true))
	require.Equal(t, "minio:443", messaging.NormalizeEndpoint("https://minio", false))
	require.Equal(t, "minio:80", messaging.NormalizeEndpoint("http://minio/", true))
	for _, bad := range []string{"http://minio/../u.qcow2", "http://minio/b%2Fx/u.qcow2", "http://minio/Images/u.qcow2", "http://minio/ab/u.qcow2"} {
		_, err := messaging.ParseImageURL(bad)
		require.ErrorContains(t, err, "is not a valid bucket name", bad)
	}
	_, err = messaging.ParseImageURL("http://minio/images//u.qcow2")
	require.EqualError(t, err, "image_url: must not contain empty, '.' or '..' path segments")
}

func TestDecodeStrictTrailingBrackets(t *testing.T) {
	t.Parallel()
	for _, body := range []string{`{"job_id":"x"}}`, `{"job_id":"x"}]]]`, `{"job_id":"x"} {}`} {
		_, err := messaging.DecodeJob([]byte(body))
		require.EqualError(t, err, "job message has data after the JSON object", body)
	}
	_, err := messaging.DecodeJob([]byte(`{"volume_size_gb":1.5}`))
	require.EqualError(t, err, `job message is not valid JSON for a job: field "volume_size_gb" must be a whole number, not the fraction 1.5`)
}

func TestRestrictedHost(t *testing.T) {
	t.Parallel()
	for _, h := range []string{"localhost", "a.localhost", "127.0.0.1", "127.9.9.9", "[::1]", "::1", "169.254.169.254", "169.254.1.1", "fe80::1", "0.0.0.0", "::", "224.0.0.1", "fd00:ec2::254", "metadata.google.internal", "100.100.100.200"} {
		require.True(t, messaging.RestrictedHost(h), h)
	}
	for _, h := range []string{"minio.internal", "10.0.0.5", "192.168.1.10", "2001:db8::1", "example.com"} {
		require.False(t, messaging.RestrictedHost(h), h)
	}
	ref, err := messaging.ParseImageURL("http://[::1]:9000/images/x.qcow2")
	require.NoError(t, err)
	require.Equal(t, "::1", ref.Host())
}
