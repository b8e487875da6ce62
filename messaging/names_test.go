package messaging_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

func TestValidHost(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		host string
		want bool
	}{
		{"single letter", "a", true},
		{"single digit", "7", true},
		{"letters digits dashes", "hv-01", true},
		{"63 characters", strings.Repeat("a", 63), true},
		{"64 characters", strings.Repeat("a", 64), false},
		{"empty", "", false},
		{"upper case", "HV-01", false},
		{"leading dash", "-hv", false},
		{"trailing dash", "hv-", false},
		{"dot", "hv.example", false},
		{"underscore", "hv_01", false},
		{"space", "hv 01", false},
		{"wildcard", "*", false},
		{"full wildcard", ">", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, messaging.ValidHost(tt.host))
		})
	}
}

func TestSanitizeHost(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"fqdn upper case", "HV-01.example.com", "hv-01"},
		{"empty", "", "localhost"},
		{"only spaces", "   ", "localhost"},
		{"only dashes", "---", "localhost"},
		{"leading dot", ".example.com", "localhost"},
		{"underscores", "hv_01_a", "hv-01-a"},
		{"surrounding space", "  node7  ", "node7"},
		{"leading and trailing junk", "_node_", "node"},
		{"already valid", "hv-01", "hv-01"},
		{"80 characters", strings.Repeat("a", 80), strings.Repeat("a", 63)},
		{"dash at the cut", strings.Repeat("a", 62) + "-" + strings.Repeat("b", 17), strings.Repeat("a", 62)},
		{"dashes at the cut", strings.Repeat("a", 60) + "----" + strings.Repeat("b", 16), strings.Repeat("a", 60)},
		{"non ascii", "hôte", "h--te"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := messaging.SanitizeHost(tt.in)
			require.Equal(t, tt.want, got)
			require.True(t, messaging.ValidHost(got), "SanitizeHost(%q) = %q is not a valid host", tt.in, got)
			require.LessOrEqual(t, len(got), 63)
		})
	}
}

func TestSubjectsDefaultPrefix(t *testing.T) {
	t.Parallel()
	s := messaging.NewSubjects("")
	require.Equal(t, messaging.DefaultPrefix, s.Prefix)
	require.Equal(t, "provisioner", s.Prefix)

	const id = "550e8400-e29b-41d4-a716-446655440000"
	require.Equal(t, "provisioner.jobs.hv-01."+id, s.Job("hv-01", id))
	require.Equal(t, "provisioner.jobs.hv-01.>", s.JobsFilter("hv-01"))
	require.Equal(t, "provisioner.jobs.>", s.AllJobs())
	require.Equal(t, "provisioner.jobs.*."+id, s.AnyHostJob(id))
	require.Equal(t, "provisioner.events.hv-01."+id, s.Event("hv-01", id))
	require.Equal(t, "provisioner.events.>", s.AllEvents())
}

func TestSubjectsCustomPrefix(t *testing.T) {
	t.Parallel()
	s := messaging.NewSubjects("acme.prov")
	require.Equal(t, "acme.prov", s.Prefix)
	require.Equal(t, "acme.prov.jobs.hv.j1", s.Job("hv", "j1"))
	require.Equal(t, "acme.prov.jobs.hv.>", s.JobsFilter("hv"))
	require.Equal(t, "acme.prov.jobs.>", s.AllJobs())
	require.Equal(t, "acme.prov.jobs.*.j1", s.AnyHostJob("j1"))
	require.Equal(t, "acme.prov.events.hv.j1", s.Event("hv", "j1"))
	require.Equal(t, "acme.prov.events.>", s.AllEvents())

	host, id, err := s.ParseJob("acme.prov.jobs.hv.j1")
	require.NoError(t, err)
	require.Equal(t, "hv", host)
	require.Equal(t, "j1", id)

	_, _, err = s.ParseJob("provisioner.jobs.hv.j1")
	require.EqualError(t, err, `subject "provisioner.jobs.hv.j1" is not a job subject (want acme.prov.jobs.<host>.<job_id>)`)
}

func TestSubjectsParseJob(t *testing.T) {
	t.Parallel()
	s := messaging.NewSubjects("")
	const id = "550e8400-e29b-41d4-a716-446655440000"

	t.Run("round trip", func(t *testing.T) {
		t.Parallel()
		host, jobID, err := s.ParseJob(s.Job("hv-01", id))
		require.NoError(t, err)
		require.Equal(t, "hv-01", host)
		require.Equal(t, id, jobID)
	})

	bad := []struct {
		name    string
		subject string
	}{
		{"empty", ""},
		{"wrong prefix", "other.jobs.hv-01." + id},
		{"event subject", "provisioner.events.hv-01." + id},
		{"prefix only", "provisioner.jobs."},
		{"host only", "provisioner.jobs.hv-01"},
		{"extra token", "provisioner.jobs.hv-01." + id + ".x"},
		{"prefix must be a whole token", "provisionerx.jobs.hv-01." + id},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			host, jobID, err := s.ParseJob(tt.subject)
			require.EqualError(t, err, `subject "`+tt.subject+`" is not a job subject (want provisioner.jobs.<host>.<job_id>)`)
			require.Empty(t, host)
			require.Empty(t, jobID)
		})
	}
}

func TestKeyNames(t *testing.T) {
	t.Parallel()
	require.Equal(t, "worker-hv-01", messaging.ConsumerName("hv-01"))
	require.Equal(t, "hv-01.j1", messaging.JobKey("hv-01", "j1"))
	require.Equal(t, "hv-01.abc", messaging.CacheKey("hv-01", "abc"))
	require.Equal(t, "hv-01.vm-1", messaging.VolumeKey("hv-01", "vm-1"))
}
