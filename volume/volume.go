package volume

import (
	"context"
	"fmt"
)

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

// CheckReuse returns nil when an existing volume may be reused for a request
// of requested bytes: its size is within 5% of the request.
func CheckReuse(vol Volume, requested int64) error {
	diff := vol.Size - requested
	if diff < 0 {
		diff = -diff
	}
	if diff <= requested*5/100 {
		return nil
	}
	return &sizeMismatch{fmt.Sprintf("volume %q exists with %d bytes (%.2f GiB); the request is %d bytes (%d GiB), outside the ±5%% a reused volume may differ; refusing to overwrite it",
		vol.Name, vol.Size, float64(vol.Size)/(1<<30), requested, requested>>30)}
}
