// Package pipeline runs the stages of a job against small interfaces: the
// image source (MinIO through minio-go), the checksum-keyed cache, the image
// inspection, the converter (qemu-img) and the volume backend (raw files).
//
// The cache directory is shared with the operator. The cache keeps its own
// state in <cache dir>/.provisioner/ (partial downloads, and one ownership
// record per file it put in place) and removes a file only when its record
// matches it: see cache_owner.go.
package pipeline
