package tests

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

// fill takes the free space of dir's file system with a file of its own
// (fallocate: instant), leaving about keep bytes, and returns its path.
func fill(t *testing.T, dir string, keep int64) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	require.NoError(t, err)
	defer f.Close()
	for chunk := int64(64 << 20); chunk >= 4096; {
		var st unix.Statfs_t
		require.NoError(t, unix.Statfs(dir, &st))
		free := int64(st.Bavail) * st.Frsize
		if free-keep < 4096 {
			break
		}
		n := min(chunk, free-keep)
		cur, err := f.Seek(0, 2)
		require.NoError(t, err)
		err = unix.Fallocate(int(f.Fd()), 0, cur, n)
		if errors.Is(err, unix.ENOSPC) {
			chunk /= 2
			continue
		}
		require.NoError(t, err)
	}
	require.NoError(t, f.Sync())
	return p
}

// unfill removes the filler fill made in dir and waits until the file
// system counts its space as free again: XFS frees an unlinked file's
// blocks in the background, so a statfs just after the unlink may still
// see them used (and a job's free-space check refuse what now fits).
func unfill(t *testing.T, dir, filler string) {
	t.Helper()
	st, err := os.Stat(filler)
	require.NoError(t, err)
	var before unix.Statfs_t
	require.NoError(t, unix.Statfs(dir, &before))
	require.NoError(t, os.Remove(filler))
	want := int64(before.Bavail)*before.Frsize + st.Size()*9/10
	require.Eventually(t, func() bool {
		unix.Sync()
		var now unix.Statfs_t
		return unix.Statfs(dir, &now) == nil && int64(now.Bavail)*now.Frsize >= want
	}, 30*time.Second, 50*time.Millisecond, "the filler's space is free again")
}

func noGolden(t *testing.T, volDir string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(volDir, ".golden"))
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	require.NoError(t, err)
	for _, g := range ents {
		require.Equal(t, "owner", g.Name(), "no golden, and no golden being made, is left")
	}
}

// TestJobThatWouldOverfillFailsBeforeWriting: a job whose image's data does
// not fit in the volumes' file system fails with a sentence saying so,
// before it writes anything (a golden on XFS, a converted volume on ext4);
// with space again the same job succeeds.
func TestJobThatWouldOverfillFailsBeforeWriting(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ kind, what string }{{testenv.XFS, "the image's golden"}, {testenv.Ext4, `volume "vm-1"`}} {
		t.Run(tc.kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOptions{noWorker: true})
			mnt := testenv.FileSystem(t, tc.kind)
			volDir := filepath.Join(mnt, "volumes")
			e.startWorker("h1", "PROVISIONER_VOLUME_DIR="+volDir)
			qcow2, ref := image(t, 96<<20, 97) // about 32 MiB of data
			url := e.upload("images/big.qcow2", qcow2, true)
			filler := fill(t, mnt, 12<<20)

			id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-1", "volume_size_gb": 1})
			j := e.waitStatus(id, "failed")
			require.Contains(t, j.Error, "not enough free space for "+tc.what+": it needs ")
			require.Contains(t, j.Error, "nothing was written")
			require.NoFileExists(t, filepath.Join(volDir, "vm-1"))
			noGolden(t, volDir)

			unfill(t, mnt, filler)
			id = e.submit(map[string]any{"image_url": url, "volume_name": "vm-1", "volume_size_gb": 1})
			e.waitStatus(id, "completed")
			requireVolume(t, filepath.Join(volDir, "vm-1"), ref, gib)
		})
	}
}

// TestFileSystemFillingUpFailsTheJobCleanly: when the file system fills up
// while a job writes (something else took the space after its check), the
// job fails saying so, and what it created is removed: no half-written
// volume, no golden.
func TestFileSystemFillingUpFailsTheJobCleanly(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{testenv.XFS, testenv.Ext4} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOptions{noWorker: true})
			mnt := testenv.FileSystem(t, kind)
			volDir := filepath.Join(mnt, "volumes")
			e.startWorker("h1", slow, "PROVISIONER_VOLUME_DIR="+volDir)
			qcow2, ref := image(t, 96<<20, 98)
			url := e.upload("images/fill.qcow2", qcow2, true)

			id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-1", "volume_size_gb": 1})
			e.waitJob(id, 60*time.Second, func(j job) bool { return j.Progress != nil && j.Progress.Stage == "populating" })
			filler := fill(t, mnt, 0)
			j := e.waitStatus(id, "failed")
			require.Contains(t, j.Error, "filled up while the job was writing")
			require.Contains(t, j.Error, "no space left on device")
			require.NoFileExists(t, filepath.Join(volDir, "vm-1"), "the volume the job created was removed")
			noGolden(t, volDir)
			images := e.do(http.MethodGet, "/api/v1/cache/images", nil).json(t)["images"].([]any)
			for _, img := range images {
				require.NotContains(t, img, "golden")
			}

			unfill(t, mnt, filler)
			id = e.submit(map[string]any{"image_url": url, "volume_name": "vm-1", "volume_size_gb": 1})
			e.waitStatus(id, "completed")
			requireVolume(t, filepath.Join(volDir, "vm-1"), ref, gib)
		})
	}
}
