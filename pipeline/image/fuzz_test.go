package image

// A fuzz target for the parser that reads an image's first bytes before
// anything else looks at them: Inspect (the image header, read before
// qemu-img opens the file). Run it with, for example:
//
//	go test -run '^$' -fuzz '^FuzzInspect$' -fuzztime 60s ./pipeline/image
//
// Without -fuzz, `go test ./pipeline/image` runs the seeds below and the
// corpus under testdata/fuzz/FuzzInspect/.

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// fuzzQCOW2Header builds a qcow2 header by hand: version 2 (72 bytes) or
// 3 (104 bytes), 64 KiB clusters.
func fuzzQCOW2Header(version uint32, size uint64, mutate func(h []byte)) []byte {
	n := qcowV2HeaderLen
	if version == 3 {
		n = QCOWV3HeaderLen
	}
	h := make([]byte, n)
	be := binary.BigEndian
	copy(h, QCOWMagic)
	be.PutUint32(h[4:], version)
	be.PutUint32(h[20:], 16) // cluster_bits
	be.PutUint64(h[24:], size)
	be.PutUint32(h[36:], 1)       // l1_size
	be.PutUint64(h[40:], 0x30000) // l1_table_offset
	be.PutUint64(h[48:], 0x10000) // refcount_table_offset
	be.PutUint32(h[56:], 1)       // refcount_table_clusters
	if version == 3 {
		be.PutUint32(h[96:], 4) // refcount_order
		be.PutUint32(h[100:], QCOWV3HeaderLen)
	}
	if mutate != nil {
		mutate(h)
	}
	return h
}

// fuzzQemuImgSeeds makes small images with qemu-img, when it is installed,
// and returns the first KiB of each (Inspect reads only the header).
func fuzzQemuImgSeeds(f *testing.F) [][]byte {
	qemuImg := os.Getenv("PROVISIONER_QEMU_IMG")
	if qemuImg == "" {
		qemuImg = "qemu-img"
	}
	if _, err := exec.LookPath(qemuImg); err != nil {
		return nil
	}
	// Not f.TempDir: every fuzz worker process runs this too, and a killed
	// worker never cleans its test's directories up.
	dir, err := os.MkdirTemp("", "fuzz-inspect-seeds-")
	if err != nil {
		f.Fatal(err)
	}
	defer os.RemoveAll(dir)
	run := func(args ...string) bool {
		cmd := exec.Command(qemuImg, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			f.Logf("qemu-img %v: %v: %s (seed skipped)", args, err, out)
			return false
		}
		return true
	}
	images := map[string][]string{
		"plain.qcow2":  {"create", "-f", "qcow2", "plain.qcow2", "1M"},
		"v2.qcow2":     {"create", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1M"},
		"backed.qcow2": {"create", "-f", "qcow2", "-b", "plain.qcow2", "-F", "qcow2", "backed.qcow2", "1M"},
		"luks.qcow2": {"create", "--object", "secret,id=sec0,data=fuzz-secret", "-f", "qcow2",
			"-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=250", "luks.qcow2", "1M"},
		"aes.qcow2": {"create", "--object", "secret,id=sec0,data=fuzz-secret", "-f", "qcow2",
			"-o", "compat=0.10,encrypt.format=aes,encrypt.key-secret=sec0", "aes.qcow2", "1M"},
		"datafile.qcow2": {"create", "-f", "qcow2", "-o", "data_file=datafile.raw", "datafile.qcow2", "1M"},
		"zstd.qcow2":     {"create", "-f", "qcow2", "-o", "compression_type=zstd", "zstd.qcow2", "1M"},
		"l2.qcow2":       {"create", "-f", "qcow2", "-o", "extended_l2=on", "l2.qcow2", "1M"},
		"big.qcow2":      {"create", "-f", "qcow2", "big.qcow2", "64T"},
		"raw.img":        {"create", "-f", "raw", "raw.img", "4K"},
	}
	order := []string{"plain.qcow2", "v2.qcow2", "backed.qcow2", "luks.qcow2", "aes.qcow2", "datafile.qcow2", "zstd.qcow2", "l2.qcow2", "big.qcow2", "raw.img"}
	var seeds [][]byte
	for _, name := range order {
		if !run(images[name]...) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, data[:min(len(data), 1024)])
	}
	return seeds
}

// FuzzInspect writes the input to a file and inspects it as qcow2, raw and
// undeclared. Inspect must not panic, hang or allocate in proportion to
// anything but the 104 header bytes it reads, and whatever it accepts as
// qcow2 is a self-contained image of 1 byte .. 64 TiB.
func FuzzInspect(f *testing.F) {
	be := binary.BigEndian
	hand := [][]byte{
		fuzzQCOW2Header(3, 1<<20, nil),
		fuzzQCOW2Header(2, 1<<20, nil),
		fuzzQCOW2Header(3, 1<<20, func(h []byte) { be.PutUint64(h[8:], 0x200); be.PutUint32(h[16:], 10) }), // backing file
		fuzzQCOW2Header(3, 1<<20, func(h []byte) { be.PutUint32(h[32:], 2) }),                              // LUKS
		fuzzQCOW2Header(2, 1<<20, func(h []byte) { be.PutUint32(h[32:], 1) }),                              // AES
		fuzzQCOW2Header(3, 1<<20, func(h []byte) { be.PutUint64(h[72:], qcowIncompatExternalData) }),       // data_file
		fuzzQCOW2Header(3, 1<<20, func(h []byte) { be.PutUint64(h[72:], 1<<5) }),                           // unknown feature
		fuzzQCOW2Header(3, 1<<20, func(h []byte) { be.PutUint32(h[100:], 72) }),                            // short header_length
		fuzzQCOW2Header(3, 1<<20, func(h []byte) { be.PutUint32(h[20:], 30) }),                             // cluster_bits
		fuzzQCOW2Header(3, 0, nil),
		fuzzQCOW2Header(3, uint64(MaxVirtualSize), nil),
		fuzzQCOW2Header(3, uint64(MaxVirtualSize)+1, nil),
		fuzzQCOW2Header(3, 1<<63, nil),
		fuzzQCOW2Header(1, 1<<20, nil),
		fuzzQCOW2Header(3, 1<<20, nil)[:80], // truncated v3
		fuzzQCOW2Header(2, 1<<20, nil)[:40], // truncated v2
		[]byte(QCOWMagic),
		[]byte("QFI"),
		{},
		{0},
		bytes.Repeat([]byte{0xeb, 0x63, 0x90}, 200), // raw boot sector-ish
		[]byte("KDMV\x01\x00\x00\x00"),              // vmdk magic: raw to Inspect
		[]byte("LUKS\xba\xbe\x00\x01"),              // LUKS magic: raw to Inspect
	}
	for _, s := range hand {
		f.Add(s)
	}
	for _, s := range fuzzQemuImgSeeds(f) {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "image")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, declared := range []string{"qcow2", "raw", ""} {
			img, err := fuzzInspectBounded(t, path, declared)
			if err != nil {
				if img != (Image{}) {
					t.Fatalf("Inspect(%q) returned %+v with error %v", declared, img, err)
				}
				continue
			}
			fuzzCheckImage(t, data, declared, img)
		}
	})
}

// fuzzInspectBounded runs Inspect with a 2 s deadline and a cap on what it
// may allocate.
func fuzzInspectBounded(t *testing.T, path, declared string) (Image, error) {
	t.Helper()
	type result struct {
		img   Image
		err   error
		alloc uint64
	}
	done := make(chan result, 1)
	go func() {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		img, err := Inspect(path, declared)
		runtime.ReadMemStats(&after)
		done <- result{img, err, after.TotalAlloc - before.TotalAlloc}
	}()
	select {
	case r := <-done:
		// Inspect reads a 104-byte header; its error messages quote at most
		// the path. 1 MiB leaves room for the runtime and the fuzzing engine.
		if r.alloc > 1<<20 {
			t.Fatalf("Inspect(%q) allocated %d bytes", declared, r.alloc)
		}
		return r.img, r.err
	case <-time.After(2 * time.Second):
		t.Fatalf("Inspect(%q) did not return within 2 s", declared)
		return Image{}, nil
	}
}

func fuzzCheckImage(t *testing.T, data []byte, declared string, img Image) {
	t.Helper()
	isQCOW := bytes.HasPrefix(data, []byte(QCOWMagic))
	switch img.Format {
	case "qcow2":
		if declared == "raw" {
			t.Fatal("Inspect(raw) returned a qcow2 image")
		}
		if !isQCOW {
			t.Fatalf("qcow2 accepted without the magic: %x", data[:min(len(data), 8)])
		}
		be := binary.BigEndian
		version := be.Uint32(data[4:])
		switch {
		case version != 2 && version != 3:
			t.Fatalf("accepted qcow version %d", version)
		case version == 2 && len(data) < qcowV2HeaderLen, version == 3 && len(data) < QCOWV3HeaderLen:
			t.Fatalf("accepted a truncated version %d header of %d bytes", version, len(data))
		case be.Uint64(data[8:]) != 0:
			t.Fatal("accepted an image with a backing file")
		case be.Uint32(data[32:]) != 0:
			t.Fatal("accepted an encrypted image")
		case version == 3 && be.Uint64(data[72:])&qcowIncompatExternalData != 0:
			t.Fatal("accepted an image with an external data file")
		case version == 3 && be.Uint64(data[72:])&^uint64(qcowIncompatKnown) != 0:
			t.Fatal("accepted unknown incompatible features")
		case img.VirtualSize < 1 || img.VirtualSize > MaxVirtualSize:
			t.Fatalf("accepted virtual size %d", img.VirtualSize)
		case uint64(img.VirtualSize) != be.Uint64(data[24:]):
			t.Fatalf("virtual size %d is not the header's %d", img.VirtualSize, be.Uint64(data[24:]))
		}
		if bits := be.Uint32(data[20:]); bits < 9 || bits > 21 {
			t.Fatalf("accepted cluster_bits %d", bits)
		}
	case "raw":
		if declared == "qcow2" {
			t.Fatal("Inspect(qcow2) returned a raw image")
		}
		if isQCOW {
			t.Fatal("a file with the qcow2 magic was accepted as raw")
		}
		if img.VirtualSize != int64(len(data)) || img.VirtualSize < 1 {
			t.Fatalf("raw virtual size %d for %d bytes", img.VirtualSize, len(data))
		}
	default:
		t.Fatalf("Inspect(%q) returned format %q", declared, img.Format)
	}
}
