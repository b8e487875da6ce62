package auth

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSignatureHasOneEncoding: a token whose signature's last character
// differs only in the unused low bits decodes to the same signature under
// lenient base64; it must be refused (a token has exactly one spelling).
func TestSignatureHasOneEncoding(t *testing.T) {
	t.Parallel()
	keys := testKeys(t, "ops")
	now := time.Unix(1_800_000_000, 0)
	tok, err := keys.Mint(Claims{KeyID: "ops", Subject: "ci", Expires: now.Add(time.Hour).Unix()})
	require.NoError(t, err)
	_, err = keys.Verify(tok, now)
	require.NoError(t, err)

	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, tok[len(tok)-1])
	require.GreaterOrEqual(t, last, 0)
	// 32 bytes are 43 characters: the last one carries 4 bits and 2 unused ones.
	forged := tok[:len(tok)-1] + string(alphabet[last^1])
	sig := forged[strings.LastIndex(forged, ".")+1:]
	orig := tok[strings.LastIndex(tok, ".")+1:]
	a, _ := base64.RawURLEncoding.DecodeString(sig)
	b, _ := base64.RawURLEncoding.DecodeString(orig)
	require.Equal(t, b, a, "the forged spelling decodes to the same signature leniently")
	_, err = keys.Verify(forged, now)
	require.ErrorIs(t, err, ErrMalformed)
}

// TestParseKeysNeverPrintsTheSecret: an entry without "kid:" is the secret
// itself; the error names the entry's number, never its text.
func TestParseKeysNeverPrintsTheSecret(t *testing.T) {
	t.Parallel()
	secret := NewSecret()
	for _, text := range []string{secret, "ok:" + NewSecret() + "\n" + secret, "# comment\n\n" + secret + "\n", "bad kid!:" + secret} {
		_, err := ParseKeys(text)
		require.Error(t, err)
		require.NotContains(t, err.Error(), secret)
		require.NotContains(t, err.Error(), secret[:8])
	}
	_, err := ParseKeys("ok:" + NewSecret() + "\n" + secret)
	require.EqualError(t, err, "token secret entry 2: want <kid>:<base64 secret>, kid of letters, digits, '_', '.', '-' (the entry is not shown)")
}
