package volumetest

import (
	"bytes"
	"io"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// pattern is size bytes of phrase, repeated.
func pattern(phrase string, size int64) []byte {
	return bytes.Repeat([]byte(phrase), int(size)/len(phrase)+1)[:size]
}

// writeAt writes data at the start of the file or device at path and
// flushes it.
func writeAt(t *testing.T, path string, data []byte) {
	t.Helper()
	require.NoError(t, write(path, data))
}

// write is writeAt that returns its error.
func write(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close() // after the Close below, a no-op
	if _, err := f.WriteAt(data, 0); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// deviceSize is the size of a file or block device, from seeking to its end.
func deviceSize(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	require.NoError(t, err)
	return n
}

// requireBytes checks got is want, naming the first 64 KiB block that
// differs rather than printing both.
func requireBytes(t *testing.T, want, got []byte, what string) {
	t.Helper()
	require.Len(t, got, len(want), what)
	const chunk = 64 << 10
	for off := 0; off < len(want); off += chunk {
		end := min(off+chunk, len(want))
		if !bytes.Equal(want[off:end], got[off:end]) {
			t.Fatalf("%s: the bytes differ in [%d,%d)", what, off, end)
		}
	}
}

// requireHolds checks that vol reads as the raw image's bytes followed by
// zeros to its end.
func (s *suite[B]) requireHolds(t *testing.T, vol volume.Volume, raw string) {
	t.Helper()
	want, err := os.ReadFile(raw)
	require.NoError(t, err)
	require.GreaterOrEqual(t, vol.Size, int64(len(want)), "the volume holds the image")
	got := s.read(t, vol)
	require.Len(t, got, int(vol.Size))
	requireBytes(t, want, got[:len(want)], vol.Path+" holds the image")
	require.True(t, fsutil.AllZero(got[len(want):]), "%s is zero after the image's %d bytes", vol.Path, len(want))
}
