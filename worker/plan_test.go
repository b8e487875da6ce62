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

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline"
	"github.com/libvirt-volume-provisioner/provisioner/volume/file"
)

// planFixture is a worker on an in-process JetStream with a file backend,
// without a consumer: the test calls the stages of the plans the worker
// makes (pipeline's own tests cover the stages themselves).
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

// plan is the plan the worker makes for a running attempt of an image job
// into volume name, and the job's record.
func (f *planFixture) plan(t *testing.T, name string) (*pipeline.Plan, kvstate.Job) {
	t.Helper()
	m := messaging.Job{Kind: messaging.KindProvision, VolumeName: name, VolumeSizeGB: 1, ImageURL: "http://127.0.0.1:9/images/disk.qcow2"}
	rec := kvstate.Job{JobID: uuid.NewString(), Hypervisor: "h1", Kind: m.Kind, VolumeName: name, Status: kvstate.StatusRunning,
		Attempt: 1, AttemptID: uuid.NewString()}
	rev, err := f.w.jobs.Create(t.Context(), rec)
	require.NoError(t, err)
	att := f.w.jobs.Attempt(rec, rev)
	rep := newReporter(f.w, t.Context(), logrus.NewEntry(f.w.log), att)
	return f.w.imagePlan(rep, rec, m, &leaseRenewer{}), rec
}

// TestPlanVolumeLease: the plan's volume lock is the worker's lease in the
// volumes bucket: while one job's PrepareVolume holds it, another running
// job's is refused, naming the job that holds it; unlock lets it through.
func TestPlanVolumeLease(t *testing.T) {
	t.Parallel()
	f := newPlanFixture(t, Config{})
	first, rec := f.plan(t, "disk-1")
	unlock, err := first.PrepareVolume(t.Context())
	require.NoError(t, err)

	second, _ := f.plan(t, "disk-1")
	unlock2, err := second.PrepareVolume(t.Context())
	var held *kvstate.LeaseHeldError
	require.True(t, errors.As(err, &held), "want a LeaseHeldError, got %v", err)
	require.Equal(t, rec.JobID, held.JobID)
	unlock2()

	unlock()
	unlock3, err := second.PrepareVolume(context.WithoutCancel(t.Context()))
	require.NoError(t, err, "the lease was released")
	unlock3()
}

// TestPlanVolumeAllow: the plan applies PROVISIONER_VOLUME_ALLOW before it
// takes the lease or looks at the volume, and says which rule refused it.
func TestPlanVolumeAllow(t *testing.T) {
	t.Parallel()
	f := newPlanFixture(t, Config{VolumeAllow: regexp.MustCompile(`^vm-`)})
	p, _ := f.plan(t, "disk-1")
	unlock, err := p.PrepareVolume(t.Context())
	require.NotNil(t, unlock)
	require.ErrorContains(t, err, `volume "disk-1" is not one this worker may touch (PROVISIONER_VOLUME_ALLOW=^vm-)`)
	unlock()
	other, _ := f.plan(t, "disk-1")
	f.w.cfg.VolumeAllow = nil
	unlock, err = other.PrepareVolume(t.Context())
	require.NoError(t, err, "the refused plan took no lease")
	unlock()
}
