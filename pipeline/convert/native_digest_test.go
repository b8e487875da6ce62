package convert

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// TestGoldenHasherMatchesGoldenDigest: the digest the native converter
// computes while it writes, for qcow2 and raw images, is GoldenDigest of
// the file it wrote, read back.
func TestGoldenHasherMatchesGoldenDigest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	const size = 9<<20 + 3*4096 + 512 // a short last chunk, not block-aligned
	qcow, raw := testenv.QCOW2Image(t, dir, size, 41)
	for _, tc := range []struct{ name, path, format string }{{"qcow2", qcow, "qcow2"}, {"raw", raw, "raw"}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			img, err := image.Inspect(tc.path, tc.format)
			require.NoError(t, err)
			out := filepath.Join(t.TempDir(), "golden")
			require.NoError(t, os.WriteFile(out, nil, 0o600))
			require.NoError(t, os.Truncate(out, img.VirtualSize))
			h := volume.NewGoldenHasher(img.VirtualSize)
			conv := Native{}.WithDigest(h)
			require.NoError(t, conv.Convert(ctx, img, tc.path, volume.Volume{Name: "g", Path: out, Size: img.VirtualSize}, nil))
			got, err := h.Sum()
			require.NoError(t, err)
			want, err := volume.GoldenDigest(ctx, out)
			require.NoError(t, err)
			require.Equal(t, want, got)
			ref, err := volume.GoldenDigest(ctx, raw)
			require.NoError(t, err)
			require.Equal(t, ref, got, "the digest is the image's disk's")

			// A conversion that starts over is hashed again from scratch.
			h.Data(0, []byte("stale"))
			h.Reset()
			require.NoError(t, conv.Convert(ctx, img, tc.path, volume.Volume{Name: "g", Path: out, Size: img.VirtualSize}, nil))
			again, err := h.Sum()
			require.NoError(t, err)
			require.Equal(t, want, again)
		})
	}
}
