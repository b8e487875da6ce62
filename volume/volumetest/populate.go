package volumetest

import (
	"bytes"
	"testing"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// testPopulate writes the test image, as qcow2 and as raw, into volumes
// full of garbage through both converters the worker has (native, the
// default, and qemu-img), with the Volume as Create returns it.
func (s *suite[B]) testPopulate(t *testing.T) {
	qcow2, raw := s.images(t)
	sources := map[string]string{"qcow2": qcow2, "raw": raw}
	for _, c := range []struct {
		name string
		conv convert.Converter
	}{{"native", convert.Native{}}, {"qemu-img", convert.QemuImg{}}} {
		for _, format := range []string{"qcow2", "raw"} {
			name := c.name + "-" + format
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				s.populate(t, c.conv, sources[format], format, raw, "vt-pop-"+name)
			})
		}
	}
}

// populate converts src into a new volume name and checks that it reads as
// the raw image followed by zeros, and that the converter let go of it.
func (s *suite[B]) populate(t *testing.T, conv convert.Converter, src, format, raw, name string) {
	b := s.h.New(t)
	ctx := t.Context()
	vol := s.create(t, b, name, s.h.Size)
	writeAt(t, vol.Path, bytes.Repeat([]byte{0xAB}, int(vol.Size)))
	img, err := image.Inspect(src, format)
	require.NoError(t, err)
	var last int64
	err = conv.Convert(ctx, img, src, vol, func(stage string, done, total int64) {
		require.Equal(t, stages.Populate, stage)
		require.GreaterOrEqual(t, done, last, "progress never goes backwards")
		last = done
	})
	require.NoError(t, err)
	require.Equal(t, img.VirtualSize, last)
	s.requireHolds(t, vol, raw)
	if uc, ok := any(b).(volume.UseChecker); ok {
		require.NoError(t, uc.CheckNotInUse(ctx, vol), "the converter closed the volume")
	}
	if r, ok := any(b).(volume.Refresher); ok {
		require.NoError(t, r.Refresh(ctx))
	}
	require.Equal(t, vol, lookup(t, b, name), "populating leaves the volume's size as it was")
}

// testPopulateRefusesTooSmall: an image larger than the volume is refused
// before the volume is touched.
func (s *suite[B]) testPopulateRefusesTooSmall(t *testing.T) {
	b := s.h.New(t)
	qcow2, _ := s.images(t)
	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	vol := s.create(t, b, "vt-small", s.h.SmallSize)
	require.Less(t, vol.Size, img.VirtualSize, "the test image is larger than Harness.SmallSize")
	garbage := bytes.Repeat([]byte{0xAB}, int(vol.Size))
	writeAt(t, vol.Path, garbage)
	err = convert.QemuImg{}.Convert(t.Context(), img, qcow2, vol, nil)
	require.ErrorContains(t, err, "larger than the volume's")
	requireBytes(t, garbage, s.read(t, vol), "the volume was not touched")
}
