package volume

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
)

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
			if fsutil.AllZero(b) {
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
