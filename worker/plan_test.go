package worker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/google/uuid"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
	"github.com/libvirt-volume-provisioner/provisioner/volume/file"
)

const gib = int64(1) << 30

// planFixture is a worker on an in-process JetStream with a file backend,
// without a consumer: the test calls the plan's stages itself.
type planFixture struct {
	w   *Worker
	dir string
}

func newPlanFixture(t *testing.T, cfg Config) *planFixture {
	t.Helper()
	js := testenv.JetStream(t)
	subjects := messaging.NewSubjects("")
	require.NoError(t, messaging.Setup(t.Context(), js, subjects, messaging.DefaultLimits()))
	dir := filepath.Join(t.TempDir(), "volumes")
	b, err := file.NewWithoutClones(dir)
	require.NoError(t, err)
	cfg.Host = "h1"
	log := logrus.New()
	log.SetOutput(os.Stderr)
	w, err := New(t.Context(), cfg, js.Conn(), subjects, Parts{Backend: b}, log)
	require.NoError(t, err)
	return &planFixture{w: w, dir: dir}
}

// plan is a running attempt's image plan for volume name of sizeGB GiB.
func (f *planFixture) plan(t *testing.T, name string, sizeGB int64, volumeCreated bool) *imagePlan {
	t.Helper()
	m := messaging.Job{Kind: messaging.KindProvision, VolumeName: name, VolumeSizeGB: sizeGB, ImageURL: "http://127.0.0.1:9/images/disk.qcow2"}
	rec := kvstate.Job{JobID: uuid.NewString(), Hypervisor: "h1", Kind: m.Kind, VolumeName: name, Status: kvstate.StatusRunning,
		Attempt: 1, AttemptID: uuid.NewString(), VolumeCreated: volumeCreated}
	rev, err := f.w.jobs.Create(t.Context(), rec)
	require.NoError(t, err)
	att := f.w.jobs.Attempt(rec, rev)
	rep := newReporter(f.w, t.Context(), logrus.NewEntry(f.w.log), att)
	return &imagePlan{w: f.w, rep: rep, rec: rec, job: m, lease: &leaseRenewer{}}
}

// put makes a volume file of size bytes that the project did not create.
func (f *planFixture) put(t *testing.T, name string, size int64) string {
	t.Helper()
	p := filepath.Join(f.dir, name)
	require.NoError(t, os.WriteFile(p, []byte("the operator's data"), 0o600))
	require.NoError(t, os.Truncate(p, size))
	return p
}

// TestPrepareVolume: the plan's prepareVolume stage finds, reuses or
// refuses the volume, under the volume's lease, and changes nothing of
// what it refuses.
func TestPrepareVolume(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name          string
		cfg           Config
		existing      int64 // size of a volume already there; 0 for none
		volumeCreated bool  // an earlier attempt of the job created it
		hold          bool  // another process holds a lock on the volume
		wantExists    bool
		wantCreated   bool
		wantErr       error
		wantMsg       string
	}{
		{name: "no volume", wantExists: false},
		{name: "reused at the size asked", existing: gib, wantExists: true},
		{name: "reused 4% larger", existing: gib + gib*4/100, wantExists: true},
		{name: "refused 10% larger", existing: gib + gib/10, wantErr: volume.ErrSizeMismatch},
		{name: "refused 10% smaller", existing: gib - gib/10, wantErr: volume.ErrSizeMismatch},
		{name: "an earlier attempt's volume is not held to the reuse rule", existing: gib + gib/10, volumeCreated: true, wantExists: true, wantCreated: true},
		{name: "refused while in use", existing: gib, hold: true, wantErr: volume.ErrInUse},
		{name: "refused outside the allowed names", cfg: Config{VolumeAllow: regexp.MustCompile(`^vm-`)}, wantMsg: "is not one this worker may touch (PROVISIONER_VOLUME_ALLOW=^vm-)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newPlanFixture(t, c.cfg)
			var path string
			if c.existing > 0 {
				path = f.put(t, "disk-1", c.existing)
			}
			if c.hold {
				fd, err := os.OpenFile(path, os.O_RDWR, 0)
				require.NoError(t, err)
				defer fd.Close()
				lk := unix.Flock_t{Type: unix.F_RDLCK, Start: 100, Len: 1}
				require.NoError(t, unix.FcntlFlock(fd.Fd(), unix.F_OFD_SETLK, &lk))
			}
			p := f.plan(t, "disk-1", 1, c.volumeCreated)
			unlock, err := p.prepareVolume(t.Context())
			require.NotNil(t, unlock, "unlock is never nil")
			defer unlock()
			switch {
			case c.wantErr != nil:
				require.ErrorIs(t, err, c.wantErr)
			case c.wantMsg != "":
				require.ErrorContains(t, err, c.wantMsg)
			default:
				require.NoError(t, err)
				require.Equal(t, c.wantExists, p.exists)
				require.Equal(t, c.wantCreated, p.res.created)
			}
			if path != "" {
				st, serr := os.Stat(path)
				require.NoError(t, serr)
				require.Equal(t, c.existing, st.Size(), "never resized")
				head := make([]byte, 19)
				fd, oerr := os.Open(path)
				require.NoError(t, oerr)
				_, _ = fd.ReadAt(head, 0)
				fd.Close()
				require.Equal(t, "the operator's data", string(head), "never written")
			}
		})
	}
}

// TestPrepareVolumeLease: while one job's prepareVolume holds a volume's
// lease, another running job's is refused; unlock lets it through.
func TestPrepareVolumeLease(t *testing.T) {
	t.Parallel()
	f := newPlanFixture(t, Config{})
	first := f.plan(t, "disk-1", 1, false)
	unlock, err := first.prepareVolume(t.Context())
	require.NoError(t, err)

	second := f.plan(t, "disk-1", 1, false)
	unlock2, err := second.prepareVolume(t.Context())
	var held *kvstate.LeaseHeldError
	require.True(t, errors.As(err, &held), "want a LeaseHeldError, got %v", err)
	require.Equal(t, first.rec.JobID, held.JobID)
	unlock2()

	unlock()
	unlock3, err := second.prepareVolume(context.WithoutCancel(t.Context()))
	require.NoError(t, err, "the lease was released")
	unlock3()
}
