package pipeline

import (
	"context"
	"io"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// Stage names reported in progress, in the order a job passes them.
const (
	StageChecksum   = "checksum"
	StageCacheCheck = "cache_lookup"
	StageDownload   = "downloading"
	StageVerify     = "verifying"
	StageInspect    = "inspecting"
	StageVolume     = "creating_volume"
	StagePopulate   = "populating"
	StageFinalize   = "finalizing"
	// StageSeed writes a job's cloud-init seed volume (after the image).
	StageSeed = "writing_seed"
)

// ProgressFunc receives a stage's progress: done of total bytes (total 0
// when unknown). Calls are frequent; receivers rate-limit themselves.
type ProgressFunc func(stage string, done, total int64)

// ObjectInfo describes an object in the store.
type ObjectInfo struct {
	Size int64
	ETag string
}

// Source reads images from an object store.
type Source interface {
	// Checksum returns the hex SHA-256 published next to the object as
	// <object>.sha256; found is false when there is no such object.
	Checksum(ctx context.Context, bucket, object string) (digest string, found bool, err error)
	// Open opens the object for reading.
	Open(ctx context.Context, bucket, object string) (io.ReadCloser, ObjectInfo, error)
}

// Image is an inspected image file.
type Image struct {
	// Format is "qcow2" or "raw".
	Format string
	// VirtualSize is the size of the disk the image holds, in bytes.
	VirtualSize int64
}

// Converter writes an image's disk into a volume so that the volume reads
// as the image's bytes followed by zeros to its end, whatever it held before,
// and is flushed to stable storage when Convert returns nil.
type Converter interface {
	Convert(ctx context.Context, img Image, imagePath string, vol volume.Volume, progress ProgressFunc) error
}
