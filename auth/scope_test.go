package auth

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

func mustRef(t *testing.T, raw string) messaging.ImageRef {
	t.Helper()
	ref, err := messaging.ParseImageURL(raw)
	require.NoError(t, err)
	return ref
}

// TestScopeJobs: a volume scope covers existing jobs too, and a cache fetch
// job only when the scope names image buckets.
func TestScopeJobs(t *testing.T) {
	t.Parallel()
	re, err := anchored("web-.*")
	require.NoError(t, err)
	web := Identity{Name: "token:ops/web", volumes: re}
	const id = "550e8400-e29b-41d4-a716-446655440000"
	require.NoError(t, web.AllowJob(id, messaging.KindProvision, "web-1", "http://m:9000/images/a.qcow2"))
	require.EqualError(t, web.AllowJob(id, messaging.KindProvision, "db-1", "http://m:9000/images/a.qcow2"),
		"token:ops/web may not use job "+id+": its volume is outside its scope (names matching ^(?:web-.*)$)")
	require.EqualError(t, web.AllowJob(id, messaging.KindCacheFetch, "", "http://m:9000/images/a.qcow2"),
		"token:ops/web may not use job "+id+": it fetches an image outside its scope")
	require.EqualError(t, web.AllowCache(mustRef(t, "http://m:9000/images/a.qcow2")),
		"token:ops/web is scoped to volumes matching ^(?:web-.*)$ and may not fetch or remove cached images (its scope names no image buckets)")

	webImages := web
	webImages.Buckets = messaging.ImageSources{{Bucket: "images"}}
	require.NoError(t, webImages.AllowJob(id, messaging.KindCacheFetch, "", "http://m:9000/images/a.qcow2"))
	require.Error(t, webImages.AllowJob(id, messaging.KindCacheFetch, "", "http://m:9000/secrets/a.qcow2"))
	require.NoError(t, webImages.AllowCache(mustRef(t, "http://m:9000/images/a.qcow2")))
	require.EqualError(t, webImages.AllowImage(mustRef(t, "http://m:9000/secrets/a.qcow2")),
		`token:ops/web may not use images from bucket "secrets" (allowed: images)`)

	for _, kind := range []string{messaging.KindProvision, messaging.KindCacheFetch} {
		require.NoError(t, Anonymous.AllowJob(id, kind, "db-1", "http://m:9000/secrets/a.qcow2"))
	}
	require.NoError(t, Anonymous.AllowCache(mustRef(t, "http://m:9000/secrets/a.qcow2")))
}

// TestScopeBucketsAllow: tokens and client policies carry bucket lists into
// the identity; malformed ones are refused.
func TestScopeBucketsAllow(t *testing.T) {
	t.Parallel()
	keys := testKeys(t, "ops")
	tok, err := keys.Mint(Claims{KeyID: "ops", Subject: "ci", Expires: time.Now().Add(time.Hour).Unix(), Buckets: []string{"images", "golden/web/"}})
	require.NoError(t, err)
	r, _ := http.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("X-API-Token", tok)
	id, err := (&Authenticator{Keys: keys}).Authenticate(r)
	require.NoError(t, err)
	require.Equal(t, messaging.ImageSources{{Bucket: "images"}, {Bucket: "golden", Prefix: "web/"}}, id.Buckets)
	require.NoError(t, id.AllowImage(mustRef(t, "http://m:9000/golden/web/a.qcow2")))
	require.Error(t, id.AllowImage(mustRef(t, "http://m:9000/golden/db/a.qcow2")))

	_, err = keys.Mint(Claims{KeyID: "ops", Expires: time.Now().Add(time.Hour).Unix(), Buckets: []string{"Bad_Bucket"}})
	require.ErrorContains(t, err, `buckets: image source "Bad_Bucket"`)

	dir := t.TempDir()
	p := filepath.Join(dir, "policy.json")
	require.NoError(t, os.WriteFile(p, []byte(`{"clients":[{"name":"cn:a","buckets":["images"]}]}`), 0o600))
	pol, err := LoadPolicy(p)
	require.NoError(t, err)
	require.Equal(t, []string{"images"}, pol.Clients[0].Buckets)
	require.NoError(t, os.WriteFile(p, []byte(`{"clients":[{"name":"cn:a","buckets":["x"]}]}`), 0o600))
	_, err = LoadPolicy(p)
	require.ErrorContains(t, err, `buckets of "cn:a": image source "x"`)
}
