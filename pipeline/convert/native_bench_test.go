package convert

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

const convertBenchSize = 256 << 20

// BenchmarkConvert compares Native with QemuImg on a 256 MiB disk holding an
// ext4 file system filled from /usr/share/doc (testenv.RawImage data when
// mkfs.ext4 is missing), compressed with zlib and with zstd, written into a
// volume file. MB/s are of the virtual disk. Run:
// go test -run '^$' -bench Convert -benchtime 3x ./pipeline
func BenchmarkConvert(b *testing.B) {
	dir := b.TempDir()
	raw := benchDisk(b, dir)
	converters := []struct {
		name string
		c    Converter
	}{
		{"Native", Native{}},
		{"QemuImg", QemuImg{Path: testenv.QemuImg(b)}},
	}
	for _, comp := range []string{"zlib", "zstd"} {
		qcow2 := filepath.Join(dir, comp+".qcow2")
		testenv.RunQemuImg(b, "convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "compression_type="+comp, raw, qcow2)
		img, err := image.Inspect(qcow2, "qcow2")
		if err != nil {
			b.Fatal(err)
		}
		if st, err := os.Stat(qcow2); err == nil {
			b.Logf("%s: %d MiB virtual, %d MiB qcow2", comp, img.VirtualSize>>20, st.Size()>>20)
		}
		for _, cv := range converters {
			b.Run(comp+"/"+cv.name, func(b *testing.B) {
				vol := zeroedBenchVolume(b, img.VirtualSize)
				b.SetBytes(img.VirtualSize)
				for b.Loop() {
					if err := cv.c.Convert(b.Context(), img, qcow2, vol, nil); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func zeroedBenchVolume(b *testing.B, size int64) volume.Volume {
	b.Helper()
	p := filepath.Join(b.TempDir(), "vol")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return volume.Volume{Name: "bench", Path: p, Size: size}
}

// BenchmarkNativeDecode reads the zlib qcow2 of BenchmarkConvert through
// go-qcow2reader in one goroutine and writes nothing: the decompressor alone
// (compress/flate, or libdeflate with -tags libdeflate). Run:
// go test -run '^$' -bench NativeDecode [-tags libdeflate] ./pipeline
func BenchmarkNativeDecode(b *testing.B) {
	dir := b.TempDir()
	raw := benchDisk(b, dir)
	qcow2 := filepath.Join(dir, "disk.qcow2")
	testenv.RunQemuImg(b, "convert", "-f", "raw", "-O", "qcow2", "-c", raw, qcow2)
	img, err := image.Inspect(qcow2, "qcow2")
	if err != nil {
		b.Fatal(err)
	}
	in, err := os.Open(qcow2)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	q, err := openQCOW2(in, img)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("zlib decompressor: %s", zlibDecompressor)
	buf := make([]byte, NativeChunkSize)
	b.SetBytes(img.VirtualSize)
	for b.Loop() {
		for off := int64(0); off < img.VirtualSize; off += int64(len(buf)) {
			n := min(int64(len(buf)), img.VirtualSize-off)
			if r, err := q.ReadAt(buf[:n], off); int64(r) != n {
				b.Fatal(err)
			}
		}
	}
}

// benchDisk makes the benchmarks' raw disk in dir: an ext4 file system
// filled from /usr/share/doc, or testenv.RawImage data without mkfs.ext4.
func benchDisk(b *testing.B, dir string) string {
	b.Helper()
	raw := filepath.Join(dir, "disk.raw")
	if _, err := exec.LookPath("mkfs.ext4"); err == nil {
		f, err := os.Create(raw)
		if err != nil {
			b.Fatal(err)
		}
		if err := f.Truncate(convertBenchSize); err != nil {
			b.Fatal(err)
		}
		_ = f.Close()
		out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", "/usr/share/doc", raw).CombinedOutput()
		if err == nil {
			return raw
		}
		b.Logf("mkfs.ext4 -d /usr/share/doc failed (%v: %s); using random data", err, out)
	}
	if err := testenv.RawImage(raw, convertBenchSize, 60); err != nil {
		b.Fatal(err)
	}
	return raw
}
