package volumetest

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// testSymlinks: a volume whose path is a symlink the backend did not make
// is refused, and what it points to is never written or removed.
func (s *suite[B]) testSymlinks(t *testing.T) {
	if s.h.Symlinks == SymlinkResolved {
		t.Skip("the backend's own paths are symlinks; CreateExactSize checks that they lead to the device")
	}
	b := s.h.New(t)
	ctx := t.Context()
	outside := filepath.Join(t.TempDir(), "precious")
	require.NoError(t, os.WriteFile(outside, []byte("keep me"), 0o600))
	const name = "vt-link"
	s.h.PutSymlink(t, b, name, outside)

	_, _, err := b.Lookup(ctx, name)
	require.ErrorContains(t, err, "is a symlink; refusing to touch it")
	_, err = b.Create(ctx, name, s.h.Size)
	require.Error(t, err)
	err = b.Delete(ctx, name)
	if s.h.Symlinks == SymlinkRefused {
		require.ErrorContains(t, err, "is a symlink; refusing to touch it")
		require.Contains(t, s.h.Names(t, b), name, "the link is left where it is")
	} else {
		require.NoError(t, err)
		require.NotContains(t, s.h.Names(t, b), name, "the link is removed")
	}
	data, err := os.ReadFile(outside)
	require.NoError(t, err)
	require.Equal(t, "keep me", string(data), "what the link points to is untouched")
}

// testUnusable: what is at a volume's name but cannot be written as a raw
// volume is refused, and left where it is.
func (s *suite[B]) testUnusable(t *testing.T) {
	if s.h.PutUnusable == nil {
		t.Skip("the backend's storage holds nothing under a volume's name that is not a volume")
	}
	b := s.h.New(t)
	const name = "vt-unusable"
	want := s.h.PutUnusable(t, b, name)
	_, _, err := b.Lookup(t.Context(), name)
	require.ErrorContains(t, err, want)
	_, err = b.Create(t.Context(), name, s.h.Size)
	require.EqualError(t, err, s.h.ExistsError(b, name))
	require.Contains(t, s.h.Names(t, b), name, "it is left where it is")
}

// testInvalidNames: every call refuses a name that is not a valid volume
// name, and nothing is created.
func (s *suite[B]) testInvalidNames(t *testing.T) {
	b := s.h.New(t)
	ctx := t.Context()
	uc, isUseChecker := any(b).(volume.UseChecker)
	names := slices.Concat(CommonInvalidNames, s.h.InvalidNames)
	for _, name := range names {
		_, _, err := b.Lookup(ctx, name)
		s.requireNameError(t, err, "Lookup(%q)", name)
		_, err = b.Create(ctx, name, s.h.Size)
		s.requireNameError(t, err, "Create(%q)", name)
		s.requireNameError(t, b.Delete(ctx, name), "Delete(%q)", name)
		if isUseChecker {
			s.requireNameError(t, uc.CheckNotInUse(ctx, volume.Volume{Name: name}), "CheckNotInUse(%q)", name)
		}
	}
	have := s.h.Names(t, b)
	for _, name := range names {
		require.NotContains(t, have, name, "nothing was created")
	}
}

// requireNameError checks that err refuses an invalid name.
func (s *suite[B]) requireNameError(t *testing.T, err error, call string, name string) {
	t.Helper()
	if s.h.NameError == "" {
		require.Error(t, err, call, name)
		return
	}
	require.ErrorContains(t, err, s.h.NameError, call, name)
}
