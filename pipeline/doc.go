// Package pipeline is a job as a plan: Plan's methods are an image job's
// stages in the order Run calls them (ResolveImage, PrepareVolume,
// Populate or PopulateByClone, Finalize), and Space is the free space the
// running plans of a host hold. A plan reports through a Reporter and
// locks its volume through a function it is given: the broker (consumer,
// slots, leases, acks) and the job's record are the worker package's.
//
// The parts the stages use are one subpackage per concern, in the order a
// job meets them:
//
//   - source: the object store images come from (MinIO through minio-go):
//     the published checksum, and reads that resume at an offset.
//   - imagecache: the checksum-keyed image cache on the host (downloads,
//     verification, partial downloads a converter can stream from, the
//     golden volumes kept per digest, eviction, scrub).
//   - image: inspection of an image's header and the checks it must pass
//     (format, virtual size, no backing file or external data) before
//     anything is written.
//   - convert: the converters that write an image into a volume (the native
//     qcow2 reader and qemu-img), the raw copy, zeroing and the image's
//     data size.
//   - stages: the stage names a job's progress reports, and the progress
//     callback.
//
// The volumes themselves are the volume package's backends.
package pipeline
