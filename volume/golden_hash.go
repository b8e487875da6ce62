package volume

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
)

// DigestSealer is implemented by Cloners that can seal a golden whose
// digest was computed while it was written (GoldenHasher), instead of
// reading it back: SealGoldenDigest is SealGolden with digest taken as the
// content's GoldenDigest.
type DigestSealer interface {
	SealGoldenDigest(ctx context.Context, key string, prepared Volume, digest string) (Golden, error)
}

// ErrDigestIncomplete: a GoldenHasher was not told of every byte of the
// volume (or of some twice), so its digest would not be the content's.
var ErrDigestIncomplete = errors.New("the conversion did not account for every byte of the volume exactly once")

// GoldenHasher computes GoldenDigest of a volume of a given size from its
// content as it is written: each range is given once, as bytes (Data) or as
// zeros (Zeros), in any order and from several goroutines. A 1 MiB chunk is
// hashed as soon as all its bytes are known and its buffer is released;
// chunks that are zeros throughout are never buffered. Memory is bounded by
// the chunks partly written at once (a converter's writes in flight).
type GoldenHasher struct {
	size int64

	mu     sync.Mutex
	chunks map[int64]*hashChunk // every chunk some bytes of which are known
	sums   [][sha256.Size]byte
	done   int64 // chunks hashed
	err    error
}

// hashChunk is a chunk some of whose bytes are known.
type hashChunk struct {
	buf   []byte // nil while only zeros are known
	known int64
}

// chunkBufs recycles chunk buffers.
var chunkBufs = sync.Pool{New: func() any { b := make([]byte, goldenChunk); return &b }}

// NewGoldenHasher hashes a volume of size bytes.
func NewGoldenHasher(size int64) *GoldenHasher {
	h := &GoldenHasher{size: size}
	h.Reset()
	return h
}

// Size is the size of the volume hashed.
func (h *GoldenHasher) Size() int64 { return h.size }

// Reset forgets everything written, for a conversion that starts over.
func (h *GoldenHasher) Reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.chunks {
		c.release()
	}
	h.chunks = map[int64]*hashChunk{}
	h.sums = make([][sha256.Size]byte, (h.size+goldenChunk-1)/goldenChunk)
	h.done, h.err = 0, nil
}

func (c *hashChunk) release() {
	if c.buf != nil {
		b := c.buf[:goldenChunk]
		chunkBufs.Put(&b)
		c.buf = nil
	}
}

// chunkLen is the length of chunk i.
func (h *GoldenHasher) chunkLen(i int64) int64 {
	return min(int64(goldenChunk), h.size-i*goldenChunk)
}

// Data records that b is the content at off.
func (h *GoldenHasher) Data(off int64, b []byte) { h.add(off, off+int64(len(b)), b) }

// Zeros records that [off, end) reads as zeros.
func (h *GoldenHasher) Zeros(off, end int64) { h.add(off, end, nil) }

// add records [off, end), with its bytes b or zeros when b is nil.
func (h *GoldenHasher) add(off, end int64, b []byte) {
	if off >= end {
		return
	}
	if off < 0 || end > h.size {
		h.fail(fmt.Errorf("%w: range [%d, %d) is outside the volume's %d bytes", ErrDigestIncomplete, off, end, h.size))
		return
	}
	for i := off / goldenChunk; i*goldenChunk < end; i++ {
		cs := i * goldenChunk
		ce := cs + h.chunkLen(i)
		s, e := max(off, cs), min(end, ce)
		var part []byte
		if b != nil {
			part = b[s-off : e-off]
		}
		if s == cs && e == ce {
			h.whole(i, part) // the common case: no copy
			continue
		}
		h.partial(i, s-cs, e-s, part)
	}
}

// whole hashes chunk i, all of whose bytes are part (zeros when nil).
func (h *GoldenHasher) whole(i int64, part []byte) {
	h.mu.Lock()
	if _, ok := h.chunks[i]; ok {
		h.mu.Unlock()
		h.fail(fmt.Errorf("%w: chunk at %d given twice", ErrDigestIncomplete, i*goldenChunk))
		return
	}
	h.chunks[i] = &hashChunk{known: h.chunkLen(i)} // taken until done
	h.mu.Unlock()
	h.finish(i, part)
}

// partial adds n bytes at offset at of chunk i; the goroutine that
// completes the chunk hashes it. Bytes are copied outside the lock: the
// ranges given are disjoint, and a chunk counts a range only once it is
// copied.
func (h *GoldenHasher) partial(i, at, n int64, part []byte) {
	h.mu.Lock()
	c := h.chunks[i]
	if c == nil {
		c = &hashChunk{}
		h.chunks[i] = c
	}
	if part != nil && c.buf == nil && c.known < h.chunkLen(i) {
		p := chunkBufs.Get().(*[]byte)
		c.buf = (*p)[:h.chunkLen(i)]
		clear(c.buf) // the ranges given as zeros, before and after
	}
	buf := c.buf
	h.mu.Unlock()
	if part != nil && buf != nil && at+n <= int64(len(buf)) {
		copy(buf[at:], part)
	}
	h.mu.Lock()
	c.known += n
	complete := c.known == h.chunkLen(i)
	over := c.known > h.chunkLen(i)
	h.mu.Unlock()
	if over {
		h.fail(fmt.Errorf("%w: chunk at %d given more than once", ErrDigestIncomplete, i*goldenChunk))
		return
	}
	if complete {
		h.finish(i, c.buf)
		c.release()
	}
}

// finish stores the hash of chunk i, whose content is buf (zeros when nil).
func (h *GoldenHasher) finish(i int64, buf []byte) {
	var sum [sha256.Size]byte
	switch {
	case buf != nil:
		sum = sha256.Sum256(buf)
	case h.chunkLen(i) == goldenChunk:
		sum = zeroChunkSum
	default:
		sum = sha256.Sum256(make([]byte, h.chunkLen(i)))
	}
	h.mu.Lock()
	h.sums[i] = sum
	h.done++
	h.mu.Unlock()
}

func (h *GoldenHasher) fail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err == nil {
		h.err = err
	}
}

// Sum returns GoldenDigest of the content once every byte was given once;
// otherwise an error matching ErrDigestIncomplete.
func (h *GoldenHasher) Sum() (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return "", h.err
	}
	if n := int64(len(h.sums)); h.done != n || int64(len(h.chunks)) != n {
		return "", fmt.Errorf("%w: %d of %d chunks known", ErrDigestIncomplete, h.done, n)
	}
	outer := sha256.New()
	for i := range h.sums {
		outer.Write(h.sums[i][:])
	}
	return hex.EncodeToString(outer.Sum(nil)), nil
}
