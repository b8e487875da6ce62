// Package volume is the contract between a job and the storage its volumes
// live on. A backend implements Backend (find, create exactly, delete) and,
// where its storage allows, the optional capabilities, each an interface of
// its own that the worker finds by type assertion:
//
//   - UseChecker: refuse a volume something (a running VM) holds;
//   - Refresher: refresh a catalogue after a volume's content changed;
//   - SpaceReporter: the free space of the file system volumes are written to;
//   - Cloner (and DigestSealer): keep a read-only golden volume per image and
//     make volumes as copy-on-write clones of it; GoldenInspector when goldens
//     are not plain files.
//
// The rules every backend follows are here too: CheckReuse (an existing
// volume is reused only within ±5% of the request), the sentinel errors
// (ErrInUse, ErrNotFound, ErrSizeMismatch, ErrCloneUnsupported, ErrNoSpace),
// and the golden digest (GoldenDigest, GoldenHasher) the cache records and
// re-checks. The backends are volume/file, volume/lvm and volume/libvirt;
// volume/volumetest is the conformance suite each of them runs.
package volume
