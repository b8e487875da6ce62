package testenv

import (
	"bytes"
	"errors"
	"os"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// RequireVolumeIs checks that the volume at path is size bytes that read
// as the reference file followed by zeros to its end. Past the reference
// only the volume's data extents are read (SEEK_DATA), so a large sparse
// volume costs what it holds.
func RequireVolumeIs(t *testing.T, path string, size int64, refPath string) {
	t.Helper()
	ref, err := os.ReadFile(refPath)
	require.NoError(t, err)
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	st, err := f.Stat()
	require.NoError(t, err)
	require.Equal(t, size, st.Size(), "the volume's size")
	got := make([]byte, len(ref))
	_, err = f.ReadAt(got, 0)
	require.NoError(t, err)
	const chunk = 64 << 10
	for off := 0; off < len(ref); off += chunk {
		end := min(off+chunk, len(ref))
		require.True(t, bytes.Equal(ref[off:end], got[off:end]), "volume differs from the image in [%d,%d)", off, end)
	}
	buf := make([]byte, 4<<20)
	for off := int64(len(ref)); off < size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return // holes to the end
		}
		require.NoError(t, err)
		n, err := f.ReadAt(buf[:min(int64(len(buf)), size-data)], data)
		if n == 0 {
			require.NoError(t, err)
		}
		require.Equal(t, -1, slices.IndexFunc(buf[:n], func(b byte) bool { return b != 0 }), "volume is not zero after the image's %d bytes (at %d)", len(ref), data)
		off = data + int64(n)
	}
}
