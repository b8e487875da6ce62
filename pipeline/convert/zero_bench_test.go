package convert

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

const zeroBenchSize = 256 << 20

// BenchmarkZeroFill compares the kernel's zeroing calls (punching a hole in
// a file, BLKZEROOUT on a block device) with the fallback of writing zeros,
// on a target full of data. Run: make bench (or go test -bench ZeroFill).
func BenchmarkZeroFill(b *testing.B) {
	b.Run("file/punch-hole", func(b *testing.B) {
		benchZero(b, false, func(f *os.File) error { return ZeroFill(b.Context(), f.Name(), zeroBenchSize) })
	})
	b.Run("file/write-zeros", func(b *testing.B) { benchZero(b, false, writeZerosSync) })
	b.Run("loop/blkzeroout", func(b *testing.B) {
		benchZero(b, true, func(f *os.File) error {
			rng := [2]uint64{0, zeroBenchSize}
			if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&rng))); errno != 0 {
				return errno
			}
			return f.Sync()
		})
	})
	b.Run("loop/write-zeros", func(b *testing.B) { benchZero(b, true, writeZerosSync) })
}

func writeZerosSync(f *os.File) error {
	if err := writeZeros(context.Background(), f, zeroBenchSize); err != nil {
		return err
	}
	return f.Sync()
}

// benchZero fills a target (a file, or a loop device over one) with data
// before each timed zeroing.
func benchZero(b *testing.B, loop bool, zero func(*os.File) error) {
	backing := filepath.Join(b.TempDir(), "target")
	target := backing
	fill := func() {
		data := make([]byte, 1<<20)
		for i := range data {
			data[i] = 0xA5
		}
		f, err := os.OpenFile(backing, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		for off := int64(0); off < zeroBenchSize; off += int64(len(data)) {
			if _, err := f.WriteAt(data, off); err != nil {
				b.Fatal(err)
			}
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	fill()
	if loop {
		target = testenv.LoopDevice(b, backing)
	}
	b.SetBytes(zeroBenchSize)
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		fill()
		f, err := os.OpenFile(target, os.O_WRONLY, 0)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := zero(f); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		f.Close()
		b.StartTimer()
	}
}
