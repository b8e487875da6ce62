package worker

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"os"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline"
)

// Errors of uploaded content.
var (
	// ErrContentNotFound: the job's object is not in its host's content bucket.
	ErrContentNotFound = errors.New("the uploaded content is not in the host's content bucket (removed, expired, or never stored)")
	// ErrContentMismatch: the object's bytes are not the job's.
	ErrContentMismatch = errors.New("the uploaded content does not match the job's size and SHA-256")
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
	fits := func(v pipeline.Volume) error {
		if v.Size < c.Size {
			return fmt.Errorf("volume %q exists with %d bytes, fewer than the %d bytes of content; refusing to write it", v.Name, v.Size, c.Size)
		}
		return nil
	}
	if m.VolumeSizeGB > 0 {
		want = m.VolumeSizeBytes()
		fits = func(v pipeline.Volume) error { return pipeline.CheckReuse(v, want) }
	}
	rep.progress(pipeline.StageVolume, 0, 0)
	rw := rawWrite{volume: m.VolumeName, want: want, fits: fits, src: path, size: c.Size, ours: rec.VolumeCreated,
		markCreated: rep.markVolumeCreated, stage: pipeline.StagePopulate}
	var st volumeState
	err = w.writeRaw(ctx, rep, rec, rw, lease, &st)
	res.created, res.writing, res.volumePath, res.volumeSize, res.checksum = st.created, st.writing, st.path, st.size, c.SHA256
	if err == nil {
		rep.progress(pipeline.StageFinalize, 0, 0)
	}
	return res, err
}

// readContent copies the object c names from host's content bucket into
// path, checking its size, the job's SHA-256 and the Object Store's own
// digest. It reads with direct gets only (meta by subject, chunks by
// sequence): a worker may create no consumers, and its permissions name
// only its own host's bucket.
func (w *Worker) readContent(ctx context.Context, rep *reporter, host string, c messaging.Content, path string) error {
	rep.progress(pipeline.StageDownload, 0, c.Size)
	bucket := messaging.ContentBucket(host)
	stream, err := w.js.Stream(ctx, messaging.ContentStream(host))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return ErrContentNotFound
	}
	if err != nil {
		return fmt.Errorf("bind the content bucket %s: %w", bucket, err)
	}
	meta, err := stream.GetLastMsgForSubject(ctx, "$O."+bucket+".M."+base64.URLEncoding.EncodeToString([]byte(c.Object)))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return ErrContentNotFound
	}
	if err != nil {
		return fmt.Errorf("read the content's metadata: %w", err)
	}
	var info jetstream.ObjectInfo
	if err := json.Unmarshal(meta.Data, &info); err != nil || info.Deleted || info.NUID == "" {
		return ErrContentNotFound
	}
	if int64(info.Size) != c.Size {
		return fmt.Errorf("%w: the object holds %d bytes, the job says %d", ErrContentMismatch, info.Size, c.Size)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("scratch file: %w", err)
	}
	defer f.Close()
	sum := sha256.New()
	if err := copyChunks(ctx, stream, "$O."+bucket+".C."+info.NUID, info.Chunks, f, sum, func(n int64) { rep.progress(pipeline.StageDownload, n, c.Size) }); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("scratch file: %w", err)
	}
	rep.progress(pipeline.StageVerify, 0, 0)
	digest := sum.Sum(nil)
	if got := hex.EncodeToString(digest); got != c.SHA256 {
		return fmt.Errorf("%w: its SHA-256 is %s, the job says %s; nothing was written", ErrContentMismatch, got, c.SHA256)
	}
	if info.Digest != "" && info.Digest != "SHA-256="+base64.URLEncoding.EncodeToString(digest) {
		return fmt.Errorf("%w: the Object Store's digest %s disagrees; nothing was written", ErrContentMismatch, info.Digest)
	}
	return nil
}

// copyChunks writes the chunks published on subject, in order, to f and
// sum, reporting the bytes copied.
func copyChunks(ctx context.Context, stream jetstream.Stream, subject string, chunks uint32, f *os.File, sum hash.Hash, progress func(int64)) error {
	var seq uint64 = 1
	var done int64
	for i := uint32(0); i < chunks; i++ {
		msg, err := stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("%w: chunk %d of %d is missing", ErrContentMismatch, i+1, chunks)
		}
		if err != nil {
			return fmt.Errorf("read the content's chunk %d: %w", i+1, err)
		}
		if _, err := f.Write(msg.Data); err != nil {
			return fmt.Errorf("scratch file: %w", err)
		}
		sum.Write(msg.Data)
		done += int64(len(msg.Data))
		progress(done)
		seq = msg.Sequence + 1
	}
	return nil
}
