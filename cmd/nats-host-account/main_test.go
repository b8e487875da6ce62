package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/embedded"
)

func TestRun(t *testing.T) {
	t.Parallel()

	t.Run("prints the account and the import", func(t *testing.T) {
		t.Parallel()
		var out strings.Builder
		require.NoError(t, run([]string{"hv-03"}, &out))
		a := embedded.NewHostAccount("", "hv-03")
		require.Contains(t, out.String(), a.Config())
		require.Contains(t, out.String(), a.MainImport())
		require.Contains(t, out.String(), "PROVISIONER_NKEY_WORKER_HV_03")
		require.Contains(t, out.String(), "PROVISIONER_NATS_JS_PREFIX="+embedded.HostAPIPrefix+"\n")
	})

	t.Run("refuses a bad host name", func(t *testing.T) {
		t.Parallel()
		var out strings.Builder
		require.ErrorContains(t, run([]string{"HV.03"}, &out), `host name "HV.03" is not a valid host token`)
		require.ErrorContains(t, run(nil, &out), "want exactly one host name")
	})
}
