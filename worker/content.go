package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// executeContent writes a content job's upload into its volume: the object
// is read from the host's content bucket into a scratch file, its size and
// SHA-256 checked, and only then is the volume touched. The API removes the
// object once the job has ended, whatever its outcome.
func (w *Worker) executeContent(ctx context.Context, rep *reporter, rec kvstate.Job, m messaging.Job, lease *leaseRenewer) (res result, err error) {
	if err := w.volumeAllowed(m.VolumeName); err != nil {
		return res, err
	}
	path, remove, err := w.scratchFile("content", rec.JobID)
	if err != nil {
		return res, err
	}
	defer remove()
	if err := w.readContent(ctx, rep, rec.Hypervisor, *m.Content, path); err != nil {
		return res, err
	}
	c := m.Content
	want := messaging.ContentVolumeBytes(c.Size)
	fits := func(v volume.Volume) error {
		if v.Size < c.Size {
			return fmt.Errorf("volume %q exists with %d bytes, fewer than the %d bytes of content; refusing to write it", v.Name, v.Size, c.Size)
		}
		return nil
	}
	if m.VolumeSizeGB > 0 {
		want = m.VolumeSizeBytes()
		fits = func(v volume.Volume) error { return volume.CheckReuse(v, want) }
	}
	rep.progress(stages.Volume, 0, 0)
	rw := rawWrite{volume: m.VolumeName, want: want, fits: fits, src: path, size: c.Size, ours: rec.VolumeCreated,
		markCreated: rep.markVolumeCreated, stage: stages.Populate}
	var st volumeState
	err = w.writeRaw(ctx, rep, rec, rw, lease, &st)
	res.Created, res.Writing, res.VolumePath, res.VolumeSize, res.Checksum = st.created, st.writing, st.path, st.size, c.SHA256
	if err == nil {
		rep.progress(stages.Finalize, 0, 0)
	}
	return res, err
}

// readContent copies the object c names from host's content bucket into
// path and checks its size and the job's SHA-256 (messaging.ReadContent
// checks the Object Store's own digest).
func (w *Worker) readContent(ctx context.Context, rep *reporter, host string, c messaging.Content, path string) error {
	rep.progress(stages.Download, 0, c.Size)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("scratch file: %w", err)
	}
	defer f.Close()
	sum := sha256.New()
	info, err := messaging.ReadContent(ctx, w.js, host, c.Object, io.MultiWriter(f, sum), func(n int64) { rep.progress(stages.Download, n, c.Size) })
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("scratch file: %w", err)
	}
	rep.progress(stages.Verify, 0, 0)
	if int64(info.Size) != c.Size {
		return fmt.Errorf("%w: the object holds %d bytes, the job says %d; nothing was written", messaging.ErrContentMismatch, info.Size, c.Size)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != c.SHA256 {
		return fmt.Errorf("%w: its SHA-256 is %s, the job says %s; nothing was written", messaging.ErrContentMismatch, got, c.SHA256)
	}
	return nil
}
