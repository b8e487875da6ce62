package convert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"
)

// progressLog keeps the last populate progress reported.
type progressLog struct {
	mu          sync.Mutex
	calls       int
	done, total int64
}

func (p *progressLog) fn(stage string, done, total int64) {
	if stage != stages.Populate {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	p.done, p.total = done, total
}

func TestConvertQCOW2ByteExact(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	qcow2, raw := testenv.QCOW2Image(t, dir, 8<<20, 3)
	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	vol := testenv.GarbageVolume(t, dir, 16<<20)

	var pl progressLog
	require.NoError(t, QemuImg{Path: testenv.QemuImg(t)}.Convert(context.Background(), img, qcow2, vol, pl.fn))
	testenv.RequireVolumeIs(t, vol.Path, vol.Size, raw)
	require.Positive(t, pl.calls)
	require.Equal(t, int64(8<<20), pl.done)
	require.Equal(t, int64(8<<20), pl.total)
}

func TestConvertRawByteExact(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	require.NoError(t, testenv.RawImage(raw, 5<<20+4096, 4))
	img, err := image.Inspect(raw, "raw")
	require.NoError(t, err)
	vol := testenv.GarbageVolume(t, dir, 16<<20)

	var pl progressLog
	require.NoError(t, QemuImg{}.Convert(context.Background(), img, raw, vol, pl.fn))
	testenv.RequireVolumeIs(t, vol.Path, vol.Size, raw)
	require.Equal(t, int64(5<<20+4096), pl.done)
}

func TestConvertTooSmallVolume(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	qcow2, _ := testenv.QCOW2Image(t, dir, 8<<20, 5)
	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	vol := testenv.GarbageVolume(t, dir, 4<<20)
	err = QemuImg{}.Convert(context.Background(), img, qcow2, vol, nil)
	require.ErrorContains(t, err, "larger than the volume's")
}

func TestConvertQemuImgFailure(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	qcow2, _ := testenv.QCOW2Image(t, dir, 8<<20, 6)
	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	// A header Inspect accepts but with an L1 table offset that is not
	// cluster-aligned, which qemu-img refuses.
	f, err := os.OpenFile(qcow2, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte{0, 0, 0, 0, 0, 0, 0x10, 0x01}, 40)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	_, err = image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	vol := testenv.GarbageVolume(t, dir, 8<<20)
	err = QemuImg{Path: testenv.QemuImg(t)}.Convert(context.Background(), img, qcow2, vol, nil)
	require.ErrorContains(t, err, "qemu-img convert failed: exit status 1: ")
	require.ErrorContains(t, err, "qemu-img:")
}

func TestConvertCancelKillsQemuImg(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	qcow2, _ := testenv.QCOW2Image(t, dir, 1<<20, 8)
	img, err := image.Inspect(qcow2, "qcow2")
	require.NoError(t, err)
	vol := testenv.GarbageVolume(t, dir, 1<<20)

	// A qemu-img that first waits in a child of its own, so the test sees
	// whether cancelling kills the whole process group.
	pidFile := filepath.Join(dir, "pid")
	wrapper := filepath.Join(dir, "slow-qemu-img")
	script := fmt.Sprintf("#!/bin/sh\necho $$ > %s\nsleep 60\nexec %s \"$@\"\n", pidFile, testenv.QemuImg(t))
	require.NoError(t, os.WriteFile(wrapper, []byte(script), 0o700))

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- QemuImg{Path: wrapper}.Convert(ctx, img, qcow2, vol, nil) }()
	var pid int
	require.Eventually(t, func() bool {
		data, err := os.ReadFile(pidFile)
		if err != nil || !bytes.HasSuffix(data, []byte("\n")) {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(data)))
		return err == nil
	}, 10*time.Second, 10*time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		require.ErrorIs(t, err, context.Canceled)
		require.ErrorContains(t, err, "qemu-img convert of")
	case <-time.After(10 * time.Second):
		t.Fatal("Convert did not return after cancel")
	}
	// The process group (the shell and its sleep) is dead; an orphaned
	// member may stay a zombie until init reaps it.
	require.Eventually(t, func() bool { return !groupAlive(pid) }, 5*time.Second, 10*time.Millisecond)
}

// groupAlive reports whether a process of group pgid runs (zombies excluded).
func groupAlive(pgid int) bool {
	if errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH) {
		return false
	}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// Fields after "(comm)": state ppid pgrp ...
		i := bytes.LastIndexByte(data, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(data[i+1:]))
		if len(f) >= 3 && f[2] == strconv.Itoa(pgid) && f[0] != "Z" {
			return true
		}
	}
	return false
}

func TestZeroFill(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	vol := testenv.GarbageVolume(t, dir, 3<<20+123)
	require.NoError(t, ZeroFill(context.Background(), vol.Path, vol.Size))
	got, err := os.ReadFile(vol.Path)
	require.NoError(t, err)
	require.Len(t, got, int(vol.Size))
	require.True(t, fsutil.AllZero(got))

	require.NoError(t, os.Symlink(vol.Path, filepath.Join(dir, "link")))
	require.Error(t, ZeroFill(context.Background(), filepath.Join(dir, "link"), vol.Size))
}

func TestProgressWriter(t *testing.T) {
	t.Parallel()
	var got []float64
	w := &progressWriter{fn: func(p float64) { got = append(got, p) }}
	for _, s := range []string{"    (0.00/100%)\r", "    (12.5", "0/100%)\r    (100.00/100%)\r\n"} {
		_, err := w.Write([]byte(s))
		require.NoError(t, err)
	}
	require.Equal(t, []float64{0, 12.5, 100}, got)
}
