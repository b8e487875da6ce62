package api

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// listJobs gets a page of GET /api/v1/jobs?query.
func (tb *testBundle) listJobs(t *testing.T, query string) rest.JobList {
	t.Helper()
	rr := tb.do(t, request{method: http.MethodGet, path: "/api/v1/jobs?" + query})
	require.Equal(t, http.StatusOK, rr.Code, rr.Body.String())
	var list rest.JobList
	require.NoError(t, json.Unmarshal(rr.Body.Bytes(), &list))
	return list
}

func ids(list rest.JobList) []string {
	out := make([]string, len(list.Jobs))
	for i, j := range list.Jobs {
		out[i] = j.JobID
	}
	return out
}

func TestListJobs(t *testing.T) {
	t.Parallel()
	tb := setup(t)

	msg := apiError(t, tb.do(t, request{method: http.MethodGet, path: "/api/v1/jobs"}), http.StatusServiceUnavailable, catUnavailable)
	require.Equal(t, "the job index is still loading; try again later", msg)

	var submitted []string // oldest first
	for _, vol := range []string{"vm-1", "vm-2", "vm-3"} {
		submitted = append(submitted, accepted(t, tb.submit(t, strings.Replace(jobBody, "vm-1", vol, 1), "")))
		time.Sleep(10 * time.Millisecond) // created_at orders them
	}
	_, _, err := tb.srv.state.Jobs.Update(testCtx(t), testHost, submitted[1], func(j *kvstate.Job) error { j.Status = kvstate.StatusFailed; return nil })
	require.NoError(t, err)
	require.NoError(t, tb.srv.RunFleetMetrics(testCtx(t), FleetOptions{}))
	require.Eventually(t, func() bool {
		rr := tb.do(t, request{method: http.MethodGet, path: "/api/v1/jobs?status=failed"})
		return rr.Code == http.StatusOK && strings.Contains(rr.Body.String(), submitted[1])
	}, 10*time.Second, 20*time.Millisecond, "the index loads")

	newestFirst := []string{submitted[2], submitted[1], submitted[0]}
	for _, tc := range []struct {
		name, query string
		want        []string
		count       int
	}{
		{"all", "", newestFirst, 3},
		{"one host", "hypervisor=h1", newestFirst, 3},
		{"another host", "hypervisor=h2", nil, 0},
		{"failed", "status=failed", []string{submitted[1]}, 1},
		{"pending", "status=pending", []string{submitted[2], submitted[0]}, 2},
		{"two statuses", "status=pending,failed", newestFirst, 3},
		{"a page", "offset=1&limit=1", []string{submitted[1]}, 3},
		{"past the end", "offset=5", nil, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			list := tb.listJobs(t, tc.query)
			require.Equal(t, tc.count, list.Count)
			if tc.want == nil {
				require.NotNil(t, list.Jobs, "an empty page is [], not null")
				require.Empty(t, list.Jobs)
				return
			}
			require.Equal(t, tc.want, ids(list))
		})
	}
	page := tb.listJobs(t, "offset=1&limit=1")
	require.Equal(t, 1, page.Offset)
	require.Equal(t, 1, page.Limit)
	require.Equal(t, kvstate.StatusFailed, page.Jobs[0].Status)
	require.Equal(t, "vm-2", page.Jobs[0].VolumeName)

	for _, tc := range []struct{ query, message string }{
		{"status=done", `status "done" is not a job status (pending, running, completed, failed, cancelled)`},
		{"hypervisor=H_1", `hypervisor "H_1" is not a host name (lower-case letters, digits and dashes)`},
		{"limit=0", `limit must be an integer between 1 and 1000, not "0"`},
		{"offset=-1", `offset must be an integer between 0 and 2147483647, not "-1"`},
	} {
		msg := apiError(t, tb.do(t, request{method: http.MethodGet, path: "/api/v1/jobs?" + tc.query}), http.StatusBadRequest, catInvalid)
		require.Equal(t, tc.message, msg, tc.query)
	}
}
