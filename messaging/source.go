package messaging

import (
	"fmt"
	"strings"
)

// ImageSource is one entry of an image allowlist: a bucket, optionally
// narrowed to the objects under a prefix ("images", "golden/web/").
type ImageSource struct {
	Bucket string
	// Prefix, when set, is what the object's name must start with.
	Prefix string
}

// String is the entry as it is written: "bucket" or "bucket/prefix".
func (s ImageSource) String() string {
	if s.Prefix == "" {
		return s.Bucket
	}
	return s.Bucket + "/" + s.Prefix
}

// ImageSources is an allowlist of the buckets (or bucket/prefix pairs)
// images may come from. An empty list allows every bucket.
type ImageSources []ImageSource

// ParseImageSources reads a list of "bucket" or "bucket/prefix" entries,
// separated by commas; blank entries are skipped. Bucket names follow the
// rules ParseImageURL applies.
func ParseImageSources(list string) (ImageSources, error) {
	var out ImageSources
	for _, e := range strings.Split(list, ",") {
		if e = strings.TrimSpace(e); e == "" {
			continue
		}
		src, err := ParseImageSource(e)
		if err != nil {
			return nil, err
		}
		out = append(out, src)
	}
	return out, nil
}

// ParseImageSource reads one "bucket" or "bucket/prefix" entry.
func ParseImageSource(entry string) (ImageSource, error) {
	bucket, prefix, _ := strings.Cut(strings.TrimSpace(entry), "/")
	if !bucketRE.MatchString(bucket) || strings.Contains(bucket, "..") {
		return ImageSource{}, fmt.Errorf("image source %q: bucket %q is not a valid bucket name (3-63 lower-case letters, digits, '.' and '-')", entry, bucket)
	}
	for _, seg := range strings.Split(strings.TrimSuffix(prefix, "/"), "/") {
		if prefix != "" && (seg == "" || seg == "." || seg == "..") {
			return ImageSource{}, fmt.Errorf("image source %q: the prefix must not contain empty, '.' or '..' path segments", entry)
		}
	}
	return ImageSource{Bucket: bucket, Prefix: prefix}, nil
}

// Allows reports whether ref's bucket and object are on the list (always
// true for an empty list).
func (l ImageSources) Allows(ref ImageRef) bool {
	if len(l) == 0 {
		return true
	}
	for _, s := range l {
		if s.Bucket == ref.Bucket && strings.HasPrefix(ref.Object, s.Prefix) {
			return true
		}
	}
	return false
}

// String is the list as it is configured, comma-separated.
func (l ImageSources) String() string {
	parts := make([]string, len(l))
	for i, s := range l {
		parts[i] = s.String()
	}
	return strings.Join(parts, ", ")
}

// Describe names where ref comes from, for messages: `bucket "x"` or, with
// prefixes on the list, the object too.
func (l ImageSources) Describe(ref ImageRef) string {
	for _, s := range l {
		if s.Prefix != "" {
			return fmt.Sprintf("object %q of bucket %q", ref.Object, ref.Bucket)
		}
	}
	return fmt.Sprintf("bucket %q", ref.Bucket)
}
