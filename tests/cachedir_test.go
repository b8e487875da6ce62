package tests

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// cacheDirEntries lists the cache directory dir as an operator sees it,
// without the worker's own state directory (.provisioner: its partial
// downloads and ownership records).
func cacheDirEntries(t *testing.T, dir string) []os.DirEntry {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []os.DirEntry
	for _, e := range entries {
		if e.Name() != ".provisioner" {
			out = append(out, e)
		}
	}
	return out
}
