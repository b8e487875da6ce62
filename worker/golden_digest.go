package worker

import (
	"context"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// goldenHasher returns a hasher for a golden of size bytes when the
// converter can hash what it writes (convert.DigestConverter) and the
// backend can seal with that digest (volume.DigestSealer); nil otherwise,
// and the golden is read back when sealed.
func (w *Worker) goldenHasher(c cloneParts, size int64) *volume.GoldenHasher {
	if _, ok := w.parts.Converter.(convert.DigestConverter); !ok {
		return nil
	}
	if _, ok := c.backend.(volume.DigestSealer); !ok {
		return nil
	}
	return volume.NewGoldenHasher(size)
}

// sealGolden seals the prepared golden of key with the digest h computed
// while it was written, or, without one, has the backend read it back.
func (w *Worker) sealGolden(ctx context.Context, rep *reporter, c cloneParts, key string, prep volume.Volume, h *volume.GoldenHasher) (volume.Golden, error) {
	ds, ok := c.backend.(volume.DigestSealer)
	if h == nil || !ok {
		return c.backend.SealGolden(ctx, key, prep)
	}
	digest, err := h.Sum()
	if err != nil {
		rep.log.WithError(err).Warn("the golden was not hashed while it was written; reading it back to hash it")
		return c.backend.SealGolden(ctx, key, prep)
	}
	return ds.SealGoldenDigest(ctx, key, prep, digest)
}
