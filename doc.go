// Package provisioner is the root of the libvirt-volume-provisioner module.
// It holds what belongs to the whole project rather than to one program:
// the OpenAPI document of the REST API (api.yaml), embedded so that the API
// serves, and the tests check, exactly the document in the repository.
package provisioner
