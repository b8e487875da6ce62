package testenv

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
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
