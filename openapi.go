package provisioner

import _ "embed"

// OpenAPI is the OpenAPI 3.0.3 document (YAML) of the REST API: every
// endpoint, request and response field, status code and header. The API
// serves it at GET /api/v1/openapi.yaml; tests/openapi_test.go validates
// real requests and responses against it.
//
//go:embed api.yaml
var OpenAPI []byte
