// Package source reads images from the object store (MinIO, through
// minio-go): an object's published SHA-256 (its checksum sidecar or
// metadata), its size and ETag, and reads from an offset pinned to that
// ETag so an interrupted download resumes without mixing two versions of
// an object. IsTransient tells the retryable failures from the rest.
package source
