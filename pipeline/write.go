package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/imagecache"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// write converts the plan's image into vol, reading the download while it
// arrives when there is one. What the conversion reads is verified while it
// runs: a cache hit's digest, or a streamed download's digest and structure
// (the conversion stops at once when either fails); it returns nil only if
// both succeed. h, when not nil, is told everything the conversion writes,
// where the converter can (convert.DigestConverter); h.Sum then says
// whether it could.
func (p *Plan) write(ctx context.Context, vol volume.Volume, h *volume.GoldenHasher) error {
	ji := &p.ji
	img := ji.img
	stream := ji.part != nil
	conv := p.Parts.Converter
	if dc, ok := conv.(convert.DigestConverter); ok && h != nil {
		conv = dc.WithDigest(h)
	}
	convCtx, stopConv := context.WithCancelCause(ctx)
	defer stopConv(nil)
	verified := make(chan error, 1)
	go func() {
		var err error
		if stream {
			err = p.finishDownload(ctx, ji, checkStructure)
		} else if err = ji.verify(ctx); err != nil {
			err = fmt.Errorf("verify the cached image: %w", err)
		}
		if err != nil {
			stopConv(err)
		}
		verified <- err
	}()
	var err error
	if stream {
		err = conv.(StreamConverter).ConvertStream(convCtx, img, ji.part, vol, p.Report.Progress)
	} else {
		err = conv.Convert(convCtx, img, ji.path, vol, p.Report.Progress)
	}
	aborted := false
	// A read past the end of a download that ended short (a truncated
	// image) is not the conversion failing on its own: the download's
	// verdict, still being reached, says why.
	if stream && err != nil && !errors.Is(err, imagecache.ErrStreamRestarted) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		select {
		case <-ji.part.Done(): // the download ended: its outcome comes first
		default:
			// The conversion failed on its own: the download is not needed,
			// and its abort is not the error to report.
			ji.part.Abort()
			aborted = true
		}
	}
	if verr := <-verified; verr != nil && !aborted {
		return verr
	}
	if errors.Is(err, imagecache.ErrStreamRestarted) || (stream && err == nil && ji.part.Restarted()) {
		// The download started over mid-way (perhaps on another version
		// of the object); it is whole and verified now: convert again
		// from the cached file.
		if h != nil {
			h.Reset()
		}
		err = conv.Convert(ctx, img, ji.path, vol, p.Report.Progress)
	}
	if err != nil {
		if cause := context.Cause(ctx); cause != nil {
			return cause
		}
		return fmt.Errorf("populate volume %q: %w", vol.Name, err)
	}
	return nil
}
