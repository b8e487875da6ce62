package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// image is a generated QCOW2 image.
type image struct {
	name    string
	path    string // the qcow2 file
	virtual int64  // virtual size, bytes
	size    int64  // file size, bytes
	sha     string // hex SHA-256 of the file
	object  string // object name in the bucket
	dataMB  int64  // real data written into it, MB (informative)
	loopDev string // loop device sized to the virtual size, when used
}

func (i *image) volumeGB() int64 { return (i.virtual + (1 << 30) - 1) >> 30 }

func (i *image) describe() string {
	return fmt.Sprintf("%s: %d GiB virtual, %d MiB QCOW2 (zlib), ~%d MB of data", i.name, i.virtual>>30, i.size>>20, i.dataMB)
}

type imageSpec struct {
	virtual int64
	kind    string // ext4 or sparse
	roots   []root // ext4: where the files come from
}

type root struct {
	dir   string
	quota int64
}

func specs() map[string]imageSpec {
	goroot := runtime.GOROOT()
	return map[string]imageSpec{
		// An ext4 filesystem holding ~800 MB of real files: the Go
		// toolchain, then documentation and data, then shared libraries.
		"realistic": {virtual: 4 << 30, kind: "ext4", roots: []root{
			{goroot, 270 << 20}, {"/usr/share", 265 << 20}, {"/usr/lib", 265 << 20}}},
		"small": {virtual: 1 << 30, kind: "ext4", roots: []root{{filepath.Join(goroot, "src"), 200 << 20}}},
		// Ten times small's data: its files ten times over, 4 GiB virtual.
		"small10": {virtual: 4 << 30, kind: "ext4", roots: repeat(root{filepath.Join(goroot, "src"), 200 << 20}, 10)},
		"tiny":    {virtual: 64 << 20, kind: "ext4", roots: []root{{filepath.Join(goroot, "src", "fmt"), 8 << 20}}},
		// 20 GiB virtual, four 16 MiB runs of real bytes spread over it.
		"sparse": {virtual: 20 << 30, kind: "sparse"},
	}
}

func repeat(r root, n int) []root {
	out := make([]root, n)
	for i := range out {
		out[i] = r
	}
	return out
}

// buildImage makes (or finds, from an earlier run) the image called name
// under dir.
func buildImage(ctx context.Context, dir, name string) (*image, error) {
	sp, ok := specs()[name]
	if !ok {
		return nil, fmt.Errorf("unknown image %q (realistic, sparse, small)", name)
	}
	img := &image{name: name, path: filepath.Join(dir, "images", name+".qcow2"), virtual: sp.virtual,
		object: "bench/" + name + ".qcow2"}
	meta := img.path + ".meta"
	if st, err := os.Stat(img.path); err == nil {
		if b, err := os.ReadFile(meta); err == nil {
			if _, err := fmt.Sscanf(string(b), "%s %d", &img.sha, &img.dataMB); err == nil {
				img.size = st.Size()
				logf("image %s (built earlier)", img.describe())
				return img, nil
			}
		}
	}
	if err := os.MkdirAll(filepath.Dir(img.path), 0o755); err != nil {
		return nil, err
	}
	raw := filepath.Join(dir, "images", name+".raw")
	defer os.Remove(raw)
	logf("building image %s (%d GiB virtual)...", name, sp.virtual>>30)
	switch sp.kind {
	case "ext4":
		src := filepath.Join(dir, "images", name+"-files")
		os.RemoveAll(src)
		n, err := collectFiles(src, sp.roots)
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(src)
		img.dataMB = n / 1e6
		if err := run(ctx, "mkfs.ext4", "-q", "-F", "-L", "bench", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-d", src, raw, fmt.Sprintf("%dM", sp.virtual>>20)); err != nil {
			return nil, err
		}
	case "sparse":
		n, err := writeSparse(raw, sp.virtual)
		if err != nil {
			return nil, err
		}
		img.dataMB = n / 1e6
	}
	tmp := img.path + ".tmp"
	// -m/-W only make the compression parallel; the image is the same.
	if err := run(ctx, "qemu-img", "convert", "-c", "-m", "8", "-W", "-f", "raw", "-O", "qcow2", raw, tmp); err != nil {
		return nil, err
	}
	sum, err := fileSHA256(tmp)
	if err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, img.path); err != nil {
		return nil, err
	}
	img.sha = sum
	st, _ := os.Stat(img.path)
	img.size = st.Size()
	if err := os.WriteFile(meta, []byte(fmt.Sprintf("%s %d\n", img.sha, img.dataMB)), 0o644); err != nil {
		return nil, err
	}
	logf("image %s", img.describe())
	return img, nil
}

// collectFiles copies regular files from each root (up to its quota) into
// dst, keeping their relative paths; it returns the bytes copied.
func collectFiles(dst string, roots []root) (int64, error) {
	var total int64
	for i, r := range roots {
		var used int64
		base := filepath.Join(dst, fmt.Sprintf("%d-%s", i, strings.ReplaceAll(strings.Trim(r.dir, "/"), "/", "-")))
		err := filepath.WalkDir(r.dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // unreadable: skip
			}
			if used >= r.quota {
				return fs.SkipAll
			}
			if !d.Type().IsRegular() {
				return nil
			}
			info, err := d.Info()
			if err != nil || info.Size() > 32<<20 {
				return nil
			}
			rel, _ := filepath.Rel(r.dir, p)
			n, err := copyFile(p, filepath.Join(base, rel), info.Mode().Perm())
			if err != nil {
				return nil
			}
			used += n
			return nil
		})
		if err != nil {
			return total, err
		}
		total += used
	}
	return total, nil
}

func copyFile(src, dst string, perm fs.FileMode) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return 0, err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm|0o200)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// writeSparse makes a raw file of size bytes that is empty except for four
// 16 MiB runs of real bytes (the go binary, repeated) at 0, 1/3, 2/3 and the end.
func writeSparse(path string, size int64) (int64, error) {
	data, err := os.ReadFile(filepath.Join(runtime.GOROOT(), "bin", "go"))
	if err != nil {
		return 0, err
	}
	chunk := make([]byte, 16<<20)
	for i := 0; i < len(chunk); i += copy(chunk[i:], data) {
	}
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return 0, err
	}
	var n int64
	for _, off := range []int64{0, size / 3 &^ (1<<20 - 1), 2 * size / 3 &^ (1<<20 - 1), size - int64(len(chunk))} {
		if _, err := f.WriteAt(chunk, off); err != nil {
			return n, err
		}
		n += int64(len(chunk))
	}
	return n, f.Sync()
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func lookPath(name string) (string, error) { return exec.LookPath(name) }
