package testenv

import (
	crand "crypto/rand"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// QemuImg returns the path of qemu-img, or fails/skips the test saying to
// install Debian's qemu-utils.
func QemuImg(tb testing.TB) string {
	tb.Helper()
	p, err := exec.LookPath("qemu-img")
	if err != nil {
		Missing(tb, "qemu-img", "apt-get install qemu-utils")
	}
	return p
}

// RawImage writes a raw disk image of size bytes at path: seeded random data in
// about one 64 KiB block in three, zeros elsewhere, so a converter must get both right.
func RawImage(path string, size int64, seed uint64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	block := make([]byte, 64<<10)
	for off := int64(0); off < size; off += int64(len(block)) {
		if r.IntN(3) != 0 { // one block in three holds data
			continue
		}
		for i := range block {
			block[i] = byte(r.UintN(256))
		}
		n := int64(len(block))
		if off+n > size {
			n = size - off
		}
		if _, err := f.WriteAt(block[:n], off); err != nil {
			return err
		}
	}
	return f.Sync()
}

// QCOW2Image makes a compressed qcow2 of a RawImage of virtual size bytes in
// dir and returns the qcow2's path and the raw reference's path.
func QCOW2Image(tb testing.TB, dir string, size int64, seed uint64) (qcow2, raw string) {
	tb.Helper()
	qemuImg := QemuImg(tb)
	raw = filepath.Join(dir, fmt.Sprintf("ref-%d.raw", seed))
	qcow2 = filepath.Join(dir, fmt.Sprintf("image-%d.qcow2", seed))
	if err := RawImage(raw, size, seed); err != nil {
		tb.Fatal(err)
	}
	out, err := exec.Command(qemuImg, "convert", "-f", "raw", "-O", "qcow2", "-c", raw, qcow2).CombinedOutput()
	if err != nil {
		tb.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	return qcow2, raw
}

// QemuRawReference converts the qcow2 image to raw with qemu-img itself
// (next to it, as qcow2+".ref"): what a volume filled from it must hold.
func QemuRawReference(tb testing.TB, qcow2 string) string {
	tb.Helper()
	ref := qcow2 + ".ref"
	if out, err := exec.Command(QemuImg(tb), "convert", "-f", "qcow2", "-O", "raw", qcow2, ref).CombinedOutput(); err != nil {
		tb.Fatalf("qemu-img convert %s: %v: %s", qcow2, err, out)
	}
	return ref
}

// GarbageVolume is a file volume of size random bytes in dir: a target a
// converter must overwrite completely, zeros included.
func GarbageVolume(tb testing.TB, dir string, size int64) volume.Volume {
	tb.Helper()
	p := filepath.Join(dir, "vol")
	f, err := os.Create(p)
	if err == nil {
		_, err = io.CopyN(f, crand.Reader, size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		tb.Fatalf("garbage volume: %v", err)
	}
	return volume.Volume{Name: "vol", Path: p, Size: size}
}

// ZeroedVolume is a sparse file volume of size bytes in dir, reading as
// zeros: the target a backend creates for a new volume.
func ZeroedVolume(tb testing.TB, dir string, size int64) volume.Volume {
	tb.Helper()
	p := filepath.Join(dir, "zeroed-vol")
	f, err := os.Create(p)
	if err == nil {
		err = f.Truncate(size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		tb.Fatalf("zeroed volume: %v", err)
	}
	return volume.Volume{Name: "zeroed", Path: p, Size: size}
}

// RunQemuImg runs qemu-img with args and fails the test on error.
func RunQemuImg(tb testing.TB, args ...string) {
	tb.Helper()
	if out, err := exec.Command(QemuImg(tb), args...).CombinedOutput(); err != nil {
		tb.Fatalf("qemu-img %v: %v: %s", args, err, out)
	}
}
