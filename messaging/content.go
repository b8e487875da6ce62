package messaging

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// KindContent streams content uploaded through the API (kept in the host's
// content bucket, an Object Store) into a volume.
const KindContent = "content"

// Limits of cloud-init data and uploaded content.
const (
	// MaxCloudInitFieldBytes caps each cloud-init document.
	MaxCloudInitFieldBytes = 32 << 10
	// MaxCloudInitBytes caps the cloud-init documents together (they travel
	// in the job message, itself capped at MaxJobMessageBytes).
	MaxCloudInitBytes = 48 << 10
	// DefaultMaxContentBytes is the default cap of an uploaded body.
	DefaultMaxContentBytes = 1 << 30
	// SeedSuffix names a job's seed volume by default: <volume_name>-seed.
	SeedSuffix = "-seed"
)

// ContentBucketPrefix starts the name of every host's content bucket (a
// JetStream Object Store): <prefix><host>, stream OBJ_<prefix><host>. A
// bucket of its own per host is what lets NATS permissions confine a
// worker's reads to its own host's uploads: an Object Store's subjects
// carry neither the host nor the object's name in a form a permission can
// match, while its stream's name appears in every JetStream API subject.
const ContentBucketPrefix = "provisioner_content_"

// ContentBucket is host's content bucket.
func ContentBucket(host string) string { return ContentBucketPrefix + host }

// ContentStream is the stream behind host's content bucket.
func ContentStream(host string) string { return "OBJ_" + ContentBucket(host) }

// ContentObject is the object name of a job's upload in its host's bucket.
func ContentObject(jobID string) string { return jobID }

// CloudInit is a job's NoCloud data: the worker builds a seed ISO 9660 image
// (volume label cidata) holding these documents and writes it into the
// job's seed volume.
type CloudInit struct {
	// UserData is the user-data document (#cloud-config, a script, …).
	UserData string `json:"user_data,omitempty"`
	// MetaData is the meta-data document; empty means
	// "instance-id: <job_id>", so every provisioning is a new instance to
	// cloud-init and its new user-data runs.
	MetaData string `json:"meta_data,omitempty"`
	// NetworkConfig is the network-config document; empty leaves it out.
	NetworkConfig string `json:"network_config,omitempty"`
	// VendorData is the vendor-data document; empty leaves it out.
	VendorData string `json:"vendor_data,omitempty"`
	// VolumeName names the seed volume; empty means <volume_name>-seed.
	VolumeName string `json:"volume_name,omitempty"`
}

// cloudInitFields are CloudInit's JSON fields, for errors naming them.
var cloudInitFields = map[string]bool{"user_data": true, "meta_data": true, "network_config": true, "vendor_data": true, "volume_name": true}

// UnmarshalJSON decodes strictly and names the field at fault
// (cloud_init.<field>): unknown fields, non-strings and text that is not
// UTF-8 (encoding/json would quietly replace it) are errors.
func (c *CloudInit) UnmarshalJSON(data []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return fieldErr("cloud_init", "must be a JSON object of strings")
	}
	for k, v := range raw {
		field := "cloud_init." + k
		switch {
		case !cloudInitFields[k]:
			return fieldErr(field, "unknown field (known: user_data, meta_data, network_config, vendor_data, volume_name)")
		case !utf8.Valid(v) || loneSurrogate(v):
			return fieldErr(field, "is not valid UTF-8 text")
		case len(v) == 0 || (v[0] != '"' && !bytes.Equal(v, []byte("null"))):
			return fieldErr(field, "must be a string")
		}
	}
	type plain CloudInit
	var p plain
	if err := json.Unmarshal(data, &p); err != nil {
		return fieldErr("cloud_init", "%v", DescribeJSONError(err))
	}
	*c = CloudInit(p)
	return nil
}

// surrogateRE finds \uD800–\uDFFF escapes; encoding/json turns one without
// its pair into U+FFFD.
var surrogateRE = regexp.MustCompile(`\\u[dD][89a-fA-F][0-9a-fA-F]{2}`)

// loneSurrogate reports whether a JSON string holds a surrogate escape that
// is not half of a pair.
func loneSurrogate(raw []byte) bool {
	locs := surrogateRE.FindAllIndex(raw, -1)
	for i := 0; i < len(locs); i++ {
		if lowSurrogate(raw, locs[i]) {
			return true
		}
		if i+1 == len(locs) || locs[i+1][0] != locs[i][1] || !lowSurrogate(raw, locs[i+1]) {
			return true
		}
		i++ // the pair's low half
	}
	return false
}

func lowSurrogate(raw []byte, loc []int) bool {
	return strings.IndexByte("cdefCDEF", raw[loc[0]+3]) >= 0
}

// SeedVolume is the seed volume's name for a job whose volume is volume.
func (c *CloudInit) SeedVolume(volume string) string {
	if c.VolumeName != "" {
		return c.VolumeName
	}
	return volume + SeedSuffix
}

// Documents are the seed's files, name to content, with the default
// meta-data filled in for jobID.
func (c *CloudInit) Documents(jobID string) map[string]string {
	meta := c.MetaData
	if meta == "" {
		meta = "instance-id: " + jobID + "\n"
	}
	docs := map[string]string{"user-data": c.UserData, "meta-data": meta}
	if c.NetworkConfig != "" {
		docs["network-config"] = c.NetworkConfig
	}
	if c.VendorData != "" {
		docs["vendor-data"] = c.VendorData
	}
	return docs
}

// Validate checks the documents' sizes and the seed volume's name against
// the job's volume.
func (c *CloudInit) Validate(volume string) error {
	total := 0
	for _, f := range []struct{ name, v string }{{"user_data", c.UserData}, {"meta_data", c.MetaData},
		{"network_config", c.NetworkConfig}, {"vendor_data", c.VendorData}} {
		if len(f.v) > MaxCloudInitFieldBytes {
			return fieldErr("cloud_init."+f.name, "is %d bytes, more than the %d allowed", len(f.v), MaxCloudInitFieldBytes)
		}
		if !utf8.ValidString(f.v) {
			return fieldErr("cloud_init."+f.name, "is not valid UTF-8 text")
		}
		total += len(f.v)
	}
	if total > MaxCloudInitBytes {
		return fieldErr("cloud_init", "its documents are %d bytes together, more than the %d allowed", total, MaxCloudInitBytes)
	}
	seed := c.SeedVolume(volume)
	if err := ValidateVolumeName(seed); err != nil {
		return fieldErr("cloud_init.volume_name", "seed volume %q: %s", seed, err.(*FieldError).Message)
	}
	if seed == volume {
		return fieldErr("cloud_init.volume_name", "must differ from volume_name %q", volume)
	}
	return nil
}

// Content names a job's uploaded content: an object in its host's content
// bucket, its size and its SHA-256, which the worker checks while it reads.
type Content struct {
	Object string `json:"object"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ValidSHA256 reports whether s is a lower-case hex SHA-256.
func ValidSHA256(s string) bool { return sha256RE.MatchString(s) }

// Validate checks the content's fields.
func (c *Content) Validate() error {
	switch {
	case c.Object == "" || len(c.Object) > 255 || strings.ContainsAny(c.Object, " \t\r\n*>"):
		return fieldErr("content.object", "must be an object name of 1-255 characters without spaces or wildcards")
	case c.Size < 0:
		return fieldErr("content.size", "must not be negative")
	case !ValidSHA256(c.SHA256):
		return fieldErr("content.sha256", "must be a SHA-256 in lower-case hex (64 characters)")
	}
	return nil
}

// ContentVolumeBytes is the size of a new volume for content of size bytes
// when the job asks for none: the content rounded up to a MiB, at least a
// MiB.
func ContentVolumeBytes(size int64) int64 {
	const mib = 1 << 20
	return max(mib, (size+mib-1)/mib*mib)
}

// describeKinds lists the kinds for errors.
func describeKinds() string {
	return fmt.Sprintf("%q, %q or %q", KindProvision, KindCacheFetch, KindContent)
}
