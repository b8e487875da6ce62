package volume

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"golang.org/x/sys/unix"
)

// Golden is a read-only volume holding one image's disk as raw bytes, the
// source of the volumes a Cloner makes. It is written once from the
// verified image and sealed: made read-only, and its content's digest
// recorded.
type Golden struct {
	// Key is the image's cache key.
	Key string
	// Path is where its bytes are.
	Path string
	// Size is its size in bytes: the image's virtual size.
	Size int64
	// Digest is GoldenDigest of its content when it was sealed.
	Digest string
	// Immutable is true when the file system's immutable flag is set on it
	// (besides its read-only mode).
	Immutable bool
}

// Cloner is implemented by backends that can make a volume as a
// copy-on-write clone of a golden volume, in a time that does not grow with
// the image: reflinks (FICLONE) on XFS or btrfs for files; an LVM thin pool
// could keep a golden thin LV per image and make each volume a snapshot of
// it (lvcreate -s -kn). The worker keeps one golden per image (recorded on
// its cache entry, evicted with it), writes it with the Converter the first
// time, and clones every volume of that image from it.
type Cloner interface {
	// CloneSupport says whether clones work where this backend keeps its
	// volumes, as found once when the backend was opened; reason says why
	// not (the worker then converts into each volume).
	CloneSupport() (ok bool, reason string)
	// PrepareGolden makes an empty, writable volume of size bytes, reading
	// as zeros, to write key's image into. It is not a golden until
	// SealGolden; RemoveGolden discards it.
	PrepareGolden(ctx context.Context, key string, size int64) (Volume, error)
	// SealGolden makes the prepared volume key's golden: flushed, its
	// digest computed, read-only (and immutable where the system allows).
	// A golden of key left over from before is replaced.
	SealGolden(ctx context.Context, key string, prepared Volume) (Golden, error)
	// RemoveGolden removes key's golden and any prepared one (none is not
	// an error). Volumes cloned from it stay as they are.
	RemoveGolden(ctx context.Context, key string) error
	// GoldenKeys lists the keys that have a golden or a prepared one.
	GoldenKeys(ctx context.Context) ([]string, error)
	// Clone makes the new volume name, a clone of g grown to size bytes
	// (never less than g.Size); it fails if the name exists.
	Clone(ctx context.Context, g Golden, name string, size int64) (Volume, error)
	// Reclone replaces the existing volume vol with a fresh clone of g of
	// vol's size. The name never goes missing or names a half-made volume:
	// it names the old volume until it names the whole new one.
	Reclone(ctx context.Context, g Golden, vol Volume) (Volume, error)
}

// goldenChunk is the chunk size of GoldenDigest.
const goldenChunk = 1 << 20

// zeroChunkSum is the SHA-256 of a goldenChunk of zeros.
var zeroChunkSum = sha256.Sum256(make([]byte, goldenChunk))

// GoldenDigest is the digest of a golden's content: the hex SHA-256 of the
// concatenated SHA-256s of its 1 MiB chunks (the last one may be shorter).
// It depends on the bytes only, but it is computed in time proportional to
// the data: chunks in holes (SEEK_DATA/SEEK_HOLE) are not read, as they
// read as zeros.
func GoldenDigest(ctx context.Context, path string) (string, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", fmt.Errorf("open golden %s to hash it: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("stat golden %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("golden %s is not a regular file", path)
	}
	return GoldenDigestFile(ctx, f, st.Size())
}

// digestWorkers is how many chunks GoldenDigest hashes at once.
const digestWorkers = 4

// GoldenDigestFile is GoldenDigest of the first size bytes of the open file f.
func GoldenDigestFile(ctx context.Context, f *os.File, size int64) (string, error) {
	n := int((size + goldenChunk - 1) / goldenChunk)
	sums := make([][sha256.Size]byte, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, digestWorkers)
	for w := range digestWorkers {
		wg.Go(func() {
			buf := make([]byte, goldenChunk)
			h := sha256.New()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) || ctx.Err() != nil {
					return
				}
				off := i * goldenChunk
				l := min(int64(goldenChunk), size-off)
				if l == goldenChunk && fsutil.NextData(f, off, size) >= off+l {
					sums[i] = zeroChunkSum
					continue
				}
				if _, err := f.ReadAt(buf[:l], off); err != nil && !errors.Is(err, io.EOF) {
					errs[w] = fmt.Errorf("read golden at %d: %w", off, err)
					return
				}
				if l == goldenChunk && fsutil.AllZero(buf) { // a thin LV's unmapped chunk, say
					sums[i] = zeroChunkSum
					continue
				}
				h.Reset()
				h.Write(buf[:l])
				h.Sum(sums[i][:0])
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	outer := sha256.New()
	for i := range sums {
		outer.Write(sums[i][:])
	}
	return hex.EncodeToString(outer.Sum(nil)), nil
}

// fsImmutableFL is FS_IMMUTABLE_FL (linux/fs.h): a file carrying it cannot
// be written, renamed, linked or removed, even by root, until the flag is
// cleared (which needs CAP_LINUX_IMMUTABLE). The flags are an int.
const fsImmutableFL = 0x00000010

// setImmutable sets or clears the immutable flag on the open file f.
func setImmutable(f *os.File, on bool) error {
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		return err
	}
	want := flags &^ fsImmutableFL
	if on {
		want |= fsImmutableFL
	}
	if want == flags {
		return nil
	}
	return unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(want))
}

// IsImmutable reports whether the file at path carries the immutable flag.
func IsImmutable(path string) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		return false, err
	}
	return flags&fsImmutableFL != 0, nil
}

// ClearImmutable clears the immutable flag of the file at path, if it has
// one; a file system without flags is not an error.
func ClearImmutable(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	err = setImmutable(f, false)
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
		return nil
	}
	return err
}

// GoldenInspector is implemented by golden stores whose goldens are not
// files of their own (the lvm backend's thin LVs): they describe a sealed
// golden for its record, tell whether a recorded one is still the one
// sealed (in time that does not depend on its size), and hash its content
// as GoldenDigest does. Without it the cache treats goldens as files.
type GoldenInspector interface {
	GoldenRecord(ctx context.Context, g Golden) (kvstate.Golden, error)
	GoldenUnchanged(ctx context.Context, rec kvstate.Golden) (bool, error)
	DigestGolden(ctx context.Context, path string) (string, error)
}
