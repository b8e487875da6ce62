package pipeline

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
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
			img, err := Inspect(tc.path, tc.format)
			require.NoError(t, err)
			out := filepath.Join(t.TempDir(), "golden")
			require.NoError(t, os.WriteFile(out, nil, 0o600))
			require.NoError(t, os.Truncate(out, img.VirtualSize))
			h := NewGoldenHasher(img.VirtualSize)
			conv := Native{}.WithDigest(h)
			require.NoError(t, conv.Convert(ctx, img, tc.path, Volume{Name: "g", Path: out, Size: img.VirtualSize}, nil))
			got, err := h.Sum()
			require.NoError(t, err)
			want, err := GoldenDigest(ctx, out)
			require.NoError(t, err)
			require.Equal(t, want, got)
			ref, err := GoldenDigest(ctx, raw)
			require.NoError(t, err)
			require.Equal(t, ref, got, "the digest is the image's disk's")

			// A conversion that starts over is hashed again from scratch.
			h.Data(0, []byte("stale"))
			h.Reset()
			require.NoError(t, conv.Convert(ctx, img, tc.path, Volume{Name: "g", Path: out, Size: img.VirtualSize}, nil))
			again, err := h.Sum()
			require.NoError(t, err)
			require.Equal(t, want, again)
		})
	}
}

// TestGoldenHasherAnyOrder: ranges given in any order, from several
// goroutines, cut anywhere, give GoldenDigest of the content; a range left
// out or given twice is an error, never a wrong digest.
func TestGoldenHasherAnyOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const size = 5<<20 + 777
	r := rand.New(rand.NewPCG(5, 6))
	content := make([]byte, size)
	for off := 0; off < size; off += 64 << 10 {
		if r.IntN(2) == 0 {
			for i := off; i < min(off+64<<10, size); i++ {
				content[i] = byte(r.UintN(256))
			}
		}
	}
	p := filepath.Join(t.TempDir(), "content")
	require.NoError(t, os.WriteFile(p, content, 0o600))
	want, err := GoldenDigest(ctx, p)
	require.NoError(t, err)

	type piece struct{ off, end int64 }
	var pieces []piece
	for off := int64(0); off < size; {
		n := min(int64(1+r.IntN(3<<20)), size-off)
		pieces = append(pieces, piece{off, off + n})
		off += n
	}
	r.Shuffle(len(pieces), func(i, j int) { pieces[i], pieces[j] = pieces[j], pieces[i] })
	h := NewGoldenHasher(size)
	var wg sync.WaitGroup
	for _, pc := range pieces {
		wg.Go(func() {
			b := content[pc.off:pc.end]
			if allZero(b) {
				h.Zeros(pc.off, pc.end)
			} else {
				h.Data(pc.off, b)
			}
		})
	}
	wg.Wait()
	got, err := h.Sum()
	require.NoError(t, err)
	require.Equal(t, want, got)

	short := NewGoldenHasher(size)
	short.Data(0, content[:size-1])
	_, err = short.Sum()
	require.ErrorIs(t, err, ErrDigestIncomplete)
	twice := NewGoldenHasher(size)
	twice.Data(0, content)
	twice.Zeros(4096, 8192)
	_, err = twice.Sum()
	require.ErrorIs(t, err, ErrDigestIncomplete)
}
