package kvstate_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
)

func cacheEntry(key, path string) kvstate.CacheEntry {
	return kvstate.CacheEntry{
		Key: key, KeyKind: kvstate.KeyKindSHA256, Path: path, Size: 1 << 20,
		Checksum: strings.Repeat("c", 64), SourceURL: imageURL, ETag: "etag",
		CreatedAt: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC), LastUsed: time.Date(2024, 5, 2, 10, 0, 0, 0, time.UTC),
	}
}

func digest(c string) string { return strings.Repeat(c, 64) }

func TestCacheIndexPutGetDelete(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	c := kvstate.CacheIndex{KV: b.Cache}

	_, err := c.Get(ctx, "hv-01", digest("a"))
	require.ErrorIs(t, err, kvstate.ErrNotFound)

	e := cacheEntry(digest("a"), "/var/cache/a.qcow2")
	require.NoError(t, c.Put(ctx, "hv-01", e))
	got, err := c.Get(ctx, "hv-01", digest("a"))
	require.NoError(t, err)
	require.Equal(t, e, got)

	// Stored under <host>.<key>.
	_, err = b.Cache.Get(ctx, "hv-01."+digest("a"))
	require.NoError(t, err)

	// Put replaces.
	e.Size = 42
	e.KeyKind = kvstate.KeyKindURL
	require.NoError(t, c.Put(ctx, "hv-01", e))
	got, err = c.Get(ctx, "hv-01", digest("a"))
	require.NoError(t, err)
	require.Equal(t, int64(42), got.Size)
	require.Equal(t, "url", got.KeyKind)

	// Another host does not see it.
	_, err = c.Get(ctx, "hv-02", digest("a"))
	require.ErrorIs(t, err, kvstate.ErrNotFound)

	require.NoError(t, c.Delete(ctx, "hv-01", digest("a")))
	_, err = c.Get(ctx, "hv-01", digest("a"))
	require.ErrorIs(t, err, kvstate.ErrNotFound)
}

func TestCacheIndexGetCorrupt(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	_, err := b.Cache.Put(ctx, "hv-01."+digest("a"), []byte("{"))
	require.NoError(t, err)
	_, err = kvstate.CacheIndex{KV: b.Cache}.Get(ctx, "hv-01", digest("a"))
	require.EqualError(t, err, "decode cache entry "+digest("a")+": unexpected end of JSON input")
}

func TestCacheIndexList(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	c := kvstate.CacheIndex{KV: b.Cache}

	empty, err := c.List(ctx, "a")
	require.NoError(t, err)
	require.Empty(t, empty)

	// Keys sort differently from paths, so List must sort by path.
	require.NoError(t, c.Put(ctx, "a", cacheEntry(digest("1"), "/cache/c.qcow2")))
	require.NoError(t, c.Put(ctx, "a", cacheEntry(digest("2"), "/cache/a.qcow2")))
	require.NoError(t, c.Put(ctx, "a", cacheEntry(digest("3"), "/cache/b.qcow2")))
	require.NoError(t, c.Put(ctx, "ab", cacheEntry(digest("4"), "/cache/ab.qcow2")))
	require.NoError(t, c.Put(ctx, "b", cacheEntry(digest("5"), "/cache/0.qcow2")))
	require.NoError(t, c.Put(ctx, "a", cacheEntry(digest("6"), "/cache/d.qcow2")))
	require.NoError(t, c.Delete(ctx, "a", digest("6")))

	paths := func(es []kvstate.CacheEntry) []string {
		out := make([]string, 0, len(es))
		for _, e := range es {
			out = append(out, e.Path)
		}
		return out
	}
	tests := []struct {
		host string
		want []string
	}{
		{"a", []string{"/cache/a.qcow2", "/cache/b.qcow2", "/cache/c.qcow2"}},
		{"ab", []string{"/cache/ab.qcow2"}},
		{"b", []string{"/cache/0.qcow2"}},
		{"c", []string{}},
	}
	for _, tt := range tests {
		got, err := c.List(ctx, tt.host)
		require.NoError(t, err, tt.host)
		require.Equal(t, tt.want, paths(got), "host %q", tt.host)
	}

	got, err := c.List(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, cacheEntry(digest("2"), "/cache/a.qcow2"), got[0])
}
