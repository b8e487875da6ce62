package messaging_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

func TestImageSourcesAllow(t *testing.T) {
	t.Parallel()
	ref := func(raw string) messaging.ImageRef {
		r, err := messaging.ParseImageURL(raw)
		require.NoError(t, err)
		return r
	}
	l, err := messaging.ParseImageSources(" images, golden/web/ ,,")
	require.NoError(t, err)
	require.Equal(t, messaging.ImageSources{{Bucket: "images"}, {Bucket: "golden", Prefix: "web/"}}, l)
	require.Equal(t, "images, golden/web/", l.String())

	require.True(t, l.Allows(ref("http://minio:9000/images/a/b.qcow2")))
	require.True(t, l.Allows(ref("http://minio:9000/golden/web/base.qcow2")))
	require.False(t, l.Allows(ref("http://minio:9000/golden/db/base.qcow2")), "outside the prefix")
	require.False(t, l.Allows(ref("http://minio:9000/secrets/dump.raw")), "another bucket")
	require.False(t, l.Allows(ref("http://minio:9000/images2/a.qcow2")), "a bucket is matched whole")
	require.True(t, messaging.ImageSources(nil).Allows(ref("http://minio:9000/secrets/dump.raw")), "an empty list allows all")

	require.Equal(t, `bucket "secrets"`, messaging.ImageSources{{Bucket: "images"}}.Describe(ref("http://minio:9000/secrets/x")))
	require.Equal(t, `object "db/base.qcow2" of bucket "golden"`, l.Describe(ref("http://minio:9000/golden/db/base.qcow2")))

	for _, bad := range []string{"Images", "a", "ok-bucket/../x", "ok-bucket//x", "bad_bucket"} {
		_, err := messaging.ParseImageSources(bad)
		require.Error(t, err, bad)
	}
}
