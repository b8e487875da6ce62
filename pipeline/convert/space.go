package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
)

// ImageData is how many bytes an image's disk holds outside its zero
// ranges, what a converter writes at most (it skips ranges that read as
// zeros): for a qcow2 image its allocated clusters that are not zero
// clusters, for a raw one its file's data ranges (SEEK_DATA), at most the
// virtual size. It reads only the qcow2's tables, or nothing. The image
// must be complete.
func ImageData(ctx context.Context, path string, img image.Image) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("open image %s: %w", path, err)
	}
	defer f.Close()
	if img.Format == messaging.ImageRaw {
		return rawData(f, img.VirtualSize), nil
	}
	q, err := openQCOW2(f, img)
	if err != nil {
		return 0, fmt.Errorf("qcow2 image %s: %w", path, err)
	}
	var data int64
	for off := int64(0); off < img.VirtualSize; {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		ext, err := q.Extent(off, min(img.VirtualSize-off, extentQuery))
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("qcow2 image %s: extent at %d: %w", path, off, err)
		}
		if ext.Length <= 0 {
			return 0, fmt.Errorf("qcow2 image %s: empty extent at %d", path, off)
		}
		if !ext.Zero {
			data += ext.Length
		}
		off += ext.Length
	}
	return data, nil
}

// rawData sums the data ranges of f's first size bytes.
func rawData(f *os.File, size int64) int64 {
	var data int64
	for off := int64(0); off < size; {
		d := fsutil.NextData(f, off, size)
		if d >= size {
			break
		}
		h, err := unix.Seek(int(f.Fd()), d, unix.SEEK_HOLE)
		if err != nil || h <= d {
			return size - off + data // cannot tell: count the rest
		}
		h = min(h, size)
		data += h - d
		off = h
	}
	return data
}
