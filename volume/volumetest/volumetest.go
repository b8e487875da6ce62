package volumetest

import (
	"context"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// Harness is what Run needs of a backend. B is the backend's own type (or a
// test type embedding it), so the hooks reach its storage without type
// assertions. The fields without "nil" in their comment are required.
type Harness[B volume.Backend] struct {
	// New returns a backend to test; what it opens is closed when t ends.
	// Backends may share their storage between calls (LVM's volume group):
	// every subtest uses volume names of its own.
	New func(t *testing.T) B
	// Size is the size of the volumes the suite makes: one the backend
	// makes exactly, large enough for the test image's disk (Images).
	Size int64
	// SmallSize is a size the backend makes exactly that is smaller than
	// the test image's disk.
	SmallSize int64
	// Path is the path the backend gives volume name.
	Path func(b B, name string) string
	// NewReadsAsZeros says a new volume reads as zeros (a file); a thick LV
	// holds what its extents held before.
	NewReadsAsZeros bool
	// ExistsError is Create's whole error for a name that exists.
	ExistsError func(b B, name string) string
	// InvalidNames are names the backend refuses besides CommonInvalidNames.
	InvalidNames []string
	// NameError is what the error for an invalid name contains; "" asks
	// only for an error.
	NameError string
	// Names lists the volumes the backend's storage holds, whoever made
	// them: what a refusal must leave as it was (DirNames for a directory).
	Names func(t *testing.T, b B) []string
	// Read returns vol's bytes as the storage holds them; nil reads the file
	// at vol.Path.
	Read func(t *testing.T, vol volume.Volume) []byte
	// PutForeign makes a volume name in the storage as something other than
	// the project would (an administrator, another tool), and returns its
	// bytes; it is removed when t ends.
	PutForeign func(t *testing.T, b B, name string) []byte
	// PutUnusable puts at name something the backend must not write into (a
	// directory, a qcow2 file, an inactive LV) and returns what Lookup's
	// refusal of it says; nil when there is no such thing.
	PutUnusable func(t *testing.T, b B, name string) string
	// Symlinks is what the backend does with symlinks.
	Symlinks Symlinks
	// PutSymlink makes name's path a symlink to target; required unless
	// Symlinks is SymlinkResolved.
	PutSymlink func(t *testing.T, b B, name, target string)
	// Holders are the ways something can hold a volume, for backends that
	// are a volume.UseChecker.
	Holders []Holder[B]
	// InUseError takes apart an in-use refusal of a type of the backend's
	// own: the volume's name and the action refused; ok is false when err
	// is none. nil means the refusal must be a *volume.InUseError.
	InUseError func(err error) (name, action string, ok bool)
	// Images returns the test image as a qcow2 file and its disk as a raw
	// file; nil makes them (about 12 MiB of disk) with qemu-img.
	Images func(t *testing.T) (qcow2, raw string)
}

// Symlinks is what a backend does with a volume path that is a symlink.
type Symlinks int

const (
	// SymlinkRefused: a volume whose path is a symlink is never touched:
	// Lookup, Create and Delete refuse it.
	SymlinkRefused Symlinks = iota
	// SymlinkUnlinked: Lookup and Create refuse a volume whose path is a
	// symlink; Delete removes the link, never what it points to.
	SymlinkUnlinked
	// SymlinkResolved: the backend's own volume paths are symlinks (LVM's
	// /dev/<vg>/<lv>), which it follows to the device.
	SymlinkResolved
)

// Holder is one way something can hold a volume.
type Holder[B volume.Backend] struct {
	// Name names the subtest.
	Name string
	// Hold makes vol in use until the Use's Release (or the end of t).
	Hold func(t *testing.T, b B, vol volume.Volume) Use
}

// Use is a volume being held.
type Use struct {
	// Release ends the use.
	Release func()
	// Refusal is CheckNotInUse's whole error for the volume meanwhile.
	Refusal string
	// RemoveRefusal is Delete's whole error for the volume meanwhile; ""
	// when Delete does not check (the worker checks before it writes, and
	// removes only volumes it has just created).
	RemoveRefusal string
}

// CommonInvalidNames are names every backend refuses.
var CommonInvalidNames = []string{"", ".", "..", "../x", "a/b"}

// Run runs the conformance suite against the backend h describes; each
// subtest runs in parallel with a backend of its own from h.New.
func Run[B volume.Backend](t *testing.T, h Harness[B]) {
	t.Helper()
	h.check(t)
	s := &suite[B]{h: h}
	for _, tc := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"CreateExactSize", s.testCreateExactSize},
		{"CreateRefusesBadSizes", s.testCreateRefusesBadSizes},
		{"ReuseWithinFivePercent", s.testReuseWithinFivePercent},
		{"RefuseOutsideFivePercent", s.testRefuseOutsideFivePercent},
		{"NeverResizes", s.testNeverResizes},
		{"ForeignVolumeKept", s.testForeignVolumeKept},
		{"DeleteRemovesOnlyThatVolume", s.testDeleteRemovesOnlyThatVolume},
		{"InUse", s.testInUse},
		{"Populate", s.testPopulate},
		{"PopulateRefusesTooSmall", s.testPopulateRefusesTooSmall},
		{"Symlinks", s.testSymlinks},
		{"Unusable", s.testUnusable},
		{"InvalidNames", s.testInvalidNames},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t)
		})
	}
}

// check fails t when a required field of h is missing.
func (h Harness[B]) check(t *testing.T) {
	t.Helper()
	for field, set := range map[string]bool{
		"New":         h.New != nil,
		"Path":        h.Path != nil,
		"ExistsError": h.ExistsError != nil,
		"Names":       h.Names != nil,
		"PutForeign":  h.PutForeign != nil,
		"PutSymlink":  h.PutSymlink != nil || h.Symlinks == SymlinkResolved,
		"SmallSize":   0 < h.SmallSize && h.SmallSize < h.Size,
	} {
		require.True(t, set, "Harness.%s is required (SmallSize: positive, less than Size)", field)
	}
}

// suite is Run's state: the harness and what the subtests share.
type suite[B volume.Backend] struct {
	h Harness[B]
}

// create makes volume name of size bytes and removes it when t ends.
func (s *suite[B]) create(t *testing.T, b B, name string, size int64) volume.Volume {
	t.Helper()
	vol, err := b.Create(t.Context(), name, size)
	require.NoError(t, err, "create %s", name)
	t.Cleanup(func() {
		if err := b.Delete(context.Background(), name); err != nil {
			t.Errorf("clean up volume %s: %v", name, err)
		}
	})
	return vol
}

// read returns vol's bytes.
func (s *suite[B]) read(t *testing.T, vol volume.Volume) []byte {
	t.Helper()
	if s.h.Read != nil {
		return s.h.Read(t, vol)
	}
	data, err := os.ReadFile(vol.Path)
	require.NoError(t, err)
	return data
}

// images returns the test image and its disk.
func (s *suite[B]) images(t *testing.T) (qcow2, raw string) {
	t.Helper()
	if s.h.Images != nil {
		return s.h.Images(t)
	}
	return testenv.QCOW2Image(t, t.TempDir(), 12<<20+512, 31)
}

// lookup requires that volume name exists and returns it.
func lookup(t *testing.T, b volume.Backend, name string) volume.Volume {
	t.Helper()
	vol, ok, err := b.Lookup(t.Context(), name)
	require.NoError(t, err, "look up %s", name)
	require.True(t, ok, "volume %s exists", name)
	return vol
}

// DirNames lists the names in dir: Harness.Names for backends whose
// volumes are the files of a directory.
func DirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	return names
}

// requireAbsent requires that volume name does not exist.
func requireAbsent(t *testing.T, b volume.Backend, name string) {
	t.Helper()
	_, ok, err := b.Lookup(t.Context(), name)
	require.NoError(t, err, "look up %s", name)
	require.False(t, ok, "volume %s does not exist", name)
}
