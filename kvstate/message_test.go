package kvstate_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

var msgNow = time.Date(2024, 5, 1, 12, 0, 0, 0, time.FixedZone("CEST", 2*3600))

func TestFromMessageValidMinimal(t *testing.T) {
	t.Parallel()
	body := `{"job_id":"` + jobID1 + `","image_url":"` + imageURL + `","volume_name":"vm-1","volume_size_gb":10}`

	rec, m, err := kvstate.FromMessage([]byte(body), "hv-01", jobID1, msgNow)
	require.NoError(t, err)
	require.Equal(t, kvstate.Job{
		JobID: jobID1, Status: kvstate.StatusPending,
		CreatedAt: msgNow.UTC(), UpdatedAt: msgNow.UTC(),
		Kind: messaging.KindProvision, Hypervisor: "hv-01", ImageURL: imageURL, ImageType: messaging.ImageQCOW2,
		VolumeName: "vm-1", VolumeSizeGB: 10, Caller: kvstate.CallerNATS,
	}, rec)
	require.Equal(t, messaging.Job{
		Version: messaging.JobVersion, Kind: messaging.KindProvision, JobID: jobID1, Hypervisor: "hv-01",
		ImageURL: imageURL, ImageType: messaging.ImageQCOW2, VolumeName: "vm-1", VolumeSizeGB: 10,
		Caller: kvstate.CallerNATS,
	}, m)
	require.Equal(t, "nats", kvstate.CallerNATS)
}

func TestFromMessageKeepsCallerFields(t *testing.T) {
	t.Parallel()
	body := `{"version":1,"kind":"provision","job_id":"` + jobID1 + `","hypervisor":"hv-01","image_url":"` + imageURL +
		`","image_type":"RAW","volume_name":"vm-1","volume_size_gb":10,"correlation_id":"c-9","caller":"alice",` +
		`"submitted_at":"2024-05-01T09:30:00Z"}`

	rec, _, err := kvstate.FromMessage([]byte(body), "hv-01", jobID1, msgNow)
	require.NoError(t, err)
	require.Equal(t, kvstate.StatusPending, rec.Status)
	require.Equal(t, messaging.ImageRaw, rec.ImageType)
	require.Equal(t, "c-9", rec.CorrelationID)
	require.Equal(t, "alice", rec.Caller)
	require.Equal(t, time.Date(2024, 5, 1, 9, 30, 0, 0, time.UTC), rec.CreatedAt)
	require.Equal(t, msgNow.UTC(), rec.UpdatedAt)
}

func TestFromMessageCacheFetch(t *testing.T) {
	t.Parallel()
	body := `{"kind":"cache_fetch","image_url":"` + imageURL + `"}`
	rec, m, err := kvstate.FromMessage([]byte(body), "hv-01", jobID1, msgNow)
	require.NoError(t, err)
	require.Equal(t, kvstate.StatusPending, rec.Status)
	require.Equal(t, messaging.KindCacheFetch, rec.Kind)
	require.Equal(t, jobID1, rec.JobID)
	require.Equal(t, jobID1, m.JobID)
	require.Empty(t, rec.VolumeName)
}

func TestFromMessageMissingJobIDTakesSubjects(t *testing.T) {
	t.Parallel()
	body := `{"image_url":"` + imageURL + `","volume_name":"vm-1","volume_size_gb":10}`
	rec, m, err := kvstate.FromMessage([]byte(body), "hv-01", jobID2, msgNow)
	require.NoError(t, err)
	require.Equal(t, jobID2, rec.JobID)
	require.Equal(t, jobID2, m.JobID)
	require.Equal(t, kvstate.StatusPending, rec.Status)
}

func TestFromMessageInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		body      string
		host      string
		jobID     string
		wantErr   string
		wantKind  string
		wantImage string
	}{
		{
			name:    "job id differs from the subject",
			body:    `{"job_id":"` + jobID2 + `","image_url":"` + imageURL + `","volume_name":"vm-1","volume_size_gb":10}`,
			host:    "hv-01",
			jobID:   jobID1,
			wantErr: `job_id "` + jobID2 + `" differs from the subject's last token "` + jobID1 + `"`,
			// The message was decoded and normalized before the mismatch was found.
			wantKind: messaging.KindProvision, wantImage: imageURL,
		},
		{
			name:     "hypervisor differs from the subject",
			body:     `{"job_id":"` + jobID1 + `","hypervisor":"hv-02","image_url":"` + imageURL + `","volume_name":"vm-1","volume_size_gb":10}`,
			host:     "hv-01",
			jobID:    jobID1,
			wantErr:  `hypervisor "hv-02" differs from the subject's host "hv-01"`,
			wantKind: messaging.KindProvision, wantImage: imageURL,
		},
		{
			name:     "subject token is not a UUID",
			body:     `{"image_url":"` + imageURL + `","volume_name":"vm-1","volume_size_gb":10}`,
			host:     "hv-01",
			jobID:    "job-1",
			wantErr:  "job_id: must be a UUID in lower-case canonical form, such as 550e8400-e29b-41d4-a716-446655440000",
			wantKind: messaging.KindProvision, wantImage: imageURL,
		},
		{
			name:     "field invalid",
			body:     `{"job_id":"` + jobID1 + `","image_url":"` + imageURL + `","volume_name":"vm-1","volume_size_gb":0}`,
			host:     "hv-01",
			jobID:    jobID1,
			wantErr:  "volume_size_gb: must be between 1 and 65536 (GiB), not 0",
			wantKind: messaging.KindProvision, wantImage: imageURL,
		},
		{
			name:    "unknown field",
			body:    `{"job_id":"` + jobID1 + `","image_url":"` + imageURL + `","colour":"red"}`,
			host:    "hv-01",
			jobID:   jobID1,
			wantErr: `job message is not valid JSON for a job: unknown field "colour"`,
			// An undecodable message is not normalized.
			wantKind: "", wantImage: imageURL,
		},
		{
			name:     "not JSON",
			body:     `hello`,
			host:     "hv-01",
			jobID:    jobID1,
			wantErr:  `job message is not valid JSON for a job: malformed JSON at byte 1: invalid character 'h' looking for beginning of value`,
			wantKind: "", wantImage: "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec, _, err := kvstate.FromMessage([]byte(tt.body), tt.host, tt.jobID, msgNow)
			require.EqualError(t, err, tt.wantErr)
			require.Equal(t, kvstate.StatusFailed, rec.Status)
			require.Equal(t, "invalid job message: "+tt.wantErr, rec.Error)
			require.Equal(t, tt.jobID, rec.JobID, "the record is keyed by the subject's job id")
			require.Equal(t, tt.host, rec.Hypervisor)
			require.Equal(t, kvstate.CallerNATS, rec.Caller)
			require.Equal(t, tt.wantKind, rec.Kind)
			require.Equal(t, tt.wantImage, rec.ImageURL)
			require.NotNil(t, rec.FinishedAt)
			require.Equal(t, msgNow.UTC(), *rec.FinishedAt)
			require.Equal(t, msgNow.UTC(), rec.CreatedAt)
			require.Equal(t, msgNow.UTC(), rec.UpdatedAt)
		})
	}
}
