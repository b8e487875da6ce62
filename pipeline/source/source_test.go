package source

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const digestA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func TestParseChecksum(t *testing.T) {
	t.Parallel()
	upper := strings.ToUpper(digestA)
	cases := []struct {
		name, in, want, errPart string
	}{
		{name: "bare", in: digestA, want: digestA},
		{name: "bare with newline", in: digestA + "\n", want: digestA},
		{name: "sha256sum line", in: digestA + "  disk.qcow2\n", want: digestA},
		{name: "binary mode line", in: digestA + " *disk.qcow2\n", want: digestA},
		{name: "uppercase", in: upper + "  disk.qcow2", want: digestA},
		{name: "garbage", in: "not a digest", errPart: "is not a SHA-256 digest"},
		{name: "short hex", in: digestA[:63], errPart: "is not a SHA-256 digest"},
		{name: "non-hex", in: strings.Repeat("g", 64), errPart: "is not a SHA-256 digest"},
		{name: "empty", in: "", errPart: "it is empty"},
		{name: "blank", in: " \n\t", errPart: "it is empty"},
		{name: "digest then star only", in: digestA + " *", errPart: "no file name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseChecksum([]byte(tc.in))
			if tc.errPart != "" {
				require.ErrorContains(t, err, tc.errPart)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestMinIOSourceEndpoint(t *testing.T) {
	t.Parallel()
	s, err := NewMinIO("MinIO.example:9000", "a", "b", false)
	require.NoError(t, err)
	require.Equal(t, "minio.example:9000", s.Endpoint())
	require.False(t, s.Secure())
	s, err = NewMinIO("minio.example", "a", "b", true)
	require.NoError(t, err)
	require.Equal(t, "minio.example:443", s.Endpoint())
	require.True(t, s.Secure())
}

func TestMinIOSourceChecksum(t *testing.T) {
	t.Parallel()
	m, bucket := needMinIO(t)
	src := testSource(t, m)
	ctx := context.Background()

	require.NoError(t, m.PutBytes(ctx, bucket, "a.qcow2.sha256", []byte(strings.ToUpper(digestA)+"  a.qcow2\n")))
	got, found, err := src.Checksum(ctx, bucket, "a.qcow2")
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, digestA, got)

	_, found, err = src.Checksum(ctx, bucket, "none.qcow2")
	require.NoError(t, err)
	require.False(t, found)

	require.NoError(t, m.PutBytes(ctx, bucket, "bad.qcow2.sha256", []byte("hello")))
	_, _, err = src.Checksum(ctx, bucket, "bad.qcow2")
	require.ErrorContains(t, err, "s3://"+bucket+"/bad.qcow2.sha256")
	require.ErrorContains(t, err, "is not a SHA-256 digest")

	require.NoError(t, m.PutBytes(ctx, bucket, "big.qcow2.sha256", []byte(digestA+strings.Repeat(" ", 5000))))
	_, _, err = src.Checksum(ctx, bucket, "big.qcow2")
	require.ErrorContains(t, err, "larger than 4096 bytes")
}

func TestMinIOSourceOpen(t *testing.T) {
	t.Parallel()
	m, bucket := needMinIO(t)
	src := testSource(t, m)
	ctx := context.Background()

	data := []byte("some image bytes")
	require.NoError(t, m.PutBytes(ctx, bucket, "dir/img.raw", data))
	r, info, err := src.Open(ctx, bucket, "dir/img.raw")
	require.NoError(t, err)
	got, err := io.ReadAll(r)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	require.Equal(t, data, got)
	require.Equal(t, int64(len(data)), info.Size)
	require.NotEmpty(t, info.ETag)

	_, _, err = src.Open(ctx, bucket, "missing.raw")
	require.ErrorContains(t, err, "image s3://"+bucket+"/missing.raw not found on "+m.Endpoint)

	_, _, err = src.Open(ctx, bucket+"-nope", "x.raw")
	require.ErrorContains(t, err, "not found on "+m.Endpoint)

	bad, err := NewMinIO(m.Endpoint, m.AccessKey, "wrong-secret", false)
	require.NoError(t, err)
	_, _, err = bad.Open(ctx, bucket, "dir/img.raw")
	require.ErrorContains(t, err, "rejected the worker's credentials")
}
