package kvstate_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

func TestUploadsStoreAndRemove(t *testing.T) {
	t.Parallel()
	st, js := startState(t)
	ctx := testCtx(t)
	up := st.Uploads

	require.NoError(t, up.Remove(ctx, "hv-01", jobID1), "no bucket yet: nothing to remove")
	bucket, err := up.Bucket(ctx, "hv-01")
	require.NoError(t, err)
	require.NoError(t, bucket.Put(ctx, messaging.ContentObject(jobID1), strings.NewReader("hello")))
	again, err := up.Bucket(ctx, "hv-01")
	require.NoError(t, err, "an existing bucket is opened")
	require.NoError(t, again.Put(ctx, messaging.ContentObject(jobID2), strings.NewReader("other")))

	var got bytes.Buffer
	_, err = messaging.ReadContent(ctx, js, "hv-01", messaging.ContentObject(jobID1), &got, nil)
	require.NoError(t, err, "a worker reads what was stored")
	require.Equal(t, "hello", got.String())

	require.NoError(t, up.Remove(ctx, "hv-01", messaging.ContentObject(jobID1)))
	_, err = messaging.ReadContent(ctx, js, "hv-01", messaging.ContentObject(jobID1), &got, nil)
	require.ErrorIs(t, err, messaging.ErrContentNotFound)
	require.NoError(t, up.Remove(ctx, "hv-01", messaging.ContentObject(jobID1)), "removed already: no error")
}
