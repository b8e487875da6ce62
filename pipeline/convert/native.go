package convert

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/klauspost/compress/zstd"
	qimage "github.com/lima-vm/go-qcow2reader/image"
	"github.com/lima-vm/go-qcow2reader/image/qcow2"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// Native converts images in the worker's own process: qcow2 images are read
// with go-qcow2reader (zlib and zstd compressed clusters), raw images take
// the same Go copy as QemuImg.
//
// It keeps QemuImg's contract: the volume is zeroed by the kernel first
// (ZeroFill), then only the image's allocated, non-zero clusters are
// written, by Workers goroutines each with one NativeChunkSize buffer, and
// the volume is flushed before Convert returns nil.
//
// Only images Inspect accepted may be given to it. It checks the header
// again on the file it opens and refuses a backing file, an external data
// file or encryption whatever Inspect said.
type Native struct {
	// RateLimit caps volume writes in bytes per second (0: no limit).
	RateLimit int64
	// Workers is how many clusters ranges are decompressed and written in
	// parallel; 0 means DefaultNativeWorkers.
	Workers int

	// hash, when set, is told everything the conversion writes (WithDigest).
	hash *volume.GoldenHasher
}

// DefaultNativeWorkers is Native's default parallelism.
const DefaultNativeWorkers = 4

// NativeChunkSize is the size of each worker's buffer, the most one write
// carries. It is a multiple of every qcow2 cluster size (at most 2 MiB)
// and of every logical block size.
const NativeChunkSize = 2 << 20

// maxNativeWorkers bounds Workers, and so the memory Convert uses.
const maxNativeWorkers = 64

// qcowMaxL1Bytes is qemu's limit on an active L1 table (QCOW_MAX_L1_SIZE);
// go-qcow2reader reads the whole table into memory, so a larger one is
// refused before it is opened.
const qcowMaxL1Bytes = 32 << 20

// extentQuery is how much of the image one Extent call may describe.
const extentQuery = 1 << 30

var _ DigestConverter = Native{}

// WithDigest returns n feeding every range it writes, and every range it
// leaves as zeros, into h: the golden it writes is hashed in the same pass.
func (n Native) WithDigest(h *volume.GoldenHasher) Converter {
	n.hash = h
	return n
}

// Convert writes img's disk into vol; see Native.
func (n Native) Convert(ctx context.Context, img image.Image, imagePath string, vol volume.Volume, progress stages.ProgressFunc) error {
	if img.Format != messaging.ImageQCOW2 {
		// Raw images (and refusing unknown formats) are QemuImg's own Go path.
		return QemuImg{RateLimit: n.RateLimit, hash: n.hash}.Convert(ctx, img, imagePath, vol, progress)
	}
	src, err := filepath.Abs(imagePath)
	if err != nil {
		return fmt.Errorf("image path %q: %w", imagePath, err)
	}
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open image %q: %w", src, err)
	}
	defer f.Close()
	return n.convert(ctx, img, src, func(context.Context) io.ReaderAt { return f }, vol, progress)
}

// ConvertStream is Convert reading a qcow2 image while it downloads: the
// reads of clusters that have not arrived wait for them, so the volume is
// written while the rest of the image is still on the way. What it writes
// is only as good as the bytes it read: the caller must see the download's
// digest verify (Partial.Wait) before it trusts the volume.
func (n Native) ConvertStream(ctx context.Context, img image.Image, part image.Arriving, vol volume.Volume, progress stages.ProgressFunc) error {
	if img.Format != messaging.ImageQCOW2 {
		return fmt.Errorf("streaming conversion reads qcow2 images, not %q", img.Format)
	}
	return n.convert(ctx, img, "(still downloading)", part.ReaderAt, vol, progress)
}

// convert writes the qcow2 image that open returns a reader of (bound to a
// context that ends when the conversion stops) into vol.
func (n Native) convert(ctx context.Context, img image.Image, src string, open func(context.Context) io.ReaderAt, vol volume.Volume, progress stages.ProgressFunc) error {
	if progress == nil {
		progress = func(string, int64, int64) {}
	}
	workers := n.Workers
	if workers <= 0 {
		workers = DefaultNativeWorkers
	}
	workers = min(workers, maxNativeWorkers)
	if err := img.CheckFits(vol.Size); err != nil {
		return fmt.Errorf("populate volume %q: %w", vol.Name, err)
	}
	target, block, size, err := nativeTarget(vol)
	if err != nil {
		return err
	}
	if err := img.CheckFits(size); err != nil {
		return fmt.Errorf("populate volume %q: %w", vol.Name, err)
	}

	// Reads stop with the conversion: one worker's failure, or ctx.
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The image is opened and checked before the volume is touched.
	qimg, err := openQCOW2(open(wctx), img)
	if err != nil {
		return fmt.Errorf("qcow2 image %s: %w", src, err)
	}

	// The whole device or file reads as zeros first: only data is written.
	if err := zeroFirst(ctx, vol, target, size); err != nil {
		return err
	}
	progress(stages.Populate, 0, img.VirtualSize)
	c := &nativeCopy{
		img:      qimg,
		src:      src,
		target:   target,
		size:     img.VirtualSize,
		progress: progress,
		hash:     n.hash,
	}
	if n.RateLimit > 0 {
		c.limiter = rate.NewLimiter(rate.Limit(n.RateLimit), NativeChunkSize)
	}
	if err := c.run(ctx, wctx, cancel, block, workers); err != nil {
		return err
	}
	if n.hash != nil && n.hash.Size() > img.VirtualSize {
		// A volume larger than the disk: ZeroFill zeroed the rest.
		n.hash.Zeros(img.VirtualSize, min(n.hash.Size(), size))
	}
	progress(stages.Populate, img.VirtualSize, img.VirtualSize)
	return nil
}

// nativeTarget resolves vol's path and checks its size as QemuImg.Convert
// does.
func nativeTarget(vol volume.Volume) (target string, block bool, size int64, err error) {
	target, err = filepath.Abs(vol.Path)
	if err != nil {
		return "", false, 0, fmt.Errorf("volume path %q: %w", vol.Path, err)
	}
	target, block, err = resolveTarget(target)
	if err != nil {
		return "", false, 0, fmt.Errorf("volume %q: %w", vol.Name, err)
	}
	size, err = targetSize(target)
	if err != nil {
		return "", false, 0, fmt.Errorf("volume %q: %w", vol.Name, err)
	}
	switch {
	case !block && size != vol.Size:
		return "", false, 0, fmt.Errorf("volume file %s is %d bytes, not the %d bytes volume %q should have", target, size, vol.Size, vol.Name)
	case block && size < vol.Size:
		return "", false, 0, fmt.Errorf("block device %s is %d bytes, smaller than the %d bytes volume %q should have", target, size, vol.Size, vol.Name)
	}
	return target, block, size, nil
}

// pinnedHeader is the io.ReaderAt go-qcow2reader reads the image through.
// The header bytes it serves are the ones openQCOW2 checked, so a file
// changed since cannot make the library see a backing file; and it has no
// Name method, so the library could not resolve a relative backing file
// name even then.
type pinnedHeader struct {
	f   io.ReaderAt
	hdr []byte
}

func (p *pinnedHeader) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= int64(len(p.hdr)) {
		return p.f.ReadAt(b, off)
	}
	n := copy(b, p.hdr[off:])
	if n == len(b) {
		return n, nil
	}
	m, err := p.f.ReadAt(b[n:], off+int64(n))
	return n + m, err
}

// refuseBacking is the opener go-qcow2reader would call for a backing file.
func refuseBacking(io.ReaderAt, qimage.Type) (qimage.Image, error) {
	return nil, errors.New("backing files are refused")
}

// openQCOW2 checks the qcow2 header of f as Inspect does (no backing file,
// no external data file, no encryption, the virtual size img says) and a
// bounded L1 table, then opens it with go-qcow2reader's qcow2 package
// directly: no format is probed and no backing file can be opened.
func openQCOW2(f io.ReaderAt, img image.Image) (*qcow2.Qcow2, error) {
	hdr := make([]byte, image.QCOWV3HeaderLen)
	nr, err := f.ReadAt(hdr, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read header: %w", err)
	}
	hdr = hdr[:nr]
	if len(hdr) < len(image.QCOWMagic) || string(hdr[:len(image.QCOWMagic)]) != image.QCOWMagic {
		return nil, errors.New("the file is not a qcow2 image (no QFI\\xfb magic)")
	}
	checked, err := image.ParseQCOW2(hdr)
	if err != nil {
		return nil, err
	}
	if checked != img {
		return nil, fmt.Errorf("the header says %+v, not the inspected %+v; the file changed", checked, img)
	}
	be := binary.BigEndian
	clusterBits := be.Uint32(hdr[20:])
	l1Size := uint64(be.Uint32(hdr[36:]))
	entryBytes := uint64(8)
	if be.Uint32(hdr[4:]) == 3 && be.Uint64(hdr[72:])&(1<<qcow2.IncompatibleFeaturesExtendedL2EntriesBit) != 0 {
		entryBytes = 16
	}
	perL1 := (uint64(1) << clusterBits) / entryBytes << clusterBits // bytes one L2 table maps
	need := (uint64(img.VirtualSize) + perL1 - 1) / perL1
	switch {
	case l1Size*8 > qcowMaxL1Bytes:
		return nil, fmt.Errorf("the L1 table has %d entries, more than the %d qemu accepts", l1Size, qcowMaxL1Bytes/8)
	case l1Size < need:
		return nil, fmt.Errorf("the L1 table has %d entries, fewer than the %d the virtual size needs", l1Size, need)
	}

	q, err := qcow2.Open(&pinnedHeader{f: f, hdr: hdr}, refuseBacking)
	if err != nil {
		return nil, err
	}
	if err := q.Readable(); err != nil {
		return nil, err
	}
	switch {
	case q.BackingFileOffset != 0 || q.BackingFile != "":
		return nil, errors.New("the image names a backing file; refusing it")
	case q.CryptMethod != qcow2.CryptMethodNone:
		return nil, errors.New("the image is encrypted; refusing it")
	case q.Size() != img.VirtualSize:
		return nil, fmt.Errorf("go-qcow2reader reads a virtual size of %d bytes, not %d", q.Size(), img.VirtualSize)
	}
	return q, nil
}

// nativeItem is a range of the image a worker reads and writes: [off, end),
// aligned to the target's alignment except at the image's end. credit is
// the progress it accounts for, its own bytes and the skipped zeros before.
type nativeItem struct {
	off, end, credit int64
}

type nativeCopy struct {
	img      *qcow2.Qcow2
	src      string
	target   string
	size     int64 // the image's virtual size
	limiter  *rate.Limiter
	progress stages.ProgressFunc
	hash     *volume.GoldenHasher // nil: not hashed

	mu   sync.Mutex
	done int64
}

// report adds n bytes to the progress; the mutex keeps reports monotonic.
func (c *nativeCopy) report(n int64) {
	if n <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done += n
	c.progress(stages.Populate, c.done, c.size)
}

func (c *nativeCopy) run(ctx, wctx context.Context, cancel context.CancelCauseFunc, block bool, workers int) error {
	t, err := openRawTarget(c.target, block)
	if err != nil {
		return err
	}
	defer t.close()
	out, tail, tsize, align := t.out, t.tail, t.size, int64(t.align)
	if align <= 0 || NativeChunkSize%align != 0 {
		return fmt.Errorf("volume %s: logical block size %d does not divide %d", c.target, align, NativeChunkSize)
	}

	// One page-aligned buffer per worker, allocated up front.
	mem, err := unix.Mmap(-1, 0, workers*NativeChunkSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return fmt.Errorf("allocate copy buffers: %w", err)
	}
	defer unix.Munmap(mem)

	items := make(chan nativeItem, workers)
	var wg sync.WaitGroup
	for i := range workers {
		buf := mem[i*NativeChunkSize : (i+1)*NativeChunkSize : (i+1)*NativeChunkSize]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range items {
				if wctx.Err() != nil {
					continue // drain
				}
				if err := c.copyItem(wctx, it, buf, out, tail, align, tsize); err != nil {
					cancel(err)
				}
			}
		}()
	}
	counted, perr := c.produce(wctx, items, align)
	if perr != nil {
		cancel(perr)
	}
	close(items)
	wg.Wait()
	if err := context.Cause(wctx); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("conversion of %s stopped: %w", c.src, ctxErr)
		}
		return err
	}
	c.report(c.size - counted) // zeros after the last data
	if c.hash != nil {
		c.hash.Zeros(counted, c.size)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("flush volume %q: %w", c.target, err)
	}
	if err := tail.Close(); err != nil {
		return fmt.Errorf("close volume %q: %w", c.target, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("close volume %q: %w", c.target, err)
	}
	return nil
}

// produce walks the image's extents and sends the ranges holding data,
// merged and cut into chunks, to the workers. It returns how much of the
// image the items sent account for.
func (c *nativeCopy) produce(ctx context.Context, items chan<- nativeItem, align int64) (int64, error) {
	var (
		counted int64 // [0, counted) is accounted for by items sent
		sent    int64 // end of the last item sent
		ps, pe  int64 // pending range, empty when ps == pe
	)
	emit := func(end int64) bool {
		for ps < end {
			// Items end on multiples of NativeChunkSize, so that a range of
			// data is cut where a golden's digest cuts it (GoldenHasher
			// then hashes whole chunks as they are, without copying them).
			e := min((ps/NativeChunkSize+1)*NativeChunkSize, end)
			it := nativeItem{off: ps, end: e, credit: e - counted}
			select {
			case items <- it:
			case <-ctx.Done():
				return false
			}
			counted, sent, ps = e, e, e
		}
		return true
	}
	for off := int64(0); off < c.size; {
		if ctx.Err() != nil {
			return counted, nil
		}
		ext, err := c.img.Extent(off, min(c.size-off, extentQuery))
		if err != nil {
			return counted, fmt.Errorf("qcow2 image %s: extent at %d: %w", c.src, off, err)
		}
		if ext.Start != off || ext.Length <= 0 || ext.Length > c.size-off {
			return counted, fmt.Errorf("qcow2 image %s: bad extent [%d,+%d) at %d", c.src, ext.Start, ext.Length, off)
		}
		off += ext.Length
		if ext.Zero { // zero clusters and, without a backing file, unallocated ones
			continue
		}
		s := max(ext.Start/align*align, sent)
		e := min((off+align-1)/align*align, c.size)
		if s >= e {
			continue
		}
		if ps == pe || s > pe {
			if !emit(pe) {
				return counted, nil
			}
			ps = s
		}
		pe = max(pe, e)
		// Send whole chunks now; keep the rest to merge with what follows.
		if full := pe / NativeChunkSize * NativeChunkSize; full > ps {
			if !emit(full) {
				return counted, nil
			}
		}
	}
	emit(pe)
	return counted, nil
}

// copyItem reads one range of the image into buf and writes it to the
// volume unless it is all zeros.
func (c *nativeCopy) copyItem(ctx context.Context, it nativeItem, buf []byte, out, tail *os.File, align, tsize int64) error {
	n := it.end - it.off
	b := buf[:n]
	r, err := c.img.ReadAt(b, it.off)
	if int64(r) != n {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("read qcow2 image %s at offset %d: %w", c.src, it.off, err)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read qcow2 image %s at offset %d: %w", c.src, it.off, err)
	}
	zero := fsutil.AllZero(b)
	if c.hash != nil {
		c.hash.Zeros(it.end-it.credit, it.off) // the gap before this range
		if zero {
			c.hash.Zeros(it.off, it.end)
		} else {
			c.hash.Data(it.off, b)
		}
	}
	if !zero {
		if c.limiter != nil {
			if err := c.limiter.WaitN(ctx, int(n)); err != nil {
				return err
			}
		}
		w, dst := n, out
		if rem := w % align; rem != 0 {
			if it.off+w+align-rem <= tsize && w+align-rem <= int64(len(buf)) {
				clear(buf[w : w+align-rem])
				w += align - rem
			} else {
				dst = tail
			}
		}
		if _, err := dst.WriteAt(buf[:w], it.off); err != nil {
			return fmt.Errorf("write volume %q at offset %d: %w", c.target, it.off, err)
		}
	}
	c.report(it.credit)
	return nil
}

// Decompressors registered with go-qcow2reader (a process-wide table):
// zstd, which it lacks, and a zlib one that reuses its state instead of
// allocating a new flate reader and its buffers for every cluster.
func init() {
	zlibDecompressors["compress/flate"] = newFlateCluster
	_ = SetZlibDecompressor("compress/flate")
	qcow2.SetDecompressor(qcow2.CompressionTypeZstd, newZstdCluster)
}

// zlibDecompressors are the zlib decompressors built in, by name.
var zlibDecompressors = map[string]qcow2.Decompressor{}

// zlibDecompressor names the one in use.
var zlibDecompressor string

// ZlibDecompressor names what decompresses Native's zlib clusters:
// "libdeflate" (the default when built with the libdeflate tag) or
// "compress/flate".
func ZlibDecompressor() string { return zlibDecompressor }

// ZlibDecompressors lists the zlib decompressors built in, the one in use
// first.
func ZlibDecompressors() []string {
	names := []string{zlibDecompressor}
	for n := range zlibDecompressors {
		if n != zlibDecompressor {
			names = append(names, n)
		}
	}
	sort.Strings(names[1:])
	return names
}

// SetZlibDecompressor makes Native inflate zlib clusters with the named
// decompressor, one of ZlibDecompressors. The choice is process-wide; make
// it before conversions start (the benchmark harness compares them).
func SetZlibDecompressor(name string) error {
	d, ok := zlibDecompressors[name]
	if !ok {
		return fmt.Errorf("zlib decompressor %q is not built in (have %v)", name, ZlibDecompressors())
	}
	qcow2.SetDecompressor(qcow2.CompressionTypeZlib, d)
	zlibDecompressor = name
	return nil
}

// maxCompressedCluster bounds a compressed cluster's bytes: a 2 MiB cluster
// plus the most additional sectors its descriptor can name.
const maxCompressedCluster = 3 << 21

// readCompressed reads a compressed cluster, which go-qcow2reader passes as
// an io.SectionReader, into a pooled buffer. The section may run past the
// end of the file for the last cluster.
func readCompressed(r io.Reader) (*[]byte, error) {
	limit := int64(maxCompressedCluster)
	if sr, ok := r.(*io.SectionReader); ok {
		limit = min(limit, sr.Size())
	}
	bp := compressedPool.Get().(*[]byte)
	if int64(cap(*bp)) < limit {
		*bp = make([]byte, limit)
	}
	b := (*bp)[:cap(*bp)]
	n, err := io.ReadFull(r, b[:limit])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		compressedPool.Put(bp)
		return nil, err
	}
	*bp = b[:n]
	return bp, nil
}

// compressedPool holds buffers for compressed clusters; each grows to the
// largest cluster it has held.
var compressedPool = sync.Pool{New: func() any {
	b := make([]byte, 0, 128<<10)
	return &b
}}

// clusterReader hands go-qcow2reader a cluster's decompressed bytes. Its
// Read fills p whole when the data lasts, so a cluster is decompressed once
// per ReadAt rather than once per partial read.
type clusterReader struct {
	in      *[]byte
	br      bytes.Reader
	dec     io.Reader
	release func()
}

func (c *clusterReader) Read(p []byte) (int, error) {
	n, err := io.ReadFull(c.dec, p)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = io.EOF
	}
	return n, err
}

func (c *clusterReader) Close() error {
	if c.release != nil {
		c.release()
		c.release = nil
	}
	return nil
}

var flatePool sync.Pool // of io.ReadCloser implementing flate.Resetter

func newFlateCluster(r io.Reader) (io.ReadCloser, error) {
	in, err := readCompressed(r)
	if err != nil {
		return nil, err
	}
	c := &clusterReader{in: in}
	c.br.Reset(*in)
	fr, _ := flatePool.Get().(io.ReadCloser)
	if fr == nil {
		fr = flate.NewReader(&c.br)
	} else if err := fr.(flate.Resetter).Reset(&c.br, nil); err != nil {
		compressedPool.Put(in)
		return nil, err
	}
	c.dec = fr
	c.release = func() {
		flatePool.Put(fr)
		compressedPool.Put(in)
	}
	return c, nil
}

var zstdPool sync.Pool // of *zstd.Decoder

func newZstdCluster(r io.Reader) (io.ReadCloser, error) {
	in, err := readCompressed(r)
	if err != nil {
		return nil, err
	}
	c := &clusterReader{in: in}
	c.br.Reset(*in)
	d, _ := zstdPool.Get().(*zstd.Decoder)
	if d == nil {
		// Synchronous (no goroutines), and a frame cannot ask for more
		// memory than a cluster needs.
		d, err = zstd.NewReader(&c.br, zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(8<<20), zstd.WithDecoderMaxMemory(64<<20))
	} else {
		err = d.Reset(&c.br)
	}
	if err != nil {
		compressedPool.Put(in)
		return nil, err
	}
	c.dec = d
	c.release = func() {
		_ = d.Reset(nil)
		zstdPool.Put(d)
		compressedPool.Put(in)
	}
	return c, nil
}
