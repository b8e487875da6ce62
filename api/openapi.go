package api

import (
	"net/http"

	"github.com/libvirt-volume-provisioner/provisioner"
)

// openAPI serves the API's OpenAPI document (unauthenticated, like /health).
func (s *Server) openAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(provisioner.OpenAPI)
}
