package imagecache

import (
	"os"

	"golang.org/x/sys/unix"
)

// writeBehindWindow is how much a download writes before it starts writing
// that stretch back to disk.
const writeBehindWindow = 8 << 20

// writeBehind writes a file sequentially and keeps its dirty page cache
// bounded: each full window is handed to writeback at once
// (sync_file_range), and the window before it is waited for. A download of
// any size then holds about two windows of dirty pages instead of the whole
// image; the pages stay cached (clean) for the converter that reads them next.
type writeBehind struct {
	f *os.File
	// off is how much was written; started is where the window being
	// written back starts.
	off, started int64
}

func (w *writeBehind) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	if err != nil {
		return n, err
	}
	for w.off-w.started >= writeBehindWindow {
		fd := int(w.f.Fd())
		// Start writing back this window...
		_ = unix.SyncFileRange(fd, w.started, writeBehindWindow, unix.SYNC_FILE_RANGE_WRITE)
		// ...and wait for the one before to be on disk.
		if prev := w.started - writeBehindWindow; prev >= 0 {
			_ = unix.SyncFileRange(fd, prev, writeBehindWindow, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
		}
		w.started += writeBehindWindow
	}
	return n, nil
}
