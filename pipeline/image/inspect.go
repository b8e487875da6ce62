package image

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// QCOWMagic starts every qcow/qcow2 file.
const QCOWMagic = "QFI\xfb"

// MaxVirtualSize is the largest virtual disk accepted (64 TiB).
const MaxVirtualSize = int64(64) << 40

// qcow2 header layout (big-endian), see qemu's docs/interop/qcow2.txt.
const (
	qcowV2HeaderLen          = 72
	QCOWV3HeaderLen          = 104
	qcowIncompatExternalData = 1 << 2
	qcowIncompatKnown        = 0x1f // bits 0-4: dirty, corrupt, external data, compression type, extended L2
)

// Inspect reads the header of the image file at path and checks it against
// declaredType ("qcow2", "raw" or "" for either). It reads the bytes itself,
// so no tool touches a file before it has been checked: qcow2 images that
// name a backing file or an external data file, or that are encrypted, are
// refused.
func Inspect(path, declaredType string) (Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return Image{}, fmt.Errorf("open image %q: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Image{}, fmt.Errorf("stat image %q: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return Image{}, fmt.Errorf("image %q is not a regular file", path)
	}
	hdr := make([]byte, QCOWV3HeaderLen)
	n, err := io.ReadFull(f, hdr)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return Image{}, fmt.Errorf("read header of image %q: %w", path, err)
	}
	hdr = hdr[:n]
	isQCOW := n >= len(QCOWMagic) && string(hdr[:len(QCOWMagic)]) == QCOWMagic

	switch {
	case isQCOW && declaredType == messaging.ImageRaw:
		return Image{}, errors.New(`image_type is "raw" but the image is a qcow2 file`)
	case isQCOW:
		img, err := ParseQCOW2(hdr)
		if err != nil {
			return Image{}, fmt.Errorf("qcow2 image %s: %w", path, err)
		}
		return img, nil
	case declaredType == messaging.ImageQCOW2:
		return Image{}, errors.New(`image_type is "qcow2" but the file is not a qcow2 image (no QFI\xfb magic)`)
	case declaredType != "" && declaredType != messaging.ImageRaw:
		return Image{}, fmt.Errorf("image_type %q is not %q or %q", declaredType, messaging.ImageQCOW2, messaging.ImageRaw)
	}
	if st.Size() <= 0 {
		return Image{}, fmt.Errorf("raw image %s is empty", path)
	}
	if st.Size() > MaxVirtualSize {
		return Image{}, fmt.Errorf("raw image %s is %d bytes, more than the %d (64 TiB) accepted", path, st.Size(), MaxVirtualSize)
	}
	return Image{Format: messaging.ImageRaw, VirtualSize: st.Size()}, nil
}

// ParseQCOW2 checks a qcow2 header (at least its first 72 bytes for version
// 2, 104 for version 3).
func ParseQCOW2(h []byte) (Image, error) {
	if len(h) < 8 {
		return Image{}, fmt.Errorf("the file is truncated: %d bytes, shorter than a qcow2 header", len(h))
	}
	be := binary.BigEndian
	version := be.Uint32(h[4:])
	if version != 2 && version != 3 {
		return Image{}, fmt.Errorf("qcow version %d is not supported (only qcow2 versions 2 and 3)", version)
	}
	need := qcowV2HeaderLen
	if version == 3 {
		need = QCOWV3HeaderLen
	}
	if len(h) < need {
		return Image{}, fmt.Errorf("the file is truncated: %d bytes, shorter than a qcow2 version %d header (%d bytes)", len(h), version, need)
	}
	backingOffset := be.Uint64(h[8:])
	clusterBits := be.Uint32(h[20:])
	size := be.Uint64(h[24:])
	cryptMethod := be.Uint32(h[32:])
	if backingOffset != 0 {
		return Image{}, errors.New("the image names a backing file; refusing it (a base image must be self-contained)")
	}
	if cryptMethod != 0 {
		return Image{}, fmt.Errorf("the image is encrypted (crypt_method %d); refusing it (the provisioner has no keys)", cryptMethod)
	}
	if version == 3 {
		incompat := be.Uint64(h[72:])
		headerLen := be.Uint32(h[100:])
		if incompat&qcowIncompatExternalData != 0 {
			return Image{}, errors.New("the image uses an external data file; refusing it (a base image must be self-contained)")
		}
		if unknown := incompat &^ qcowIncompatKnown; unknown != 0 {
			return Image{}, fmt.Errorf("the image uses incompatible features unknown to this provisioner (bits %#x); refusing it", unknown)
		}
		if headerLen < QCOWV3HeaderLen {
			return Image{}, fmt.Errorf("the header length %d is shorter than the %d a version 3 header has", headerLen, QCOWV3HeaderLen)
		}
	}
	if clusterBits < 9 || clusterBits > 21 {
		return Image{}, fmt.Errorf("cluster_bits %d is outside 9..21", clusterBits)
	}
	if size == 0 {
		return Image{}, errors.New("the virtual size is 0")
	}
	if size > uint64(MaxVirtualSize) {
		return Image{}, fmt.Errorf("the virtual size %d bytes is more than the %d (64 TiB) accepted", size, MaxVirtualSize)
	}
	return Image{Format: messaging.ImageQCOW2, VirtualSize: int64(size)}, nil
}

// CheckFits returns an error when the image's disk is larger than a volume
// of volSize bytes.
func (img Image) CheckFits(volSize int64) error {
	if img.VirtualSize <= volSize {
		return nil
	}
	return fmt.Errorf("the image's virtual size is %d bytes (%.2f GiB), larger than the volume's %d bytes (%.2f GiB)",
		img.VirtualSize, float64(img.VirtualSize)/(1<<30), volSize, float64(volSize)/(1<<30))
}

// InspectStream inspects the header of an image still downloading, as
// Inspect does, once its first bytes have arrived. stream is true for a
// qcow2 image that passes the checks (img is then set); it is false, with
// a nil error, for anything else, which the caller inspects with Inspect
// once the download is complete (as it does when the header could not be
// read). err is a refused qcow2 header.
func InspectStream(ctx context.Context, part Arriving, declaredType string) (img Image, stream bool, err error) {
	if declaredType == messaging.ImageRaw {
		return Image{}, false, nil
	}
	hdr := make([]byte, QCOWV3HeaderLen)
	n, err := part.ReaderAt(ctx).ReadAt(hdr, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		// A failed or restarted download, or ctx: the caller waits for the
		// download, which reports its own failure, or inspects the file.
		return Image{}, false, nil
	}
	hdr = hdr[:n]
	if n < len(QCOWMagic) || string(hdr[:len(QCOWMagic)]) != QCOWMagic {
		return Image{}, false, nil
	}
	img, err = ParseQCOW2(hdr)
	if err != nil {
		return Image{}, false, fmt.Errorf("qcow2 image: %w", err)
	}
	return img, true, nil
}

// Arriving is an image still downloading (the image cache's Partial): reads
// of bytes that have not arrived wait for them, until ctx ends.
type Arriving interface {
	ReaderAt(ctx context.Context) io.ReaderAt
}

// Image is an inspected image file.
type Image struct {
	// Format is "qcow2" or "raw".
	Format string
	// VirtualSize is the size of the disk the image holds, in bytes.
	VirtualSize int64
}
