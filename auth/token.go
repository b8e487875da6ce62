package auth

import (
	"bufio"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"
)

// tokenPrefix starts every token and names its format version.
const tokenPrefix = "pvt1."

// MaxTokenLen bounds what is parsed as a token.
const MaxTokenLen = 4096

// MinSecretLen is the shortest accepted signing secret, in bytes.
const MinSecretLen = 32

// Claims are what a token says about its bearer.
type Claims struct {
	// KeyID names the secret that signed the token.
	KeyID string `json:"kid"`
	// Subject names the bearer (recorded as the caller).
	Subject string `json:"sub"`
	// Expires is the Unix time after which the token is refused.
	Expires int64 `json:"exp"`
	// Hypervisors, when not empty, are the only hosts the bearer may use.
	Hypervisors []string `json:"hyp,omitempty"`
	// Volumes, when set, is a regular expression volume names must match.
	Volumes string `json:"vol,omitempty"`
	// Buckets, when not empty, are the only image sources ("bucket" or
	// "bucket/prefix") the bearer may use.
	Buckets []string `json:"bkt,omitempty"`
}

// Errors of token verification; all mean 401.
var (
	ErrMalformed   = errors.New("malformed token")
	ErrUnknownKey  = errors.New("token signed with an unknown key id")
	ErrBadSig      = errors.New("token signature does not match")
	ErrExpired     = errors.New("token expired")
	ErrNoSecrets   = errors.New("no token secrets are configured")
	errShortSecret = fmt.Errorf("secret is shorter than %d bytes", MinSecretLen)
)

// Keys are the active signing secrets by key id.
type Keys map[string][]byte

var keyIDRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// ParseKeys reads "kid:secret" pairs separated by commas or newlines; the
// secret is base64 (standard or URL alphabet) of at least 32 bytes. Empty
// lines and lines starting with # are skipped.
func ParseKeys(text string) (Keys, error) {
	keys := Keys{}
	sc := bufio.NewScanner(strings.NewReader(strings.ReplaceAll(text, ",", "\n")))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		kid, enc, ok := strings.Cut(line, ":")
		if !ok || !keyIDRE.MatchString(kid) {
			// The entry itself is never printed: without its "kid:" it is
			// the secret.
			return nil, fmt.Errorf("token secret entry %d: want <kid>:<base64 secret>, kid of letters, digits, '_', '.', '-' (the entry is not shown)", n)
		}
		secret, err := decodeSecret(strings.TrimSpace(enc))
		if err != nil {
			return nil, fmt.Errorf("token secret of key id %q: %w", kid, err)
		}
		if _, dup := keys[kid]; dup {
			return nil, fmt.Errorf("token secret of key id %q is given twice", kid)
		}
		keys[kid] = secret
	}
	return keys, nil
}

func decodeSecret(enc string) ([]byte, error) {
	for _, e := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := e.DecodeString(enc); err == nil {
			if len(b) < MinSecretLen {
				return nil, errShortSecret
			}
			return b, nil
		}
	}
	return nil, errors.New("secret is not base64")
}

// LoadKeys reads keys from a file (see ParseKeys); the file must not be
// readable by others.
func LoadKeys(path string) (Keys, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("token secrets file: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("token secrets file %s is readable by group or others (mode %v); chmod 600 it", path, st.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token secrets file: %w", err)
	}
	return ParseKeys(string(data))
}

// NewSecret returns a random secret, base64 encoded, for a secrets file.
func NewSecret() string {
	b := make([]byte, MinSecretLen)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Mint signs claims with the key named by claims.KeyID.
func (k Keys) Mint(c Claims) (string, error) {
	secret, ok := k[c.KeyID]
	if !ok {
		return "", fmt.Errorf("%w: %q", ErrUnknownKey, c.KeyID)
	}
	if c.Expires == 0 {
		return "", errors.New("a token needs an expiry")
	}
	if c.Volumes != "" {
		if _, err := regexp.Compile(c.Volumes); err != nil {
			return "", fmt.Errorf("volume pattern: %w", err)
		}
	}
	if _, err := parseBuckets(c.Buckets); err != nil {
		return "", fmt.Errorf("buckets: %w", err)
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	p := base64.RawURLEncoding.EncodeToString(payload)
	return tokenPrefix + p + "." + base64.RawURLEncoding.EncodeToString(sign(secret, p)), nil
}

func sign(secret []byte, payload string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(tokenPrefix + payload))
	return m.Sum(nil)
}

// Verify checks a token's signature (in constant time) and expiry and
// returns its claims.
func (k Keys) Verify(token string, now time.Time) (Claims, error) {
	var c Claims
	if len(k) == 0 {
		return c, ErrNoSecrets
	}
	if len(token) > MaxTokenLen {
		return c, ErrMalformed
	}
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok {
		return c, ErrMalformed
	}
	p, s, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(s, ".") {
		return c, ErrMalformed
	}
	// Strict: a token has one encoding, so no other string carries the same
	// signature.
	payload, err := base64.RawURLEncoding.Strict().DecodeString(p)
	if err != nil {
		return c, ErrMalformed
	}
	sig, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || len(sig) != sha256.Size {
		return c, ErrMalformed
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return Claims{}, ErrMalformed
	}
	secret, ok := k[c.KeyID]
	if !ok {
		return Claims{}, ErrUnknownKey
	}
	if !hmac.Equal(sig, sign(secret, p)) {
		return Claims{}, ErrBadSig
	}
	if c.Expires <= 0 || now.Unix() >= c.Expires {
		return Claims{}, fmt.Errorf("%w at %s", ErrExpired, time.Unix(c.Expires, 0).UTC().Format(time.RFC3339))
	}
	if c.Volumes != "" {
		if _, err := regexp.Compile(c.Volumes); err != nil {
			return Claims{}, ErrMalformed
		}
	}
	if _, err := parseBuckets(c.Buckets); err != nil {
		return Claims{}, ErrMalformed
	}
	return c, nil
}
