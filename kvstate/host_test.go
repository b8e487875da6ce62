package kvstate_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
)

func TestHostAlive(t *testing.T) {
	t.Parallel()
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		heartbeat time.Duration
		age       time.Duration
		want      bool
	}{
		{"just seen", time.Second, 0, true},
		{"within three heartbeats", time.Second, 2999 * time.Millisecond, true},
		{"at three heartbeats", time.Second, 3 * time.Second, false},
		{"beyond three heartbeats", time.Second, time.Minute, false},
		{"default heartbeat alive", 0, 14 * time.Second, true},
		{"default heartbeat stale", 0, 15 * time.Second, false},
		{"negative heartbeat uses default", -time.Second, 14 * time.Second, true},
		{"seen in the future", time.Second, -time.Hour, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := kvstate.Host{Heartbeat: tt.heartbeat, LastSeen: now.Add(-tt.age)}
			require.Equal(t, tt.want, h.Alive(now))
		})
	}
}

func host(name, machine string, lastSeen time.Time) kvstate.Host {
	return kvstate.Host{
		Name: name, MachineID: machine, Version: "test", StartedAt: lastSeen.UTC(),
		LastSeen: lastSeen.UTC(), Heartbeat: 5 * time.Second,
	}
}

func TestHostsClaimNew(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	r := kvstate.Hosts{KV: b.Hosts}

	_, err := r.Get(ctx, "hv-01")
	require.ErrorIs(t, err, kvstate.ErrNotFound)

	h := host("hv-01", "machine-a", time.Now())
	rev, err := r.Claim(ctx, h)
	require.NoError(t, err)
	require.NotZero(t, rev)

	got, err := r.Get(ctx, "hv-01")
	require.NoError(t, err)
	require.Equal(t, h.Name, got.Name)
	require.Equal(t, h.MachineID, got.MachineID)
	require.True(t, h.LastSeen.Equal(got.LastSeen))
	require.Equal(t, 5*time.Second, got.Heartbeat)
}

func TestHostsClaimSameMachine(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	r := kvstate.Hosts{KV: b.Hosts}

	rev1, err := r.Claim(ctx, host("hv-01", "machine-a", time.Now()))
	require.NoError(t, err)
	h := host("hv-01", "machine-a", time.Now())
	h.Version = "v2"
	rev2, err := r.Claim(ctx, h)
	require.NoError(t, err)
	require.Greater(t, rev2, rev1)

	got, err := r.Get(ctx, "hv-01")
	require.NoError(t, err)
	require.Equal(t, "v2", got.Version)
}

func TestHostsClaimOtherMachineWhileAlive(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	r := kvstate.Hosts{KV: b.Hosts}

	rev, err := r.Claim(ctx, host("hv-01", "machine-a", time.Now()))
	require.NoError(t, err)

	_, err = r.Claim(ctx, host("hv-01", "machine-b", time.Now()))
	require.True(t, errors.Is(err, kvstate.ErrHostClaimed), "got %v", err)
	require.EqualError(t, err, `host name is claimed by another machine: host "hv-01" belongs to machine machine-a, last seen 0s ago`)

	// The owner's entry is untouched.
	got, err := r.Get(ctx, "hv-01")
	require.NoError(t, err)
	require.Equal(t, "machine-a", got.MachineID)
	e, err := b.Hosts.Get(ctx, "hv-01")
	require.NoError(t, err)
	require.Equal(t, rev, e.Revision())
}

func TestHostsClaimOtherMachineWhenStale(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	r := kvstate.Hosts{KV: b.Hosts}

	oldRev, err := r.Claim(ctx, host("hv-01", "machine-a", time.Now().Add(-time.Minute)))
	require.NoError(t, err)

	newRev, err := r.Claim(ctx, host("hv-01", "machine-b", time.Now()))
	require.NoError(t, err)
	require.Greater(t, newRev, oldRev)
	got, err := r.Get(ctx, "hv-01")
	require.NoError(t, err)
	require.Equal(t, "machine-b", got.MachineID)

	// The old owner's renewal now fails: its revision is gone.
	_, err = r.Renew(ctx, host("hv-01", "machine-a", time.Now()), oldRev)
	require.ErrorIs(t, err, kvstate.ErrHostClaimed)
	require.EqualError(t, err, `host name is claimed by another machine: host "hv-01" was taken over`)
}

func TestHostsClaimAfterDelete(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	r := kvstate.Hosts{KV: b.Hosts}

	_, err := r.Claim(ctx, host("hv-01", "machine-a", time.Now()))
	require.NoError(t, err)
	require.NoError(t, b.Hosts.Delete(ctx, "hv-01"))
	_, err = r.Claim(ctx, host("hv-01", "machine-b", time.Now()))
	require.NoError(t, err)
	got, err := r.Get(ctx, "hv-01")
	require.NoError(t, err)
	require.Equal(t, "machine-b", got.MachineID)
}

func TestHostsRenew(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	r := kvstate.Hosts{KV: b.Hosts}

	h := host("hv-01", "machine-a", time.Now())
	rev, err := r.Claim(ctx, h)
	require.NoError(t, err)

	h.ActiveJobs = 2
	h.LastSeen = time.Now().UTC()
	rev2, err := r.Renew(ctx, h, rev)
	require.NoError(t, err)
	require.Greater(t, rev2, rev)
	got, err := r.Get(ctx, "hv-01")
	require.NoError(t, err)
	require.Equal(t, 2, got.ActiveJobs)

	// Renewing over an older revision that this machine itself moved on (a
	// renewal whose reply was lost) succeeds.
	rev3, err := r.Renew(ctx, h, rev)
	require.NoError(t, err)
	require.Greater(t, rev3, rev2)

	// Once another machine owns the entry, renewing is refused and writes
	// nothing.
	other := host("hv-01", "machine-b", time.Now())
	data, err := json.Marshal(other)
	require.NoError(t, err)
	rev4, err := b.Hosts.Put(ctx, "hv-01", data)
	require.NoError(t, err)
	_, err = r.Renew(ctx, h, rev3)
	require.ErrorIs(t, err, kvstate.ErrHostClaimed)
	require.EqualError(t, err, `host name is claimed by another machine: host "hv-01" was taken over`)
	e, err := b.Hosts.Get(ctx, "hv-01")
	require.NoError(t, err)
	require.Equal(t, rev4, e.Revision())
}

func TestHostsList(t *testing.T) {
	t.Parallel()
	b := startBuckets(t)
	ctx := testCtx(t)
	r := kvstate.Hosts{KV: b.Hosts}

	empty, err := r.List(ctx)
	require.NoError(t, err)
	require.Empty(t, empty)

	for _, name := range []string{"hv-03", "hv-01", "hv-10", "hv-02"} {
		_, err := r.Claim(ctx, host(name, "m-"+name, time.Now()))
		require.NoError(t, err)
	}
	require.NoError(t, b.Hosts.Delete(ctx, "hv-02"))

	hosts, err := r.List(ctx)
	require.NoError(t, err)
	names := make([]string, 0, len(hosts))
	for _, h := range hosts {
		names = append(names, h.Name)
		require.Equal(t, "m-"+h.Name, h.MachineID)
	}
	require.Equal(t, []string{"hv-01", "hv-03", "hv-10"}, names)
}
