package pipeline

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// foreign makes a volume file of size bytes in dir that the project did
// not create, and returns its path.
func foreign(t *testing.T, dir, name string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte("the operator's data"), 0o600))
	require.NoError(t, os.Truncate(p, size))
	return p
}

// requireUntouched fails unless the file foreign made is as it made it.
func requireUntouched(t *testing.T, path string, size int64) {
	t.Helper()
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, size, st.Size(), "never resized")
	head := make([]byte, 19)
	fd, err := os.Open(path)
	require.NoError(t, err)
	defer fd.Close()
	_, _ = fd.ReadAt(head, 0)
	require.Equal(t, "the operator's data", string(head), "never written")
}

// TestPrepareVolume: the PrepareVolume stage finds, reuses or refuses the
// volume, under the volume's lock, and changes nothing of what it refuses.
func TestPrepareVolume(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name          string
		existing      int64 // size of a volume already there; 0 for none
		volumeCreated bool  // an earlier attempt of the job created it
		hold          bool  // another process holds a lock on the volume
		disallow      bool  // VolumeAllowed refuses the name
		leased        bool  // another job holds the volume's lock
		wantExists    bool
		wantCreated   bool
		wantErr       error
	}{
		{name: "no volume", wantExists: false},
		{name: "reused at the size asked", existing: gib, wantExists: true},
		{name: "reused 4% larger", existing: gib + gib*4/100, wantExists: true},
		{name: "refused 10% larger", existing: gib + gib/10, wantErr: volume.ErrSizeMismatch},
		{name: "refused 10% smaller", existing: gib - gib/10, wantErr: volume.ErrSizeMismatch},
		{name: "an earlier attempt's volume is not held to the reuse rule", existing: gib + gib/10, volumeCreated: true, wantExists: true, wantCreated: true},
		{name: "refused while in use", existing: gib, hold: true, wantErr: volume.ErrInUse},
		{name: "refused by name before the lock", existing: gib, disallow: true, leased: true, wantErr: errNotAllowed},
		{name: "refused while another job holds the lock", existing: gib, leased: true, wantErr: kvstate.ErrLeaseHeld},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := newHost(t, convert.Native{}, t.TempDir(), false)
			var path string
			if c.existing > 0 {
				path = foreign(t, h.dir, "disk-1", c.existing)
			}
			if c.hold {
				fd, err := os.OpenFile(path, os.O_RDWR, 0)
				require.NoError(t, err)
				defer fd.Close()
				lk := unix.Flock_t{Type: unix.F_RDLCK, Start: 100, Len: 1}
				require.NoError(t, unix.FcntlFlock(fd.Fd(), unix.F_OFD_SETLK, &lk))
			}
			if c.leased {
				other, _ := h.plan(messaging.Job{VolumeName: "disk-1"})
				release, err := other.Lock(t.Context(), "disk-1")
				require.NoError(t, err)
				defer release()
			}
			p, rec := h.plan(messaging.Job{Kind: messaging.KindProvision, VolumeName: "disk-1", VolumeSizeGB: 1})
			p.VolumeCreated = c.volumeCreated
			if c.disallow {
				p.VolumeAllowed = func(string) error { return errNotAllowed }
			}
			unlock, err := p.PrepareVolume(t.Context())
			require.NotNil(t, unlock, "unlock is never nil")
			defer unlock()
			require.True(t, rec.seen(stages.Volume))
			if c.wantErr != nil {
				require.ErrorIs(t, err, c.wantErr)
			} else {
				require.NoError(t, err)
				require.Equal(t, c.wantExists, p.exists)
				require.Equal(t, c.wantCreated, p.res.Created)
			}
			if path != "" {
				requireUntouched(t, path, c.existing)
			}
		})
	}
}

var errNotAllowed = errors.New("not a volume this worker may touch")

// TestRun: whole plans on a host with both converters, one after another
// as a host meets them: the first job of an image (a miss, streamed where
// the converter streams), a second (a hit) into a new volume, and a third
// into the first job's volume again (reused). Each volume reads as the
// image, and the result says what the plan did.
func TestRun(t *testing.T) {
	t.Parallel()
	for name, conv := range map[string]convert.Converter{"native": convert.Native{}, "qemu-img": convert.QemuImg{}} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			h := newHost(t, conv, t.TempDir(), false)
			url, digest, ref := h.put("disk.qcow2", 64*MiB, 7)
			job := func(name string) messaging.Job {
				return messaging.Job{Kind: messaging.KindProvision, ImageURL: url, VolumeName: name, VolumeSizeGB: 1}
			}
			steps := []struct {
				name        string
				volume      string
				wantHit     bool
				wantCreated bool
			}{
				{"a miss into a new volume", "vm-1", false, true},
				{"a hit into a new volume", "vm-2", true, true},
				{"a hit into an existing volume", "vm-1", true, false},
			}
			for _, s := range steps {
				p, rec := h.plan(job(s.volume))
				res, err := p.Run(t.Context())
				require.NoError(t, err, s.name)
				path := filepath.Join(h.dir, s.volume)
				require.Equal(t, Result{CacheHit: s.wantHit, ImagePath: res.ImagePath, Checksum: digest, VolumePath: path, VolumeSize: gib, Created: s.wantCreated, Writing: true}, res, s.name)
				require.NotEmpty(t, res.ImagePath, s.name)
				require.FileExists(t, res.ImagePath, "%s: the image stays cached", s.name)
				require.Equal(t, s.wantCreated, rec.created, "%s: the record says the job created the volume", s.name)
				require.NotNil(t, rec.hit, s.name)
				require.Equal(t, s.wantHit, *rec.hit, s.name)
				require.True(t, rec.seen(stages.Inspect, stages.Volume, stages.Populate, stages.Finalize), "%s: stages in order: %v", s.name, rec.stages)
				testenv.RequireVolumeIs(t, path, gib, ref)
			}
		})
	}
}

// TestRunRefusedImageKeepsTheVolume: an image whose digest is not the one
// published, or that has a backing file, fails the plan, and the existing
// volume it named is as it was (nothing written, nothing removed), and the
// refused image is not left in the cache.
func TestRunRefusedImageKeepsTheVolume(t *testing.T) {
	t.Parallel()
	h := newHost(t, convert.Native{}, t.TempDir(), false)
	path := foreign(t, h.dir, "vm-1", gib)

	qcow2, _ := testenv.QCOW2Image(t, t.TempDir(), 16*MiB, 3)
	url, _, err := h.m.PutImage(t.Context(), h.bucket, "bad-digest.qcow2", qcow2, false)
	require.NoError(t, err)
	require.NoError(t, h.m.PutBytes(t.Context(), h.bucket, "bad-digest.qcow2.sha256", []byte(
		"0000000000000000000000000000000000000000000000000000000000000000  bad-digest.qcow2\n")))

	backed := filepath.Join(t.TempDir(), "backed.qcow2")
	testenv.RunQemuImg(t, "create", "-f", "qcow2", "-F", "qcow2", "-b", qcow2, backed)
	backedURL, _, err := h.m.PutImage(t.Context(), h.bucket, "backed.qcow2", backed, true)
	require.NoError(t, err)

	for _, c := range []struct{ url, want string }{
		{url, "checksum"},
		{backedURL, "backing file"},
	} {
		p, rec := h.plan(messaging.Job{Kind: messaging.KindProvision, ImageURL: c.url, VolumeName: "vm-1", VolumeSizeGB: 1})
		res, err := p.Run(t.Context())
		require.ErrorContains(t, err, c.want)
		require.False(t, res.Created, "the volume is not the job's")
		require.False(t, res.Writing, "nothing was written")
		require.False(t, rec.created)
		requireUntouched(t, path, gib)
	}
	entries, err := os.ReadDir(h.parts.Cache.Dir())
	require.NoError(t, err)
	for _, e := range entries {
		require.False(t, e.Type().IsRegular(), "a refused image left in the cache: %s", e.Name())
	}
}

// TestRunByClone: where the backend clones (reflinks on XFS), a cache
// fetch makes the image's golden, and every job after it clones the golden
// instead of converting: new volumes are clones, an existing one is
// replaced by a fresh clone, and a write into one clone changes neither
// the golden nor another clone.
func TestRunByClone(t *testing.T) {
	t.Parallel()
	h := newHost(t, convert.Native{}, testenv.FileSystem(t, testenv.XFS), true)
	ok, why := h.parts.Backend.(volume.Cloner).CloneSupport()
	require.True(t, ok, "XFS with reflink=1 clones: %s", why)
	url, digest, ref := h.put("disk.qcow2", 64*MiB, 11)

	fetch, rec := h.plan(messaging.Job{Kind: messaging.KindCacheFetch, ImageURL: url})
	res, err := fetch.Run(t.Context())
	require.NoError(t, err)
	require.False(t, res.CacheHit)
	require.False(t, rec.seen(stages.Volume), "a cache fetch touches no volume")
	g, ok, err := h.parts.Cache.(GoldenCache).Golden(t.Context(), fetch.ji.key)
	require.NoError(t, err)
	require.True(t, ok, "the cache fetch made the image's golden")
	testenv.RequireVolumeIs(t, g.Path, g.Size, ref)
	goldenBefore, err := os.Stat(g.Path)
	require.NoError(t, err)

	provision := func(name string, wantCreated bool) {
		t.Helper()
		p, rec := h.plan(messaging.Job{Kind: messaging.KindProvision, ImageURL: url, VolumeName: name, VolumeSizeGB: 1})
		res, err := p.Run(t.Context())
		require.NoError(t, err)
		path := filepath.Join(h.dir, name)
		require.Equal(t, Result{CacheHit: true, ImagePath: res.ImagePath, Checksum: digest, VolumePath: path, VolumeSize: gib, Created: wantCreated, Cloned: true}, res)
		require.Equal(t, wantCreated, rec.created)
		testenv.RequireVolumeIs(t, path, gib, ref)
	}
	provision("vm-1", true)
	provision("vm-2", true)

	// The guest writes into vm-1.
	f, err := os.OpenFile(filepath.Join(h.dir, "vm-1"), os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("the guest's own data"), 4096)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	testenv.RequireVolumeIs(t, filepath.Join(h.dir, "vm-2"), gib, ref)
	testenv.RequireVolumeIs(t, g.Path, g.Size, ref)

	// Provisioning vm-1 again gives it a fresh clone.
	provision("vm-1", false)
	goldenAfter, err := os.Stat(g.Path)
	require.NoError(t, err)
	require.True(t, os.SameFile(goldenBefore, goldenAfter), "the golden was made once")
	require.Equal(t, goldenBefore.ModTime(), goldenAfter.ModTime(), "and never written again")
}
