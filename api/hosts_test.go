package api

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

func TestListHostsSaysWhichAreAlive(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	registerHost(t, tb.buckets, "h0-stale", time.Now().Add(-time.Hour))

	rr := tb.do(t, request{method: http.MethodGet, path: "/api/v1/hosts"})
	require.Equal(t, http.StatusOK, rr.Code, rr.Body.String())
	var list rest.HostList
	require.NoError(t, json.Unmarshal(rr.Body.Bytes(), &list))
	require.Len(t, list.Hosts, 2)
	require.Equal(t, "h0-stale", list.Hosts[0].Name, "sorted by name")
	require.False(t, list.Hosts[0].Alive)
	require.Equal(t, testHost, list.Hosts[1].Name)
	require.True(t, list.Hosts[1].Alive)
	require.Equal(t, "test", list.Hosts[1].Version)
}

func TestNoDefaultHypervisorNamesTheKnownOnes(t *testing.T) {
	t.Parallel()
	tb := setup(t, func(c *Config) { c.DefaultHypervisor = "" })
	msg := apiError(t, tb.do(t, request{method: http.MethodGet, path: "/api/v1/cache/images"}), http.StatusBadRequest, catInvalid)
	require.Equal(t, "hypervisor is required (no default is configured); known hypervisors: h1", msg)
	msg = apiError(t, tb.submit(t, jobBody, ""), http.StatusBadRequest, catInvalid)
	require.Equal(t, "hypervisor is required (no default is configured); known hypervisors: h1", msg)
}
