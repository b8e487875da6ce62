package api

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// cacheEntry is a cache index entry of an image from bucket, keyed by a
// digest made of one hex digit.
func cacheEntry(digit, path, bucket string) kvstate.CacheEntry {
	key := strings.Repeat(digit, 64)
	return kvstate.CacheEntry{Key: key, KeyKind: kvstate.KeyKindSHA256, Path: path, Size: 1 << 20, Checksum: strings.Repeat(digit, 63) + "0",
		SourceURL: "http://minio:9000/" + bucket + "/" + path, CreatedAt: time.Now().UTC(), LastUsed: time.Now().UTC()}
}

func TestListCache(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	index := kvstate.CacheIndex{KV: tb.buckets.Cache}
	ctx := testCtx(t)
	golden := cacheEntry("b", "b.qcow2", "images")
	golden.Golden = &kvstate.Golden{Path: "/cache/b.golden", Size: 4 << 20, AllocatedBytes: 2 << 20, Digest: "d", Immutable: true,
		CreatedAt: time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC), VerifiedAt: time.Date(2024, 5, 2, 0, 0, 0, 0, time.UTC)}
	for _, e := range []kvstate.CacheEntry{cacheEntry("c", "c.qcow2", "images"), cacheEntry("a", "a.qcow2", "images"), golden} {
		require.NoError(t, index.Put(ctx, testHost, e))
	}
	registerHost(t, tb.buckets, "h2", time.Now())
	require.NoError(t, index.Put(ctx, "h2", cacheEntry("d", "d.qcow2", "images")))

	list := func(query string) rest.CacheList {
		rr := tb.do(t, request{method: http.MethodGet, path: "/api/v1/cache/images?" + query})
		require.Equal(t, http.StatusOK, rr.Code, rr.Body.String())
		var l rest.CacheList
		require.NoError(t, json.Unmarshal(rr.Body.Bytes(), &l))
		return l
	}
	all := list("")
	require.Equal(t, 3, all.Count, "the default host's images only")
	require.Len(t, all.Images, 3)
	require.Equal(t, []string{"a.qcow2", "b.qcow2", "c.qcow2"}, []string{all.Images[0].Path, all.Images[1].Path, all.Images[2].Path}, "sorted by path")
	require.Equal(t, strings.Repeat("a", 63)+"0", all.Images[0].Checksum)
	require.EqualValues(t, 1<<20, all.Images[0].Size)
	require.Nil(t, all.Images[0].Golden)
	require.Equal(t, &rest.CachedGolden{Path: "/cache/b.golden", Size: 4 << 20, AllocatedBytes: 2 << 20, Digest: "d", Immutable: true,
		CreatedAt: golden.Golden.CreatedAt, VerifiedAt: golden.Golden.VerifiedAt}, all.Images[1].Golden)

	page := list("offset=2&limit=5")
	require.Equal(t, 3, page.Count)
	require.Equal(t, 2, page.Offset)
	require.Equal(t, 5, page.Limit)
	require.Len(t, page.Images, 1)
	require.Equal(t, "c.qcow2", page.Images[0].Path)

	other := list("hypervisor=h2")
	require.Equal(t, 1, other.Count)
	require.Equal(t, "d.qcow2", other.Images[0].Path)

	empty := setup(t)
	rr := empty.do(t, request{method: http.MethodGet, path: "/api/v1/cache/images"})
	require.JSONEq(t, `{"images":[],"count":0,"offset":0,"limit":100}`, rr.Body.String(), "no entries: an empty page")

	for _, tc := range []struct{ query, message string }{
		{"hypervisor=h9", `unknown hypervisor "h9"; known hypervisors: h1, h2`},
		{"hypervisor=H9", `hypervisor "H9" is not a host name (lower-case letters, digits and dashes)`},
		{"limit=1001", `limit must be an integer between 1 and 1000, not "1001"`},
	} {
		msg := apiError(t, tb.do(t, request{method: http.MethodGet, path: "/api/v1/cache/images?" + tc.query}), http.StatusBadRequest, catInvalid)
		require.Equal(t, tc.message, msg, tc.query)
	}
}
