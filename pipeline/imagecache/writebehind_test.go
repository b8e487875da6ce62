package imagecache

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestWriteBehindKeepsContent: the write-behind writer writes exactly what
// it is given, across window boundaries and uneven chunk sizes.
func TestWriteBehindKeepsContent(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(path)
	require.NoError(t, err)
	w := &writeBehind{f: f}
	var want []byte
	for i := range 40 {
		chunk := bytes.Repeat([]byte{byte(i + 1)}, 1<<20+i*4097)
		n, err := w.Write(chunk)
		require.NoError(t, err)
		require.Equal(t, len(chunk), n)
		want = append(want, chunk...)
	}
	require.NoError(t, f.Close())
	require.Equal(t, int64(len(want)), w.off)
	require.Equal(t, w.off/writeBehindWindow*writeBehindWindow, w.started)
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got))
}
