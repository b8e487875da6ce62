package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// spaceHeld is the space the running jobs of this worker will still write
// into the volumes' file system, checked against its free space before a
// job writes, so that two jobs never both count on the same free bytes.
type spaceHeld struct {
	mu    sync.Mutex
	bytes int64
}

// errFilledUp is the cause given to a job whose writes found the volumes'
// file system full (ENOSPC) although its check passed: something else
// wrote there meanwhile.
var errFilledUp = errors.New("the volumes' file system filled up while the job was writing (something else wrote there after the job's free-space check); nothing the job wrote is kept: the volume or golden it created was removed")

// reserveSpace fails with a sentence matching volume.ErrNoSpace when need
// bytes for what, besides those other running jobs hold, do not fit in the
// backend's free space; otherwise it holds them until release is called.
// Backends that cannot tell (LVM, logical pools) check for themselves.
func (w *Worker) reserveSpace(ctx context.Context, need int64, what string) (release func(), err error) {
	sr, ok := w.parts.Backend.(volume.SpaceReporter)
	if !ok || need <= 0 {
		return func() {}, nil
	}
	w.space.mu.Lock()
	defer w.space.mu.Unlock()
	free, where, err := sr.FreeSpace(ctx)
	if errors.Is(err, volume.ErrFreeSpaceUnknown) {
		return func() {}, nil
	}
	if err != nil {
		return nil, err
	}
	if need > free-w.space.bytes {
		held := ""
		if w.space.bytes > 0 {
			held = fmt.Sprintf(" (%s of which other running jobs will write)", mib(w.space.bytes))
		}
		return nil, fmt.Errorf("%w for %s: it needs %s, and %s has %s free%s; nothing was written: free space there, or provision fewer volumes at once",
			volume.ErrNoSpace, what, mib(need), where, mib(free), held)
	}
	w.space.bytes += need
	var once sync.Once
	return func() {
		once.Do(func() {
			w.space.mu.Lock()
			w.space.bytes -= need
			w.space.mu.Unlock()
		})
	}, nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// imageNeed is how many bytes writing ji's image costs at most: its data
// (convert.ImageData) once the image is complete. While it still
// downloads only the virtual size bounds it; when that bound does not fit
// (fits says) the download is finished first, so that the exact figure
// decides, and the image is then not streamed.
func (w *Worker) imageNeed(ctx context.Context, rep *reporter, ji *jobImage, fits func(int64) bool) (int64, error) {
	if ji.part != nil {
		if fits(ji.img.VirtualSize) {
			return ji.img.VirtualSize, nil
		}
		ji.dl.setQuiet(false)
		if err := w.finishDownload(ctx, rep, ji, checkStructure); err != nil {
			return 0, err
		}
		ji.part = nil
	}
	return convert.ImageData(ctx, ji.path, ji.img)
}

// reserveImage reserves the space writing ji's image into what costs,
// less already bytes the target holds now (a reused volume's, freed as
// it is zeroed).
func (w *Worker) reserveImage(ctx context.Context, rep *reporter, ji *jobImage, what string, already int64) (func(), error) {
	sr, ok := w.parts.Backend.(volume.SpaceReporter)
	if !ok {
		return func() {}, nil
	}
	if _, _, err := sr.FreeSpace(ctx); errors.Is(err, volume.ErrFreeSpaceUnknown) {
		return func() {}, nil // a logical pool: libvirt and LVM check
	}
	fits := func(n int64) bool {
		free, _, err := sr.FreeSpace(ctx)
		w.space.mu.Lock()
		defer w.space.mu.Unlock()
		return err != nil || n-already <= free-w.space.bytes
	}
	need, err := w.imageNeed(ctx, rep, ji, fits)
	if err != nil {
		return nil, err
	}
	return w.reserveSpace(ctx, need-already, what)
}

// filledUp gives a job's error the cause a person can act on when a write
// found the file system full.
func filledUp(err error) error {
	if err != nil && errors.Is(err, syscall.ENOSPC) && !errors.Is(err, errFilledUp) {
		return fmt.Errorf("%w: %w", errFilledUp, err)
	}
	return err
}
