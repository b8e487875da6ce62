package pipeline

import (
	"context"
	"io"
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

// Volume is a volume on a backend.
type Volume struct {
	Name string
	// Path is where the volume's bytes are written (a file or block device).
	Path string
	// Size in bytes.
	Size int64
	// ReadsAsZeros says the volume is known to read as zeros everywhere, as
	// a brand-new thin LV does: converters then write only the image's data
	// and do not zero it first (zeroing a thin LV would allocate all of it).
	ReadsAsZeros bool
}

// Backend creates, finds and removes volumes.
type Backend interface {
	// Lookup finds a volume; ok is false when it does not exist.
	Lookup(ctx context.Context, name string) (vol Volume, ok bool, err error)
	// Create makes a new volume of exactly size bytes; it fails if the name exists.
	Create(ctx context.Context, name string, size int64) (Volume, error)
	// Delete removes a volume.
	Delete(ctx context.Context, name string) error
}

// Converter writes an image's disk into a volume so that the volume reads
// as the image's bytes followed by zeros to its end, whatever it held before,
// and is flushed to stable storage when Convert returns nil.
type Converter interface {
	Convert(ctx context.Context, img Image, imagePath string, vol Volume, progress ProgressFunc) error
}

// UseChecker is implemented by backends that can tell whether something,
// such as a running VM, holds a volume; the worker refuses to overwrite a
// volume in use.
type UseChecker interface {
	// CheckNotInUse returns an error naming the user when vol is in use.
	CheckNotInUse(ctx context.Context, vol Volume) error
}

// Refresher is implemented by backends whose catalogue must be refreshed
// after a volume's content changed (libvirt pools).
type Refresher interface {
	Refresh(ctx context.Context) error
}
