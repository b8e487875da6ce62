package convert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/libvirt-volume-provisioner/provisioner/internal/cmdutil"
	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// stderrTail is how much of qemu-img's stderr is kept for error messages.
const stderrTail = 4 << 10

// QemuImg converts images with qemu-img.
type QemuImg struct {
	// Path is the qemu-img binary; "" means "qemu-img" on PATH.
	Path string
	// RateLimit caps volume writes in bytes per second (0: no limit), so
	// provisioning does not starve running VMs of disk bandwidth.
	RateLimit int64
	// MemoryLimit caps qemu-img's address space in bytes (RLIMIT_AS);
	// 0 means DefaultQemuImgMemoryLimit, negative means no limit.
	MemoryLimit int64

	// hash, when set, is told what a raw image's copy writes (Native's
	// raw path); qemu-img's own writes cannot be.
	hash *volume.GoldenHasher
}

// rawCopy are copyRaw's settings.
type rawCopy struct {
	rateLimit int64
	hash      *volume.GoldenHasher // nil: not hashed
	progress  stages.ProgressFunc
}

// run starts cmd (a qemu-img command) and waits for it, with its address
// space capped at q.MemoryLimit: a hostile image must not make qemu-img use
// unbounded memory. Pdeathsig fires when the thread that started the child
// exits, so the calling goroutine keeps its thread until the child is reaped.
func (q QemuImg) run(cmd *exec.Cmd, bin string) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	lim := q.MemoryLimit
	if lim == 0 {
		lim = DefaultQemuImgMemoryLimit
	}
	if lim > 0 {
		_ = unix.Prlimit(cmd.Process.Pid, unix.RLIMIT_AS, &unix.Rlimit{Cur: uint64(lim), Max: uint64(lim)}, nil)
	}
	return cmd.Wait()
}

// DefaultQemuImgMemoryLimit is qemu-img's default address-space limit.
const DefaultQemuImgMemoryLimit = 2 << 30

var _ Converter = QemuImg{}

// Convert writes img's disk into vol: it zeroes the whole volume, writes the
// image's data over it (qemu-img for qcow2, a Go copy for raw) and flushes
// the volume to stable storage.
func (q QemuImg) Convert(ctx context.Context, img image.Image, imagePath string, vol volume.Volume, progress stages.ProgressFunc) error {
	if progress == nil {
		progress = func(string, int64, int64) {}
	}
	if err := img.CheckFits(vol.Size); err != nil {
		return fmt.Errorf("populate volume %q: %w", vol.Name, err)
	}
	target, err := filepath.Abs(vol.Path)
	if err != nil {
		return fmt.Errorf("volume path %q: %w", vol.Path, err)
	}
	src, err := filepath.Abs(imagePath)
	if err != nil {
		return fmt.Errorf("image path %q: %w", imagePath, err)
	}
	target, block, err := resolveTarget(target)
	if err != nil {
		return fmt.Errorf("volume %q: %w", vol.Name, err)
	}
	size, err := targetSize(target)
	if err != nil {
		return fmt.Errorf("volume %q: %w", vol.Name, err)
	}
	switch {
	case !block && size != vol.Size:
		return fmt.Errorf("volume file %s is %d bytes, not the %d bytes volume %q should have", target, size, vol.Size, vol.Name)
	case block && size < vol.Size:
		return fmt.Errorf("block device %s is %d bytes, smaller than the %d bytes volume %q should have", target, size, vol.Size, vol.Name)
	}
	if err := img.CheckFits(size); err != nil {
		return fmt.Errorf("populate volume %q: %w", vol.Name, err)
	}
	// The whole device or file reads as zeros first: the image leaves its
	// empty ranges unwritten, and nothing an earlier owner left may survive.
	if err := zeroFirst(ctx, vol, target, size); err != nil {
		return err
	}
	progress(stages.Populate, 0, img.VirtualSize)
	switch img.Format {
	case messaging.ImageQCOW2:
		err = q.convertQCOW2(ctx, img, src, target, block, progress)
	case messaging.ImageRaw:
		err = copyRaw(ctx, img, src, target, block, rawCopy{rateLimit: q.RateLimit, hash: q.hash, progress: progress})
	default:
		err = fmt.Errorf("cannot populate a volume from an image of format %q", img.Format)
	}
	if err != nil {
		return err
	}
	if err := syncPath(target); err != nil {
		return err
	}
	progress(stages.Populate, img.VirtualSize, img.VirtualSize)
	return nil
}

var progressRE = regexp.MustCompile(`\((\d+(?:\.\d+)?)/100%\)`)

func (q QemuImg) convertQCOW2(ctx context.Context, img image.Image, src, target string, block bool, progress stages.ProgressFunc) error {
	bin := q.Path
	if bin == "" {
		bin = "qemu-img"
	}
	// -n: the target exists; --target-is-zero: ZeroFill made it read as zeros,
	// so qemu-img writes only data. Explicit formats: nothing is probed.
	// Targets are written with O_DIRECT (-t none) where they support it, so
	// the page cache does not fill with dirty pages; other files go through
	// it and are fsynced.
	cache := "writeback"
	if block || directIO(target) {
		cache = "none"
	}
	// -m 16 -W: sixteen coroutines writing out of order; the target is
	// zeroed first, so order does not matter (BENCHMARKS.md compares it
	// with qemu-img's defaults).
	args := []string{"convert", "-p", "-f", "qcow2", "-O", "raw", "-t", cache, "-n", "--target-is-zero", "-m", "16", "-W"}
	if q.RateLimit > 0 {
		args = append(args, "-r", strconv.FormatInt(q.RateLimit, 10))
	}
	args = append(args, src, target)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	cmd.Cancel = func() error {
		// Kill the whole process group, qemu-img and anything it started.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 5 * time.Second
	stderr := &cmdutil.Tail{Max: stderrTail}
	cmd.Stderr = stderr
	cmd.Stdout = &progressWriter{fn: func(pct float64) {
		progress(stages.Populate, int64(pct/100*float64(img.VirtualSize)), img.VirtualSize)
	}}

	errc := make(chan error, 1)
	go func() { errc <- q.run(cmd, bin) }()
	err := <-errc
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("qemu-img convert of %s stopped: %w", src, ctxErr)
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return fmt.Errorf("qemu-img convert failed: %v: %s", exitErr, strings.TrimSpace(stderr.String()))
	}
	return fmt.Errorf("qemu-img convert failed: %w", err)
}

// copyRaw copies a raw image into the zeroed target, skipping zero chunks.
// A block device is written with O_DIRECT from a page-aligned buffer, the
// last chunk padded with zeros to the device's logical block size.
func copyRaw(ctx context.Context, img image.Image, src, target string, block bool, o rawCopy) error {
	progress := o.progress
	var limiter *rate.Limiter
	if o.rateLimit > 0 {
		limiter = rate.NewLimiter(rate.Limit(o.rateLimit), copyBufSize)
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open image %q: %w", src, err)
	}
	defer in.Close()
	t, err := openRawTarget(target, block)
	if err != nil {
		return err
	}
	defer t.close()
	mem, err := unix.Mmap(-1, 0, copyBufSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return fmt.Errorf("allocate copy buffer: %w", err)
	}
	defer unix.Munmap(mem)
	buf := mem[:copyBufSize]
	var off int64
	for off < img.VirtualSize {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("copy of %s stopped: %w", src, err)
		}
		want := min(int64(len(buf)), img.VirtualSize-off)
		n, err := io.ReadFull(in, buf[:want])
		if err != nil {
			return fmt.Errorf("read image %q at offset %d: %w", src, off, err)
		}
		zero := fsutil.AllZero(buf[:n])
		if o.hash != nil && zero {
			o.hash.Zeros(off, off+int64(n))
		} else if o.hash != nil {
			o.hash.Data(off, buf[:n])
		}
		if !zero {
			if limiter != nil {
				if err := limiter.WaitN(ctx, n); err != nil {
					return fmt.Errorf("copy of %s stopped: %w", src, err)
				}
			}
			if err := t.writeAt(buf, n, off); err != nil {
				return err
			}
		}
		off += int64(n)
		progress(stages.Populate, off, img.VirtualSize)
	}
	return t.finish()
}

// rawTarget is a volume the raw copy and the native converter write: with O_DIRECT where the target
// takes it (a block device, or a file system that allows it), each write
// padded to the alignment; tail writes what O_DIRECT cannot, a last chunk
// that, padded, would run past the end of the target.
type rawTarget struct {
	path      string
	out, tail *os.File
	size      int64
	align     int
}

func openRawTarget(target string, block bool) (*rawTarget, error) {
	direct := block || directIO(target)
	flags := os.O_WRONLY | unix.O_NOFOLLOW
	if direct {
		flags |= unix.O_DIRECT
	}
	out, err := os.OpenFile(target, flags, 0)
	if err != nil {
		return nil, fmt.Errorf("open volume %q: %w", target, err)
	}
	t := &rawTarget{path: target, out: out, align: 1}
	if t.tail, err = os.OpenFile(target, os.O_WRONLY|unix.O_NOFOLLOW, 0); err != nil {
		t.close()
		return nil, fmt.Errorf("open volume %q: %w", target, err)
	}
	if t.size, err = targetSize(target); err != nil {
		t.close()
		return nil, fmt.Errorf("volume %q: %w", target, err)
	}
	switch {
	case block:
		if t.align, err = unix.IoctlGetInt(int(out.Fd()), unix.BLKSSZGET); err != nil {
			t.close()
			return nil, fmt.Errorf("logical block size of %s: %w", target, err)
		}
	case direct:
		t.align = 4096
	}
	return t, nil
}

// writeAt writes buf[:n] at off; buf has room for the padding.
func (t *rawTarget) writeAt(buf []byte, n int, off int64) error {
	w, dst := n, t.out
	if rem := w % t.align; rem != 0 {
		if off+int64(w+t.align-rem) <= t.size {
			clear(buf[w : w+t.align-rem])
			w += t.align - rem
		} else {
			dst = t.tail
		}
	}
	if _, err := dst.WriteAt(buf[:w], off); err != nil {
		return fmt.Errorf("write volume %q at offset %d: %w", t.path, off, err)
	}
	return nil
}

// finish closes the O_DIRECT file and flushes the volume.
func (t *rawTarget) finish() error {
	if err := t.out.Close(); err != nil {
		return fmt.Errorf("close volume %q: %w", t.path, err)
	}
	if err := t.tail.Sync(); err != nil {
		return fmt.Errorf("flush volume %q: %w", t.path, err)
	}
	return t.tail.Close()
}

// close closes what is still open (after finish: nothing, harmlessly).
func (t *rawTarget) close() {
	_ = t.out.Close()
	if t.tail != nil {
		_ = t.tail.Close()
	}
}

// directIO reports whether path (a regular file) can be opened with
// O_DIRECT; tmpfs, for one, cannot.
func directIO(path string) bool {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_NOFOLLOW|unix.O_DIRECT, 0)
	if err != nil {
		return false
	}
	_ = f.Close()
	return true
}

// copyBufSize is the buffer a raw copy moves bytes with.
const copyBufSize = 1 << 20

var zeroChunk = make([]byte, copyBufSize)

// ZeroFill makes the first size bytes of the file or block device at path
// read as zeros, without changing a file's size, and flushes it. It punches
// a hole in a file (BLKZEROOUT on a block device) and writes zeros where
// that is not supported.
func ZeroFill(ctx context.Context, path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open volume %q to zero it: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat volume %q: %w", path, err)
	}
	if size <= 0 {
		return f.Close()
	}
	var fast error
	switch {
	case st.Mode().IsRegular():
		fast = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, size)
	case st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0:
		rng := [2]uint64{0, uint64(size)}
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&rng)))
		if errno != 0 {
			fast = errno
		}
	default:
		return fmt.Errorf("volume %q is neither a regular file nor a block device", path)
	}
	if fast != nil {
		if !errors.Is(fast, unix.EOPNOTSUPP) && !errors.Is(fast, unix.EINVAL) && !errors.Is(fast, unix.ENOTTY) {
			return fmt.Errorf("zero volume %q: %w", path, fast)
		}
		if err := writeZeros(ctx, f, size); err != nil {
			return fmt.Errorf("zero volume %q: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flush volume %q: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close volume %q: %w", path, err)
	}
	return nil
}

// zeroFirst makes the volume read as zeros before a conversion writes the
// image's data: ZeroFill, unless the volume already reads as zeros.
func zeroFirst(ctx context.Context, vol volume.Volume, target string, size int64) error {
	if vol.ReadsAsZeros {
		return nil
	}
	return ZeroFill(ctx, target, size)
}

func writeZeros(ctx context.Context, f *os.File, size int64) error {
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(int64(len(zeroChunk)), size-off)
		if _, err := f.WriteAt(zeroChunk[:n], off); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// syncPath opens path and fsyncs it.
func syncPath(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open volume %q to flush it: %w", path, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flush volume %q: %w", path, err)
	}
	return f.Close()
}

// progressWriter parses qemu-img -p output, "    (12.34/100%)\r".
type progressWriter struct {
	fn  func(pct float64)
	buf []byte
}

func (w *progressWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexAny(w.buf, "\r\n")
		if i < 0 {
			break
		}
		w.line(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 4096 {
		w.buf = w.buf[len(w.buf)-4096:]
	}
	return len(p), nil
}

func (w *progressWriter) line(b []byte) {
	m := progressRE.FindSubmatch(b)
	if m == nil {
		return
	}
	if pct, err := strconv.ParseFloat(string(m[1]), 64); err == nil {
		w.fn(pct)
	}
}

// resolveTarget returns the path to write: a regular file as is, or a block
// device, following a symlink only when it leads to a block device under
// /dev (as /dev/<vg>/<lv> leads to /dev/dm-N). block tells which.
func resolveTarget(path string) (string, bool, error) {
	st, err := os.Lstat(path)
	if err != nil {
		return "", false, err
	}
	if st.Mode()&os.ModeSymlink != 0 {
		real, err := filepath.EvalSymlinks(path)
		if err != nil {
			return "", false, err
		}
		rst, err := os.Stat(real)
		if err != nil {
			return "", false, err
		}
		if !fsutil.IsBlockDevice(rst) || !strings.HasPrefix(real, "/dev/") {
			return "", false, fmt.Errorf("%s is a symlink to %s, not to a block device; refusing to follow it", path, real)
		}
		return real, true, nil
	}
	switch {
	case st.Mode().IsRegular():
		return path, false, nil
	case fsutil.IsBlockDevice(st):
		return path, true, nil
	}
	return "", false, fmt.Errorf("%s is neither a regular file nor a block device", path)
}

// targetSize is a file's size or a block device's size (BLKGETSIZE64).
func targetSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if !fsutil.IsBlockDevice(st) {
		return st.Size(), nil
	}
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, fmt.Errorf("size of block device %s: %w", path, errno)
	}
	return int64(size), nil
}

// DigestConverter is a Converter that can compute GoldenDigest of the
// volume it writes in the same pass, from the bytes it writes and the
// ranges it leaves as zeros, so that a golden need not be read back to be
// sealed (Native does, for qcow2 and raw images).
type DigestConverter interface {
	Converter
	// WithDigest returns the converter feeding everything it writes into h
	// (its Convert, and ConvertStream where it streams). A conversion that
	// starts over needs h.Reset first.
	WithDigest(h *volume.GoldenHasher) Converter
}

// Converter writes an image's disk into a volume so that the volume reads
// as the image's bytes followed by zeros to its end, whatever it held before,
// and is flushed to stable storage when Convert returns nil.
type Converter interface {
	Convert(ctx context.Context, img image.Image, imagePath string, vol volume.Volume, progress stages.ProgressFunc) error
}
