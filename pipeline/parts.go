package pipeline

import (
	"context"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/imagecache"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/source"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// Parts are the implementations a plan drives: where images come from, the
// host's cache of them, the volumes, and the converter that writes one into
// the other.
type Parts struct {
	Source    Source
	Cache     ImageCache
	Backend   volume.Backend
	Converter convert.Converter
	// Checker, when set, checks a newly downloaded image's structure
	// (qemu-img check) before it is used.
	Checker ImageChecker
}

// StreamConverter is a Converter that can also read a qcow2 image while it
// downloads (convert.Native).
type StreamConverter interface {
	ConvertStream(ctx context.Context, img image.Image, part image.Arriving, vol volume.Volume, progress stages.ProgressFunc) error
}

// ImageChecker refuses a corrupt or truncated image.
type ImageChecker interface {
	Check(ctx context.Context, img image.Image, path string) error
}

// Source is the image store as a plan needs it.
type Source interface {
	source.Source
	// Endpoint is the configured endpoint, host:port.
	Endpoint() string
}

// ImageCache is the host's image cache as a plan (Acquire, Remove) and the
// worker that runs the plans (ReconcileReport, Dir) need it.
type ImageCache interface {
	// Acquire makes sure the image is cached (or, to stream it, being
	// downloaded) and keeps it from eviction and removal until the
	// Fetch's Release; the plan checks a hit's digest (Fetch.Verify)
	// while it converts.
	Acquire(ctx context.Context, src source.Source, ref messaging.ImageRef, o imagecache.AcquireOptions) (*imagecache.Fetch, error)
	// Remove deletes an entry and its file (an image found to be unusable).
	Remove(ctx context.Context, key string) error
	// ReconcileReport brings the directory and the index into agreement.
	ReconcileReport(ctx context.Context) (imagecache.ReconcileSummary, error)
	// Dir is the cache directory.
	Dir() string
}

// GoldenCache is the part of the image cache that keeps each image's golden
// (imagecache.Cache).
type GoldenCache interface {
	LockGolden(ctx context.Context, key string) (func(), error)
	Golden(ctx context.Context, key string) (volume.Golden, bool, error)
	AttachGolden(ctx context.Context, g volume.Golden) (kvstate.Golden, error)
	VerifyGolden(ctx context.Context, g volume.Golden) error
}

// A plan finds these capabilities by type assertion: a signature that
// drifts must fail the build, not switch a capability off.
var (
	_ convert.Converter       = convert.Native{}
	_ StreamConverter         = convert.Native{}
	_ convert.DigestConverter = convert.Native{}
	_ convert.Converter       = convert.QemuImg{}
	_ ImageChecker            = convert.QemuImg{}
	_ ImageCache              = (*imagecache.Cache)(nil)
	_ GoldenCache             = (*imagecache.Cache)(nil)
	_ Source                  = (*source.MinIO)(nil)
)
