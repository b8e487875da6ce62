package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// upload puts body as the content of volume on the default host.
func (tb *testBundle) upload(t *testing.T, volume, body string, header map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	h := map[string]string{"Content-Type": "application/octet-stream"}
	for k, v := range header {
		h[k] = v
	}
	return tb.do(t, request{method: http.MethodPut, path: "/api/v1/volumes/h1/" + volume + "/content", body: body, header: h})
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestUploadQueuesAContentJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	const body = "#!/bin/sh\necho hello\n"
	rr := tb.upload(t, "vm-c", body, map[string]string{rest.HeaderContentSHA256: sha(body), HeaderIdempotencyKey: "up-1"})
	id := accepted(t, rr)

	rec := tb.record(t, testHost, id)
	require.Equal(t, messaging.KindContent, rec.Kind)
	require.Equal(t, kvstate.StatusPending, rec.Status)
	require.Equal(t, "vm-c", rec.VolumeName)
	require.Equal(t, &messaging.Content{Object: messaging.ContentObject(id), Size: int64(len(body)), SHA256: sha(body)}, rec.Content)
	require.True(t, tb.queued(t, testHost, id))
	require.Equal(t, id, tb.leaseHolder(t, testHost, "vm-c"))
	var stored bytes.Buffer
	_, err := messaging.ReadContent(testCtx(t), tb.js, testHost, messaging.ContentObject(id), &stored, nil)
	require.NoError(t, err)
	require.Equal(t, body, stored.String(), "the worker finds the upload")

	rr = tb.upload(t, "vm-c", body, map[string]string{rest.HeaderContentSHA256: sha(body), HeaderIdempotencyKey: "up-1"})
	require.Equal(t, id, accepted(t, rr), "a retry with the key is the same job")
	require.Equal(t, "true", rr.Header().Get(rest.HeaderIdempotentReplayed))
}

// An upload that cannot become a job stores nothing and reserves nothing.
func TestUploadRefusalsLeaveNothing(t *testing.T) {
	t.Parallel()
	tb := setup(t, func(c *Config) { c.MaxContentBytes = 16 })
	for _, tc := range []struct {
		name, volume, body string
		header             map[string]string
		code               int
		message            string
	}{
		{"digest mismatch", "vm-c", "hello", map[string]string{rest.HeaderContentSHA256: sha("other")}, http.StatusBadRequest,
			"X-Content-SHA256: the upload does not match X-Content-SHA256 (its SHA-256 is " + sha("hello") + ", the header says " + sha("other") + "); nothing was stored"},
		{"not a digest", "vm-c", "hello", map[string]string{rest.HeaderContentSHA256: "abc"}, http.StatusBadRequest,
			"X-Content-SHA256: must be a SHA-256 in hex (64 characters)"},
		{"too large", "vm-c", strings.Repeat("x", 17), nil, http.StatusRequestEntityTooLarge,
			"the upload is 17 bytes, more than the 16 allowed (PROVISIONER_CONTENT_MAX_BYTES)"},
		{"bad volume name", "-x", "hello", nil, http.StatusBadRequest, "volume_name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := apiError(t, tb.upload(t, tc.volume, tc.body, tc.header), tc.code, catInvalid)
			require.Contains(t, msg, tc.message)
		})
	}
	require.Empty(t, keys(t, tb.buckets.Jobs))
	require.Empty(t, keys(t, tb.buckets.Volumes))
	store, err := tb.js.ObjectStore(testCtx(t), messaging.ContentBucket(testHost))
	if err == nil {
		objects, err := store.List(testCtx(t))
		require.Empty(t, objects, "no upload is left in the content bucket (%v)", err)
	}
}
