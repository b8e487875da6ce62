package volumetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// testInUse runs inUse for each of the harness's holders.
func (s *suite[B]) testInUse(t *testing.T) {
	if len(s.h.Holders) == 0 {
		_, ok := any(s.h.New(t)).(volume.UseChecker)
		require.False(t, ok, "the backend is a volume.UseChecker: Harness.Holders says how to hold a volume")
		t.Skip("the backend cannot tell whether a volume is in use")
	}
	for i, hd := range s.h.Holders {
		t.Run(hd.Name, func(t *testing.T) {
			t.Parallel()
			s.inUse(t, hd, fmt.Sprintf("vt-held-%d", i), fmt.Sprintf("vt-free-%d", i))
		})
	}
}

// inUse: while hd holds volume name, CheckNotInUse refuses it (and Delete,
// where the backend checks), and what the worker does before it writes
// writes nothing; another volume is not in use meanwhile. Released, the
// volume is written and can be removed.
func (s *suite[B]) inUse(t *testing.T, hd Holder[B], name, free string) {
	b := s.h.New(t)
	ctx := t.Context()
	uc, ok := any(b).(volume.UseChecker)
	require.True(t, ok, "a backend with Harness.Holders is a volume.UseChecker")
	vol := s.create(t, b, name, s.h.Size)
	other := s.create(t, b, free, s.h.Size)
	old := pattern("the VM's own data ", vol.Size)
	writeAt(t, vol.Path, old)
	require.NoError(t, uc.CheckNotInUse(ctx, vol), "nothing holds it yet")

	use := hd.Hold(t, b, vol)
	s.requireInUse(t, uc.CheckNotInUse(ctx, vol), vol.Name, "overwrite", use.Refusal)
	require.NoError(t, uc.CheckNotInUse(ctx, other), "a volume nothing holds is not in use")
	image := bytes.Repeat([]byte{0xAB}, int(vol.Size))
	s.requireInUse(t, provision(ctx, b, name, image), vol.Name, "overwrite", use.Refusal)
	requireBytes(t, old, s.read(t, vol), "nothing was written")
	require.Equal(t, vol, lookup(t, b, name))
	if use.RemoveRefusal != "" {
		s.requireInUse(t, b.Delete(ctx, name), vol.Name, "remove", use.RemoveRefusal)
		require.Equal(t, vol, lookup(t, b, name), "the volume in use is still there")
	}

	use.Release()
	requireBytes(t, old, s.read(t, vol), "the holder did not write either")
	require.NoError(t, uc.CheckNotInUse(ctx, vol), "released, the volume is not in use")
	require.NoError(t, provision(ctx, b, name, image))
	requireBytes(t, image, s.read(t, vol), "once released the volume is written")
	require.NoError(t, b.Delete(ctx, name))
	requireAbsent(t, b, name)
}

// requireInUse checks that err refuses to act on volume name because it is
// in use: it matches volume.ErrInUse, is the backend's typed in-use error
// for name and action, and, where want is set, says want.
func (s *suite[B]) requireInUse(t *testing.T, err error, name, action, want string) {
	t.Helper()
	require.ErrorIs(t, err, volume.ErrInUse)
	if want != "" {
		require.EqualError(t, err, want)
	}
	gotName, gotAction, ok := s.inUseError(err)
	require.True(t, ok, "the refusal is a typed in-use error: %v", err)
	require.Equal(t, name, gotName, "the refusal names the volume")
	require.Equal(t, action, gotAction, "the refusal names what was refused")
}

// inUseError takes apart a typed in-use refusal.
func (s *suite[B]) inUseError(err error) (name, action string, ok bool) {
	if s.h.InUseError != nil {
		return s.h.InUseError(err)
	}
	var e *volume.InUseError
	if !errors.As(err, &e) {
		return "", "", false
	}
	return e.Volume, e.Action, true
}

// provision does what the worker does with an existing volume: look it up,
// check its size, refuse it in use, and only then write data into it.
func provision(ctx context.Context, b volume.Backend, name string, data []byte) error {
	vol, ok, err := b.Lookup(ctx, name)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("volume %q does not exist", name)
	}
	if err := volume.CheckReuse(vol, int64(len(data))); err != nil {
		return err
	}
	if uc, ok := b.(volume.UseChecker); ok {
		if err := uc.CheckNotInUse(ctx, vol); err != nil {
			return err
		}
	}
	return write(vol.Path, data)
}
