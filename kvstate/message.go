package kvstate

import (
	"cmp"
	"fmt"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// FromMessage builds the record of a job message found on host's subject
// with the given job id token. A valid message gives a pending record; an
// invalid one gives a failed record whose error says what is wrong, and the
// validation error is returned too. Both the API (showing a job published
// straight to NATS) and the worker use it, so they agree.
func FromMessage(data []byte, host, jobID string, now time.Time) (Job, messaging.Job, error) {
	m, err := messaging.DecodeJob(data)
	if err == nil {
		m.Normalize()
		switch {
		case m.JobID == "":
			m.JobID = jobID
		case m.JobID != jobID:
			err = fmt.Errorf("job_id %q differs from the subject's last token %q", m.JobID, jobID)
		}
		if err == nil && m.Hypervisor != "" && m.Hypervisor != host {
			err = fmt.Errorf("hypervisor %q differs from the subject's host %q", m.Hypervisor, host)
		}
		if err == nil {
			m.Hypervisor = host
			err = m.Validate()
		}
	}
	if err != nil {
		rec := NewJob(messaging.Job{JobID: jobID, Kind: m.Kind, ImageURL: m.ImageURL, ImageType: m.ImageType,
			VolumeName: m.VolumeName, VolumeSizeGB: m.VolumeSizeGB, CorrelationID: m.CorrelationID, Caller: cmp.Or(m.Caller, CallerNATS)}, host, now)
		rec.Status = StatusFailed
		rec.Error = "invalid job message: " + err.Error()
		t := now.UTC()
		rec.FinishedAt = &t
		return rec, m, err
	}
	if m.Caller == "" {
		m.Caller = CallerNATS
	}
	return NewJob(m, host, now), m, nil
}

// CallerNATS is the caller recorded for a job published straight to NATS
// without one.
const CallerNATS = "nats"
