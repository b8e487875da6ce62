// Package cloudinit builds NoCloud seed images: an ISO 9660 file system
// with the volume label cidata holding user-data, meta-data and, when
// given, network-config and vendor-data, which cloud-init finds on a disk
// attached to the VM. The image is made in Go (github.com/diskfs/go-diskfs,
// Rock Ridge and Joliet names, as cloud-localds and genisoimage write them),
// so a worker needs no ISO tools.
package cloudinit
