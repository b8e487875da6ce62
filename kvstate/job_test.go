package kvstate_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

const (
	jobID1   = "550e8400-e29b-41d4-a716-446655440000"
	jobID2   = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
	imageURL = "http://minio:9000/images/ubuntu.qcow2"
)

var allStatuses = []kvstate.Status{
	kvstate.StatusPending, kvstate.StatusRunning, kvstate.StatusCompleted, kvstate.StatusFailed, kvstate.StatusCancelled,
}

func pendingJob(host, id string) kvstate.Job {
	return kvstate.Job{
		JobID: id, Status: kvstate.StatusPending, Kind: messaging.KindProvision, Hypervisor: host,
		ImageURL: imageURL, ImageType: messaging.ImageQCOW2, VolumeName: "vm-1", VolumeSizeGB: 10,
		CreatedAt: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC), UpdatedAt: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC),
	}
}

func TestStatusTerminal(t *testing.T) {
	t.Parallel()
	want := map[kvstate.Status]bool{
		kvstate.StatusPending: false, kvstate.StatusRunning: false,
		kvstate.StatusCompleted: true, kvstate.StatusFailed: true, kvstate.StatusCancelled: true,
		kvstate.Status(""): false, kvstate.Status("unknown"): false,
	}
	for s, terminal := range want {
		require.Equal(t, terminal, s.Terminal(), "status %q", s)
	}
}

func TestCanMove(t *testing.T) {
	t.Parallel()
	allowed := map[[2]kvstate.Status]bool{
		{kvstate.StatusPending, kvstate.StatusRunning}:   true,
		{kvstate.StatusPending, kvstate.StatusFailed}:    true,
		{kvstate.StatusPending, kvstate.StatusCancelled}: true,
		{kvstate.StatusRunning, kvstate.StatusRunning}:   true,
		{kvstate.StatusRunning, kvstate.StatusCompleted}: true,
		{kvstate.StatusRunning, kvstate.StatusFailed}:    true,
		{kvstate.StatusRunning, kvstate.StatusCancelled}: true,
	}
	statuses := append(append([]kvstate.Status{}, allStatuses...), "", "unknown")
	for _, from := range statuses {
		for _, to := range statuses {
			t.Run(fmt.Sprintf("%s->%s", from, to), func(t *testing.T) {
				t.Parallel()
				require.Equal(t, allowed[[2]kvstate.Status{from, to}], kvstate.CanMove(from, to))
			})
		}
	}
}

func TestTransitionErrorMessage(t *testing.T) {
	t.Parallel()
	err := &kvstate.TransitionError{From: kvstate.StatusCompleted, To: kvstate.StatusRunning}
	require.EqualError(t, err, `cannot move job from "completed" to "running"`)
}

func TestNewJob(t *testing.T) {
	t.Parallel()
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.FixedZone("CEST", 2*3600))
	m := messaging.Job{
		Version: 1, Kind: messaging.KindProvision, JobID: jobID1, Hypervisor: "ignored",
		ImageURL: imageURL, ImageType: messaging.ImageRaw, VolumeName: "vm-1", VolumeSizeGB: 20,
		CorrelationID: "corr", Caller: "alice",
	}

	t.Run("without submitted_at", func(t *testing.T) {
		t.Parallel()
		j := kvstate.NewJob(m, "hv-01", now)
		require.Equal(t, kvstate.Job{
			JobID: jobID1, Status: kvstate.StatusPending, CorrelationID: "corr",
			CreatedAt: now.UTC(), UpdatedAt: now.UTC(),
			Kind: messaging.KindProvision, Hypervisor: "hv-01", ImageURL: imageURL, ImageType: messaging.ImageRaw,
			VolumeName: "vm-1", VolumeSizeGB: 20, Caller: "alice",
		}, j)
		require.Equal(t, time.UTC, j.CreatedAt.Location())
	})

	t.Run("with submitted_at", func(t *testing.T) {
		t.Parallel()
		m := m
		m.SubmittedAt = time.Date(2024, 5, 1, 11, 0, 0, 0, time.FixedZone("X", -3600))
		j := kvstate.NewJob(m, "hv-01", now)
		require.Equal(t, time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC), j.CreatedAt)
		require.Equal(t, time.UTC, j.CreatedAt.Location())
		require.Equal(t, now.UTC(), j.UpdatedAt)
	})
}

func TestJobsCreateGet(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	jobs := kvstate.Jobs{KV: b.Jobs}

	_, _, err := jobs.Get(ctx, "hv-01", jobID1)
	require.ErrorIs(t, err, kvstate.ErrNotFound)
	require.EqualError(t, err, "job record not found")
	require.ErrorIs(t, err, kvstate.ErrJobNotFound)
	require.ErrorIs(t, err, kvstate.ErrNotFound)

	j := pendingJob("hv-01", jobID1)
	rev, err := jobs.Create(ctx, j)
	require.NoError(t, err)
	require.NotZero(t, rev)

	got, gotRev, err := jobs.Get(ctx, "hv-01", jobID1)
	require.NoError(t, err)
	require.Equal(t, rev, gotRev)
	require.Equal(t, j, got)

	// Stored under <host>.<job_id>.
	e, err := b.Jobs.Get(ctx, "hv-01."+jobID1)
	require.NoError(t, err)
	require.Equal(t, rev, e.Revision())

	_, err = jobs.Create(ctx, j)
	require.ErrorIs(t, err, kvstate.ErrExists)
	require.EqualError(t, err, "job already exists")

	// The same job id on another host is another record.
	_, _, err = jobs.Get(ctx, "hv-02", jobID1)
	require.ErrorIs(t, err, kvstate.ErrNotFound)
	_, err = jobs.Create(ctx, pendingJob("hv-02", jobID1))
	require.NoError(t, err)
}

func TestJobsGetCorruptRecord(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	_, err := b.Jobs.Put(ctx, "hv-01."+jobID1, []byte("not json"))
	require.NoError(t, err)

	_, _, err = kvstate.Jobs{KV: b.Jobs}.Get(ctx, "hv-01", jobID1)
	require.EqualError(t, err, "decode job record: invalid character 'o' in literal null (expecting 'u')")
}

func TestJobsUpdate(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	jobs := kvstate.Jobs{KV: b.Jobs}
	rev, err := jobs.Create(ctx, pendingJob("hv-01", jobID1))
	require.NoError(t, err)

	before := time.Now().UTC()
	got, newRev, err := jobs.Update(ctx, "hv-01", jobID1, func(j *kvstate.Job) error {
		j.Status = kvstate.StatusRunning
		j.Attempt = 1
		j.Progress = &kvstate.Progress{Stage: "download", Percent: 5}
		return nil
	})
	require.NoError(t, err)
	require.Greater(t, newRev, rev)
	require.Equal(t, kvstate.StatusRunning, got.Status)
	require.False(t, got.UpdatedAt.Before(before), "UpdatedAt %s is before %s", got.UpdatedAt, before)

	stored, storedRev, err := jobs.Get(ctx, "hv-01", jobID1)
	require.NoError(t, err)
	require.Equal(t, newRev, storedRev)
	require.Equal(t, got, stored)
	require.Equal(t, &kvstate.Progress{Stage: "download", Percent: 5}, stored.Progress)
}

func TestJobsUpdateMissing(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	called := false
	_, _, err := kvstate.Jobs{KV: b.Jobs}.Update(testCtx(t), "hv-01", jobID1, func(*kvstate.Job) error {
		called = true
		return nil
	})
	require.ErrorIs(t, err, kvstate.ErrNotFound)
	require.False(t, called)
}

func TestJobsUpdateCallbackError(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	jobs := kvstate.Jobs{KV: b.Jobs}
	rev, err := jobs.Create(ctx, pendingJob("hv-01", jobID1))
	require.NoError(t, err)

	boom := errors.New("boom")
	cur, gotRev, err := jobs.Update(ctx, "hv-01", jobID1, func(j *kvstate.Job) error {
		j.Error = "changed"
		return boom
	})
	require.Same(t, boom, err)
	require.Equal(t, rev, gotRev)
	require.Empty(t, cur.Error)

	_, storedRev, err := jobs.Get(ctx, "hv-01", jobID1)
	require.NoError(t, err)
	require.Equal(t, rev, storedRev)
}

func TestJobsUpdateRefusesForbiddenTransition(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	jobs := kvstate.Jobs{KV: b.Jobs}
	_, err := jobs.Create(ctx, pendingJob("hv-01", jobID1))
	require.NoError(t, err)
	_, _, err = jobs.Update(ctx, "hv-01", jobID1, func(j *kvstate.Job) error { j.Status = kvstate.StatusRunning; return nil })
	require.NoError(t, err)
	done, rev, err := jobs.Update(ctx, "hv-01", jobID1, func(j *kvstate.Job) error { j.Status = kvstate.StatusCompleted; return nil })
	require.NoError(t, err)

	cur, gotRev, err := jobs.Update(ctx, "hv-01", jobID1, func(j *kvstate.Job) error {
		j.Status = kvstate.StatusRunning
		j.Attempt = 99
		return nil
	})
	var te *kvstate.TransitionError
	require.ErrorAs(t, err, &te)
	require.Equal(t, kvstate.TransitionError{From: kvstate.StatusCompleted, To: kvstate.StatusRunning}, *te)
	require.EqualError(t, err, `cannot move job from "completed" to "running"`)
	require.Equal(t, rev, gotRev)
	require.Equal(t, done, cur)

	stored, storedRev, err := jobs.Get(ctx, "hv-01", jobID1)
	require.NoError(t, err)
	require.Equal(t, rev, storedRev, "nothing may be written")
	require.Equal(t, kvstate.StatusCompleted, stored.Status)
	require.Zero(t, stored.Attempt)

	// pending → completed skips running and is refused too.
	_, err = jobs.Create(ctx, pendingJob("hv-01", jobID2))
	require.NoError(t, err)
	_, _, err = jobs.Update(ctx, "hv-01", jobID2, func(j *kvstate.Job) error { j.Status = kvstate.StatusCompleted; return nil })
	require.EqualError(t, err, `cannot move job from "pending" to "completed"`)
}

func TestJobsUpdateConcurrent(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	jobs := kvstate.Jobs{KV: b.Jobs}
	createRev, err := jobs.Create(ctx, pendingJob("hv-01", jobID1))
	require.NoError(t, err)

	const writers = 20
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		wg.Go(func() {
			_, _, err := jobs.Update(ctx, "hv-01", jobID1, func(j *kvstate.Job) error {
				j.Attempt++
				return nil
			})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	got, rev, err := jobs.Get(ctx, "hv-01", jobID1)
	require.NoError(t, err)
	require.Equal(t, writers, got.Attempt)
	require.Equal(t, createRev+writers, rev, "exactly one write per update")
}

func TestJobsUpdateCopiesProgress(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	jobs := kvstate.Jobs{KV: b.Jobs}
	j := pendingJob("hv-01", jobID1)
	j.Progress = &kvstate.Progress{Stage: "queued"}
	_, err := jobs.Create(ctx, j)
	require.NoError(t, err)

	cur, _, err := jobs.Update(ctx, "hv-01", jobID1, func(j *kvstate.Job) error {
		j.Progress.Stage = "changed"
		return errors.New("abandon")
	})
	require.EqualError(t, err, "abandon")
	require.Equal(t, "queued", cur.Progress.Stage, "fn must get a copy of the progress")
}

func TestJobsWatch(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	jobs := kvstate.Jobs{KV: b.Jobs}
	_, err := jobs.Create(ctx, pendingJob("hv-01", jobID1))
	require.NoError(t, err)

	w, err := jobs.Watch(ctx, "hv-01", jobID1)
	require.NoError(t, err)
	defer func() { require.NoError(t, w.Stop()) }()

	e := <-w.Changes()
	require.NotNil(t, e)
	require.Equal(t, "hv-01."+jobID1, e.Key)
	require.NoError(t, e.Err)
	rec := e.Value
	require.Equal(t, kvstate.StatusPending, rec.Status)
	require.Nil(t, <-w.Changes(), "initial values end with nil")

	_, _, err = jobs.Update(ctx, "hv-01", jobID1, func(j *kvstate.Job) error { j.Status = kvstate.StatusRunning; return nil })
	require.NoError(t, err)
	e = <-w.Changes()
	require.NoError(t, e.Err)
	rec = e.Value
	require.Equal(t, kvstate.StatusRunning, rec.Status)
}

func TestUpdateAttemptFencesOtherAttempts(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	jobs := kvstate.Jobs{KV: b.Jobs}
	_, err := jobs.Create(ctx, pendingJob("hv-01", jobID1))
	require.NoError(t, err)
	start := func(attempt int) {
		_, _, err := jobs.Update(ctx, "hv-01", jobID1, func(j *kvstate.Job) error {
			// Both deliveries numbered 1 (a recreated consumer): the ids differ.
			j.Status, j.Attempt, j.AttemptID = kvstate.StatusRunning, 1, fmt.Sprint("a", attempt)
			return nil
		})
		require.NoError(t, err)
	}
	start(1)
	_, _, err = jobs.UpdateAttempt(ctx, "hv-01", jobID1, "a1", func(j *kvstate.Job) error { j.ImagePath = "/one"; return nil })
	require.NoError(t, err)

	start(2) // a later delivery took over
	_, rev, err := jobs.Get(ctx, "hv-01", jobID1)
	require.NoError(t, err)
	_, _, err = jobs.UpdateAttempt(ctx, "hv-01", jobID1, "a1", func(j *kvstate.Job) error { j.Status = kvstate.StatusCompleted; return nil })
	require.ErrorIs(t, err, kvstate.ErrSuperseded)
	cur, gotRev, err := jobs.Get(ctx, "hv-01", jobID1)
	require.NoError(t, err)
	require.Equal(t, rev, gotRev, "the superseded attempt wrote nothing")
	require.Equal(t, kvstate.StatusRunning, cur.Status)

	_, _, err = jobs.UpdateAttempt(ctx, "hv-01", jobID1, "a2", func(j *kvstate.Job) error { j.Status = kvstate.StatusCompleted; return nil })
	require.NoError(t, err)
	// A terminal record is written once: not again by its own attempt, not
	// with the same status.
	_, _, err = jobs.UpdateAttempt(ctx, "hv-01", jobID1, "a2", func(j *kvstate.Job) error { j.Status = kvstate.StatusCompleted; return nil })
	var te *kvstate.TransitionError
	require.ErrorAs(t, err, &te)
	_, _, err = jobs.Update(ctx, "hv-01", jobID1, func(j *kvstate.Job) error { j.ImagePath = "/again"; return nil })
	require.ErrorAs(t, err, &te)
	cur, _, err = jobs.Get(ctx, "hv-01", jobID1)
	require.NoError(t, err)
	require.Equal(t, "/one", cur.ImagePath)
}

func TestAttemptAlive(t *testing.T) {
	t.Parallel()
	now := time.Now()
	hb := now.Add(-time.Second)
	j := kvstate.Job{Status: kvstate.StatusRunning, HeartbeatAt: &hb}
	require.True(t, j.AttemptAlive(now, 2*time.Second))
	require.False(t, j.AttemptAlive(now, 500*time.Millisecond))
	j.HeartbeatAt = nil
	require.False(t, j.AttemptAlive(now, time.Hour), "no heartbeat: an attempt from before heartbeats, or none")
	j.HeartbeatAt, j.Status = &hb, kvstate.StatusCompleted
	require.False(t, j.AttemptAlive(now, time.Hour))
}

// TestAttemptWritesWithoutReadingAndSeesOthersChanges: an attempt's updates
// name the revision it last wrote; a change by someone else in between (a
// cancel) is read and kept, and a take-over by another attempt fences it.
func TestAttemptWritesWithoutReadingAndSeesOthersChanges(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	jobs := kvstate.Jobs{KV: b.Jobs}
	_, err := jobs.Create(ctx, pendingJob("hv-01", jobID1))
	require.NoError(t, err)
	rec, rev, err := jobs.Update(ctx, "hv-01", jobID1, func(j *kvstate.Job) error {
		j.Status, j.Attempt, j.AttemptID = kvstate.StatusRunning, 1, "a1"
		return nil
	})
	require.NoError(t, err)
	att := jobs.Attempt(rec, rev)

	got, err := att.Update(ctx, func(j *kvstate.Job) error { j.ImagePath = "/one"; return nil })
	require.NoError(t, err)
	require.Equal(t, "/one", got.ImagePath)
	_, rev2, err := jobs.Get(ctx, "hv-01", jobID1)
	require.NoError(t, err)
	require.Equal(t, rev+1, rev2, "one write")

	// Someone else changes the record: the attempt's next write keeps it.
	_, _, err = jobs.Update(ctx, "hv-01", jobID1, func(j *kvstate.Job) error { j.Caller = "other"; return nil })
	require.NoError(t, err)
	got, err = att.Update(ctx, func(j *kvstate.Job) error { j.Checksum = "sha256:x"; return nil })
	require.NoError(t, err)
	require.Equal(t, "other", got.Caller, "the other writer's change is kept")
	require.Equal(t, "/one", got.ImagePath)
	cur, _, err := jobs.Get(ctx, "hv-01", jobID1)
	require.NoError(t, err)
	require.Equal(t, "sha256:x", cur.Checksum)
	require.Equal(t, "other", cur.Caller)

	// Another attempt takes over: this one is fenced, now and after.
	_, _, err = jobs.Update(ctx, "hv-01", jobID1, func(j *kvstate.Job) error { j.Attempt, j.AttemptID = 2, "a2"; return nil })
	require.NoError(t, err)
	for range 2 {
		_, err = att.Update(ctx, func(j *kvstate.Job) error { j.Status = kvstate.StatusCompleted; return nil })
		require.ErrorIs(t, err, kvstate.ErrSuperseded)
	}
	cur, _, err = jobs.Get(ctx, "hv-01", jobID1)
	require.NoError(t, err)
	require.Equal(t, kvstate.StatusRunning, cur.Status)
	require.Equal(t, "a2", cur.AttemptID)
}
