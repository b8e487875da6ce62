package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// Space is the space the running plans of a worker will still write into
// the volumes' file system, checked against its free space before a plan
// writes, so that two jobs never both count on the same free bytes. The
// zero value holds nothing; a worker's plans share one.
type Space struct {
	mu    sync.Mutex
	bytes int64
}

// reserve fails with a sentence matching volume.ErrNoSpace when need
// bytes for what, besides those other running plans hold, do not fit in
// the backend's free space; otherwise it holds them until release is
// called. Backends that cannot tell (LVM, logical pools) check for
// themselves.
func (s *Space) reserve(ctx context.Context, b volume.Backend, need int64, what string) (release func(), err error) {
	sr, ok := b.(volume.SpaceReporter)
	if !ok || need <= 0 {
		return func() {}, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	free, where, err := sr.FreeSpace(ctx)
	if errors.Is(err, volume.ErrFreeSpaceUnknown) {
		return func() {}, nil
	}
	if err != nil {
		return nil, err
	}
	if need > free-s.bytes {
		held := ""
		if s.bytes > 0 {
			held = fmt.Sprintf(" (%s of which other running jobs will write)", mib(s.bytes))
		}
		return nil, fmt.Errorf("%w for %s: it needs %s, and %s has %s free%s; nothing was written: free space there, or provision fewer volumes at once",
			volume.ErrNoSpace, what, mib(need), where, mib(free), held)
	}
	s.bytes += need
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.bytes -= need
			s.mu.Unlock()
		})
	}, nil
}

// fits reports whether n more bytes, less already, fit beside what the
// running plans hold (or the free space cannot be read: the write finds out).
func (s *Space) fits(ctx context.Context, sr volume.SpaceReporter, n, already int64) bool {
	free, _, err := sr.FreeSpace(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	return err != nil || n-already <= free-s.bytes
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// imageNeed is how many bytes writing the plan's image costs at most: its
// data (convert.ImageData) once the image is complete. While it still
// downloads only the virtual size bounds it; when that bound does not fit
// (fits says) the download is finished first, so that the exact figure
// decides, and the image is then not streamed.
func (p *Plan) imageNeed(ctx context.Context, fits func(int64) bool) (int64, error) {
	ji := &p.ji
	if ji.part != nil {
		if fits(ji.img.VirtualSize) {
			return ji.img.VirtualSize, nil
		}
		ji.dl.setQuiet(false)
		if err := p.finishDownload(ctx, ji, checkStructure); err != nil {
			return 0, err
		}
		ji.part = nil
	}
	return convert.ImageData(ctx, ji.path, ji.img)
}

// reserveImage reserves the space writing the plan's image into what
// costs, less already bytes the target holds now (a reused volume's, freed
// as it is zeroed).
func (p *Plan) reserveImage(ctx context.Context, what string, already int64) (func(), error) {
	sr, ok := p.Parts.Backend.(volume.SpaceReporter)
	if !ok {
		return func() {}, nil
	}
	if _, _, err := sr.FreeSpace(ctx); errors.Is(err, volume.ErrFreeSpaceUnknown) {
		return func() {}, nil // a logical pool: libvirt and LVM check
	}
	need, err := p.imageNeed(ctx, func(n int64) bool { return p.Space.fits(ctx, sr, n, already) })
	if err != nil {
		return nil, err
	}
	return p.Space.reserve(ctx, p.Parts.Backend, need-already, what)
}
