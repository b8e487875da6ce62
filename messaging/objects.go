package messaging

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/nats-io/nats.go/jetstream"
)

// Errors of reading uploaded content.
var (
	// ErrContentNotFound: the object is not in its host's content bucket.
	ErrContentNotFound = errors.New("the uploaded content is not in the host's content bucket (removed, expired, or never stored)")
	// ErrContentMismatch: the object's bytes are not what was expected.
	ErrContentMismatch = errors.New("the uploaded content does not match its size and SHA-256")
)

// ReadContent copies the object name of host's content bucket to w and
// returns its metadata, checking the Object Store's own size and digest. It
// reads with direct gets only (the metadata by subject, the chunks by
// sequence), as a worker must: it may create no consumers, and its
// permissions name its own host's content stream only. progress, when not
// nil, gets the bytes copied so far.
func ReadContent(ctx context.Context, js jetstream.JetStream, host, name string, w io.Writer, progress func(int64)) (jetstream.ObjectInfo, error) {
	var info jetstream.ObjectInfo
	bucket := ContentBucket(host)
	stream, err := js.Stream(ctx, ContentStream(host))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return info, ErrContentNotFound
	}
	if err != nil {
		return info, fmt.Errorf("bind the content bucket %s: %w", bucket, err)
	}
	meta, err := stream.GetLastMsgForSubject(ctx, "$O."+bucket+".M."+base64.URLEncoding.EncodeToString([]byte(name)))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return info, ErrContentNotFound
	}
	if err != nil {
		return info, fmt.Errorf("read the content's metadata: %w", err)
	}
	if err := json.Unmarshal(meta.Data, &info); err != nil || info.Deleted || info.NUID == "" {
		return info, ErrContentNotFound
	}
	sum := sha256.New()
	n, err := copyChunks(ctx, stream, "$O."+bucket+".C."+info.NUID, info.Chunks, io.MultiWriter(w, sum), progress)
	if err != nil {
		return info, err
	}
	if n != int64(info.Size) {
		return info, fmt.Errorf("%w: %d bytes read, the object says %d", ErrContentMismatch, n, info.Size)
	}
	if info.Digest != "" && info.Digest != "SHA-256="+base64.URLEncoding.EncodeToString(sum.Sum(nil)) {
		return info, fmt.Errorf("%w: the Object Store's digest %s disagrees", ErrContentMismatch, info.Digest)
	}
	return info, nil
}

// copyChunks writes the chunks published on subject, in order, to w.
func copyChunks(ctx context.Context, stream jetstream.Stream, subject string, chunks uint32, w io.Writer, progress func(int64)) (int64, error) {
	var seq uint64 = 1
	var done int64
	for i := uint32(0); i < chunks; i++ {
		msg, err := stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return done, fmt.Errorf("%w: chunk %d of %d is missing", ErrContentMismatch, i+1, chunks)
		}
		if err != nil {
			return done, fmt.Errorf("read the content's chunk %d: %w", i+1, err)
		}
		if _, err := w.Write(msg.Data); err != nil {
			return done, err
		}
		done += int64(len(msg.Data))
		if progress != nil {
			progress(done)
		}
		seq = msg.Sequence + 1
	}
	return done, nil
}
