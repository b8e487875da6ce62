package convert

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// EndBytes is how much ZeroEnds zeroes at each end of a volume.
const EndBytes = 1 << 20

// ZeroEnds zeroes the first and last MiB of the file or block device at
// path (size bytes) and flushes it, so a half-written disk (partition table,
// boot loader, GPT backup header) never boots as if it were whole.
func ZeroEnds(path string, size int64) error {
	target, _, err := resolveTarget(path)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_WRONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open volume %q to zero its ends: %w", path, err)
	}
	defer f.Close()
	n := min(int64(EndBytes), size)
	if _, err := f.WriteAt(zeroChunk[:n], 0); err != nil {
		return fmt.Errorf("zero the start of volume %q: %w", path, err)
	}
	if size > n {
		tail := min(int64(EndBytes), size-n)
		if _, err := f.WriteAt(zeroChunk[:tail], size-tail); err != nil {
			return fmt.Errorf("zero the end of volume %q: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flush volume %q: %w", path, err)
	}
	return f.Close()
}
