// Package tests holds the integration tests: they build the real api and
// worker binaries and run them against an embedded nats-server (inside the
// api process), a real MinIO server process and real qemu-img.
package tests
