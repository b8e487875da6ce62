package volumetest

import (
	"bytes"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// WatchVolume checks, from now until stop is called, that path always names
// a whole file of size bytes, as a volume must while it is recloned (a
// fresh clone renamed over it): stop fails t if the name went missing or
// read short meanwhile.
func WatchVolume(t *testing.T, path string, size int64) (stop func()) {
	t.Helper()
	var done atomic.Bool
	var bad atomic.Value
	var wg sync.WaitGroup
	wg.Go(func() {
		for !done.Load() {
			st, err := os.Stat(path)
			if err != nil {
				bad.Store(err.Error())
				return
			}
			if st.Size() != size {
				bad.Store(fmt.Sprintf("size %d", st.Size()))
				return
			}
		}
	})
	halt := func() {
		done.Store(true)
		wg.Wait()
	}
	t.Cleanup(halt)
	return func() {
		t.Helper()
		halt()
		require.Nil(t, bad.Load(), "the volume's name went missing or read short while it was recloned")
	}
}

// Scribble writes 1 MiB of 0xa5 at each offset of the file at path and
// flushes it.
func Scribble(t *testing.T, path string, offs ...int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	defer f.Close()
	junk := bytes.Repeat([]byte{0xa5}, 1<<20)
	for _, off := range offs {
		_, err = f.WriteAt(junk, off)
		require.NoError(t, err)
	}
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
}

// Inode is the inode number of the file at path.
func Inode(t *testing.T, path string) uint64 {
	t.Helper()
	st, err := os.Stat(path)
	require.NoError(t, err)
	return st.Sys().(*syscall.Stat_t).Ino
}
