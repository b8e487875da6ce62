package testenv

import (
	"bytes"
	"os"
	"testing"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
	"github.com/stretchr/testify/require"
)

// RequireVolumeIs checks that the volume reads as the reference file
// followed by zeros to its end.
func RequireVolumeIs(t *testing.T, path string, size int64, refPath string) {
	t.Helper()
	ref, err := os.ReadFile(refPath)
	require.NoError(t, err)
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Len(t, got, int(size))
	const chunk = 64 << 10
	for off := 0; off < len(ref); off += chunk {
		end := min(off+chunk, len(ref))
		require.True(t, bytes.Equal(ref[off:end], got[off:end]), "volume differs from the image in [%d,%d)", off, end)
	}
	tail := got[len(ref):]
	require.True(t, fsutil.AllZero(tail), "volume is not zero after the image's %d bytes", len(ref))
}
