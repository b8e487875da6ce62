//go:build !cgo

package main

import "errors"

func openLibvirt(backendConfig) (volumes, error) {
	return volumes{}, errors.New("this worker was built without cgo, so without the libvirt backend; rebuild with CGO_ENABLED=1 and libvirt-dev")
}
