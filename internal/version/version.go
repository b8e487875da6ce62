// Package version holds the build's version, set with
// -ldflags "-X github.com/libvirt-volume-provisioner/provisioner/internal/version.Version=...".
package version

// Version of this build.
var Version = "0.1.0-dev"
