// Package imagecache is the host's image cache, keyed by the image's
// SHA-256: it downloads an image once (resuming, verifying its digest),
// lets a converter stream from a download still arriving (Partial), keeps
// the cache index in the JetStream KV bucket, pins entries while jobs use
// them, evicts by LRU and size cap, reconciles the directory with the
// index, and keeps the golden volumes per digest with their scrub.
//
// The cache directory is shared with the operator. The cache keeps its own
// state in <cache dir>/.provisioner/ (partial downloads, and one ownership
// record per file it put in place) and removes a file only when its record
// matches it: see cache_owner.go.
package imagecache
