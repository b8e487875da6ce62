// Package libvirt keeps volumes in a libvirt storage pool: Backend
// creates, finds and removes the volumes the worker writes (in a dir, fs,
// netfs or logical pool) and refuses to overwrite one that a running domain
// has attached; ImagesPool is the dir pool whose directory holds the image
// cache, refreshed after the cache changes so that libvirt lists the cached
// images.
//
// The package uses libvirt's C library through cgo (libvirt.org/go/libvirt,
// Debian's libvirt-dev at build time). Built with CGO_ENABLED=0 it is empty,
// so that `go build ./...` and `go vet ./...` still work without cgo.
package libvirt
