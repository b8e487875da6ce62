package source

import (
	"regexp"
	"strings"
	"testing"
)

// A fuzz target for the parser of the <object>.sha256 file, which comes
// from the object store before anything else looks at it. Run it with:
//
//	go test -run '^$' -fuzz '^FuzzParseChecksum$' -fuzztime 60s ./pipeline/source

var fuzzDigestRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

const fuzzDigest = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// FuzzParseChecksum: never panics; whatever it returns is 64 lower-case hex
// digits taken from the first field of the input's first line.
func FuzzParseChecksum(f *testing.F) {
	for _, s := range []string{
		fuzzDigest,
		fuzzDigest + "\n",
		fuzzDigest + "  ubuntu.qcow2\n",
		fuzzDigest + " *ubuntu.qcow2\r\n",
		strings.ToUpper(fuzzDigest) + "\tx",
		"  \n" + fuzzDigest + "  a\n" + fuzzDigest + "  b\n",
		fuzzDigest + "  ",
		fuzzDigest + " *",
		fuzzDigest[:63],
		fuzzDigest + "0",
		"g" + fuzzDigest[1:],
		"sha256:" + fuzzDigest,
		"SHA256 (x) = " + fuzzDigest,
		"",
		" \t\r\n",
		"\xff\xfe" + fuzzDigest,
		strings.Repeat("0", 64) + "\x00name",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		digest, err := ParseChecksum(data)
		if err != nil {
			if digest != "" {
				t.Fatalf("ParseChecksum returned %q with error %v", digest, err)
			}
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if !fuzzDigestRE.MatchString(digest) {
			t.Fatalf("ParseChecksum(%q) = %q, not 64 lower-case hex digits", data, digest)
		}
		text := strings.TrimSpace(string(data))
		first, _, _ := strings.Cut(text, "\n")
		first = strings.TrimSpace(first)
		if !strings.HasPrefix(strings.ToLower(first), digest) {
			t.Fatalf("ParseChecksum(%q) = %q, which does not start the first line %q", data, digest, first)
		}
		if rest := first[64:]; rest != "" && !strings.ContainsAny(rest[:1], " \t") {
			t.Fatalf("ParseChecksum(%q) accepted a digest followed by %q", data, rest)
		}
	})
}
