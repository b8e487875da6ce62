package auth

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func testKeys(t *testing.T, kids ...string) Keys {
	t.Helper()
	var lines []string
	for _, k := range kids {
		lines = append(lines, k+":"+NewSecret())
	}
	keys, err := ParseKeys(strings.Join(lines, "\n"))
	require.NoError(t, err)
	return keys
}

func TestMintVerify(t *testing.T) {
	t.Parallel()
	keys := testKeys(t, "ops", "old")
	now := time.Unix(1_800_000_000, 0)
	tok, err := keys.Mint(Claims{KeyID: "ops", Subject: "ci", Expires: now.Add(time.Hour).Unix(), Hypervisors: []string{"h1"}, Volumes: "web-.*"})
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(tok, "pvt1."))
	c, err := keys.Verify(tok, now)
	require.NoError(t, err)
	require.Equal(t, Claims{KeyID: "ops", Subject: "ci", Expires: now.Add(time.Hour).Unix(), Hypervisors: []string{"h1"}, Volumes: "web-.*"}, c)

	// Rotation: a token of the other active key verifies too.
	old, err := keys.Mint(Claims{KeyID: "old", Subject: "x", Expires: now.Add(time.Minute).Unix()})
	require.NoError(t, err)
	_, err = keys.Verify(old, now)
	require.NoError(t, err)
	// Once "old" is retired, its tokens are refused.
	delete(keys, "old")
	_, err = keys.Verify(old, now)
	require.ErrorIs(t, err, ErrUnknownKey)
}

func TestVerifyRefusals(t *testing.T) {
	t.Parallel()
	keys := testKeys(t, "ops")
	now := time.Unix(1_800_000_000, 0)
	tok, err := keys.Mint(Claims{KeyID: "ops", Subject: "ci", Expires: now.Unix() + 60})
	require.NoError(t, err)
	payload := strings.Split(tok, ".")[1]

	_, err = keys.Verify(tok, now.Add(time.Minute))
	require.ErrorIs(t, err, ErrExpired)
	require.EqualError(t, err, "token expired at 2027-01-15T08:01:00Z")

	// A changed claim (the signature no longer matches).
	forged := strings.Replace(tok, payload, base64.RawURLEncoding.EncodeToString([]byte(`{"kid":"ops","sub":"root","exp":9999999999}`)), 1)
	_, err = keys.Verify(forged, now)
	require.ErrorIs(t, err, ErrBadSig)
	// A flipped signature byte.
	sig := []byte(tok)
	sig[len(sig)-2] ^= 1
	_, err = keys.Verify(string(sig), now)
	require.True(t, errors.Is(err, ErrBadSig) || errors.Is(err, ErrMalformed), "%v", err)
	// Signed by a key this server does not have.
	other := testKeys(t, "ops")
	foreign, err := other.Mint(Claims{KeyID: "ops", Subject: "ci", Expires: now.Unix() + 60})
	require.NoError(t, err)
	_, err = keys.Verify(foreign, now)
	require.ErrorIs(t, err, ErrBadSig)

	for _, bad := range []string{"", "pvt1.", "pvt2." + payload + ".x", tok + ".x", "pvt1.!!!.abc", strings.Repeat("a", MaxTokenLen+1)} {
		_, err := keys.Verify(bad, now)
		require.ErrorIs(t, err, ErrMalformed, bad)
	}
	_, err = Keys{}.Verify(tok, now)
	require.ErrorIs(t, err, ErrNoSecrets)
}

func TestParseKeys(t *testing.T) {
	t.Parallel()
	secret := NewSecret()
	keys, err := ParseKeys("# comment\nops:" + secret + "\n\nci:" + NewSecret())
	require.NoError(t, err)
	require.Len(t, keys, 2)
	for _, c := range []struct{ in, want string }{
		{"ops", `token secret entry 1: want <kid>:<base64 secret>, kid of letters, digits, '_', '.', '-' (the entry is not shown)`},
		{"ops:c2hvcnQ=", `token secret of key id "ops": secret is shorter than 32 bytes`},
		{"ops:???", `token secret of key id "ops": secret is not base64`},
		{"ops:" + secret + ",ops:" + secret, `token secret of key id "ops" is given twice`},
		{"a b:" + secret, `token secret entry 1: want <kid>:<base64 secret>, kid of letters, digits, '_', '.', '-' (the entry is not shown)`},
	} {
		_, err := ParseKeys(c.in)
		require.EqualError(t, err, c.want)
		require.NotContains(t, err.Error(), secret, "a secret never appears in an error")
	}
}

func TestIdentityScope(t *testing.T) {
	t.Parallel()
	re, err := anchored("web-.*")
	require.NoError(t, err)
	id := Identity{Name: "token:ops/ci", Hypervisors: []string{"h1", "h2"}, volumes: re}
	require.NoError(t, id.AllowHost("h2"))
	require.EqualError(t, id.AllowHost("h3"), `token:ops/ci may not use hypervisor "h3" (allowed: h1, h2)`)
	require.NoError(t, id.AllowVolume("web-1"))
	require.EqualError(t, id.AllowVolume("db-web-1"), `token:ops/ci may not write volume "db-web-1" (allowed: names matching ^(?:web-.*)$)`)
	require.NoError(t, Anonymous.AllowHost("any"))
	require.NoError(t, Anonymous.AllowVolume("any"))
}

func FuzzVerify(f *testing.F) {
	keys := Keys{"ops": []byte(strings.Repeat("k", 32))}
	tok, _ := keys.Mint(Claims{KeyID: "ops", Subject: "ci", Expires: 4_000_000_000})
	f.Add(tok)
	f.Add("pvt1.e30.AAAA")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := keys.Verify(s, time.Unix(1_800_000_000, 0))
		if err == nil && (c.KeyID != "ops" || c.Expires <= 1_800_000_000) {
			t.Fatalf("accepted %q with claims %+v", s, c)
		}
	})
}
