package volumetest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// testCreateExactSize: a new volume has exactly the size asked for, at the
// backend's path, and Lookup finds it as Create returned it; Delete removes
// it, and deleting it again is no error.
func (s *suite[B]) testCreateExactSize(t *testing.T) {
	b := s.h.New(t)
	ctx := t.Context()
	const name = "vt-create"
	requireAbsent(t, b, name)

	vol := s.create(t, b, name, s.h.Size)
	require.Equal(t, volume.Volume{Name: name, Path: s.h.Path(b, name), Size: s.h.Size}, vol)
	require.Equal(t, vol, lookup(t, b, name))
	s.requirePath(t, vol)
	if s.h.NewReadsAsZeros {
		data := s.read(t, vol)
		require.Len(t, data, int(vol.Size))
		require.True(t, fsutil.AllZero(data), "a new volume reads as zeros")
	}
	if r, ok := any(b).(volume.Refresher); ok {
		require.NoError(t, r.Refresh(ctx))
	}

	require.NoError(t, b.Delete(ctx, name))
	requireAbsent(t, b, name)
	_, err := os.Lstat(vol.Path)
	require.ErrorIs(t, err, os.ErrNotExist, "the volume's path is gone")
	require.NoError(t, b.Delete(ctx, name), "deleting a missing volume is not an error")
}

// requirePath checks that vol's path holds exactly vol.Size bytes: a
// regular file, or, where the backend's paths are symlinks, a symlink to a
// block device.
func (s *suite[B]) requirePath(t *testing.T, vol volume.Volume) {
	t.Helper()
	st, err := os.Lstat(vol.Path)
	require.NoError(t, err)
	if s.h.Symlinks == SymlinkResolved {
		require.NotZero(t, st.Mode()&os.ModeSymlink, "%s is a symlink", vol.Path)
		real, err := filepath.EvalSymlinks(vol.Path)
		require.NoError(t, err)
		st, err = os.Stat(real)
		require.NoError(t, err)
		require.True(t, fsutil.IsBlockDevice(st), "%s is a block device", real)
	} else {
		require.True(t, st.Mode().IsRegular(), "%s is a regular file (mode %s)", vol.Path, st.Mode())
	}
	require.Equal(t, vol.Size, deviceSize(t, vol.Path))
}

// testCreateRefusesBadSizes: a size that is not positive makes nothing.
func (s *suite[B]) testCreateRefusesBadSizes(t *testing.T) {
	b := s.h.New(t)
	const name = "vt-badsize"
	for _, size := range []int64{0, -s.h.Size} {
		_, err := b.Create(t.Context(), name, size)
		require.ErrorContains(t, err, "is not positive", "size %d", size)
	}
	requireAbsent(t, b, name)
	require.NotContains(t, s.h.Names(t, b), name, "nothing was created")
}

// testReuseWithinFivePercent: Lookup reports the size Create made, so an
// existing volume passes volume.CheckReuse for requests it is within 5% of;
// deciding so changes nothing.
func (s *suite[B]) testReuseWithinFivePercent(t *testing.T) {
	b, vol := s.existing(t, "vt-reuse")
	size := vol.Size
	for _, req := range []int64{size, size + size/25, size - size/25} {
		require.NoError(t, volume.CheckReuse(vol, req), "a %d-byte volume for a request of %d", size, req)
	}
	require.Equal(t, vol, lookup(t, b, vol.Name), "the reused volume is as it was")
}

// testRefuseOutsideFivePercent: requests the volume is more than 5% from
// are refused with volume.ErrSizeMismatch, and the volume is left as it is.
func (s *suite[B]) testRefuseOutsideFivePercent(t *testing.T) {
	b, vol := s.existing(t, "vt-refuse")
	size := vol.Size
	for _, req := range []int64{size + size*6/100, size - size*6/100, 2 * size, size / 2} {
		err := volume.CheckReuse(vol, req)
		require.ErrorIs(t, err, volume.ErrSizeMismatch, "a %d-byte volume for a request of %d", size, req)
		require.ErrorContains(t, err, "outside the ±5% a reused volume may differ")
	}
	require.Equal(t, vol, lookup(t, b, vol.Name), "the refused volume is as it was")
}

// existing makes volume name of Harness.Size on a new backend and returns
// them as a later Lookup finds the volume: a volume a job may reuse.
func (s *suite[B]) existing(t *testing.T, name string) (B, volume.Volume) {
	t.Helper()
	b := s.h.New(t)
	s.create(t, b, name, s.h.Size)
	vol := lookup(t, b, name)
	require.Equal(t, s.h.Size, vol.Size)
	return b, vol
}

// testNeverResizes: Create refuses a name that exists, whatever the size,
// and leaves the volume's size and bytes as they were.
func (s *suite[B]) testNeverResizes(t *testing.T) {
	b := s.h.New(t)
	const name = "vt-resize"
	size := s.h.Size
	vol := s.create(t, b, name, size)
	data := pattern("the VM's own data ", size)
	writeAt(t, vol.Path, data)
	for _, other := range []int64{size / 2, size + size/25, 2 * size} {
		_, err := b.Create(t.Context(), name, other)
		require.EqualError(t, err, s.h.ExistsError(b, name), "create %s again with %d bytes", name, other)
	}
	require.Equal(t, vol, lookup(t, b, name), "a failed create leaves the volume alone")
	requireBytes(t, data, s.read(t, vol), "the volume's bytes are as they were")
}

// testForeignVolumeKept: a volume the project did not create is found as
// it is, and Create refuses its name without touching it.
func (s *suite[B]) testForeignVolumeKept(t *testing.T) {
	b := s.h.New(t)
	const name = "vt-foreign"
	data := s.h.PutForeign(t, b, name)
	vol := lookup(t, b, name)
	require.Equal(t, volume.Volume{Name: name, Path: s.h.Path(b, name), Size: int64(len(data))}, vol)
	_, err := b.Create(t.Context(), name, s.h.Size)
	require.EqualError(t, err, s.h.ExistsError(b, name))
	require.Equal(t, vol, lookup(t, b, name), "the existing volume is untouched")
	requireBytes(t, data, s.read(t, vol), "the existing volume's bytes are untouched")
}

// testDeleteRemovesOnlyThatVolume: removing the volume a job created (its
// rollback) leaves every other volume, whoever made it, as it was.
func (s *suite[B]) testDeleteRemovesOnlyThatVolume(t *testing.T) {
	b := s.h.New(t)
	ctx := t.Context()
	foreign := s.h.PutForeign(t, b, "vt-other")
	s.create(t, b, "vt-keep.1", s.h.Size)
	s.create(t, b, "vt-keep_2", s.h.Size)
	s.create(t, b, "vt-rollback", s.h.Size)

	require.NoError(t, b.Delete(ctx, "vt-rollback"))
	names := s.h.Names(t, b)
	require.NotContains(t, names, "vt-rollback")
	require.Contains(t, names, "vt-keep.1")
	require.Contains(t, names, "vt-keep_2")
	require.Contains(t, names, "vt-other")
	requireBytes(t, foreign, s.read(t, lookup(t, b, "vt-other")), "the volume the project did not create is untouched")
	require.NoError(t, b.Delete(ctx, "vt-rollback"), "deleting it again is not an error")
}
