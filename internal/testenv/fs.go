package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// File systems FileSystem makes.
const (
	// XFS with reflinks (mkfs.xfs -m reflink=1).
	XFS = "xfs"
	// Btrfs (reflinks always).
	Btrfs = "btrfs"
	// Ext4, which has no reflinks.
	Ext4 = "ext4"
)

// fsMkfs is each file system's mkfs command, its package and its size (XFS
// needs 300 MiB at least).
var fsMkfs = map[string]struct {
	args    []string
	pkg     string
	sizeMiB int64
}{
	XFS:   {[]string{"mkfs.xfs", "-q", "-f", "-m", "reflink=1"}, "xfsprogs", 512},
	Btrfs: {[]string{"mkfs.btrfs", "-q", "-f"}, "btrfs-progs", 512},
	Ext4:  {[]string{"mkfs.ext4", "-q", "-F"}, "e2fsprogs", 256},
}

// FileSystem makes a new file system of kind (XFS, Btrfs or Ext4) in a
// sparse file on a loop device, mounts it on a directory of the test, and
// returns that directory; it is unmounted and detached when the test ends.
// Missing tools or root fail the test under CI and skip it elsewhere.
func FileSystem(tb testing.TB, kind string) string {
	tb.Helper()
	m, ok := fsMkfs[kind]
	if !ok {
		tb.Fatalf("unknown file system %q", kind)
	}
	return fileSystem(tb, kind, m.sizeMiB)
}

// FileSystemOfSize is FileSystem of sizeMiB MiB (the backing file is
// sparse: a large file system costs little).
func FileSystemOfSize(tb testing.TB, kind string, sizeMiB int64) string {
	tb.Helper()
	if _, ok := fsMkfs[kind]; !ok {
		tb.Fatalf("unknown file system %q", kind)
	}
	return fileSystem(tb, kind, sizeMiB)
}

func fileSystem(tb testing.TB, kind string, sizeMiB int64) string {
	tb.Helper()
	m := fsMkfs[kind]
	if _, err := exec.LookPath(m.args[0]); err != nil {
		Missing(tb, m.args[0], "apt-get install "+m.pkg+" (scripts/install-deps.sh installs it)")
	}
	dir := tb.TempDir()
	backing := filepath.Join(dir, kind+".img")
	f, err := os.Create(backing)
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.Truncate(sizeMiB << 20); err != nil {
		tb.Fatal(err)
	}
	_ = f.Close()
	dev := LoopDevice(tb, backing)
	if out, err := exec.Command(m.args[0], append(m.args[1:], dev)...).CombinedOutput(); err != nil {
		tb.Fatalf("%s %s: %v: %s", strings.Join(m.args, " "), dev, err, out)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		tb.Fatal(err)
	}
	if out, err := exec.Command("mount", dev, mnt).CombinedOutput(); err != nil {
		tb.Fatalf("mount %s %s: %v: %s", dev, mnt, err, out)
	}
	tb.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			tb.Errorf("umount %s: %v: %s", mnt, err, out)
			_ = exec.Command("umount", "-l", mnt).Run()
		}
	})
	return mnt
}

// MountTmpfs mounts a tmpfs of size at dir until the test ends; it fails
// under CI and skips elsewhere when that is impossible.
func MountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o750))
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput()
	if err != nil {
		msg := "mount a tmpfs (needs root): " + err.Error() + ": " + string(out)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
}
