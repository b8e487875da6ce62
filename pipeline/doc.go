// Package pipeline runs the stages of a job against small interfaces: the
// image source (MinIO through minio-go), the checksum-keyed cache, the image
// inspection, the converter (qemu-img) and the volume backend (raw files).
package pipeline
