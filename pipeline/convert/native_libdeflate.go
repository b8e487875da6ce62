//go:build cgo && libdeflate

package convert

// With the libdeflate build tag (and cgo, and Debian's libdeflate-dev),
// Native decompresses zlib (raw DEFLATE) clusters with libdeflate, which
// decompresses a whole cluster in one call, instead of compress/flate.

/*
#cgo LDFLAGS: -ldeflate
#include <libdeflate.h>
*/
import "C"

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sync"
	"unsafe"
)

// maxCluster is the largest qcow2 cluster (cluster_bits 21), the most a
// compressed cluster decompresses to.
const maxCluster = 2 << 20

func init() {
	// Runs after native.go's init (files initialise in name order), so this
	// replaces its compress/flate decompressor.
	zlibDecompressors["libdeflate"] = newLibdeflateCluster
	_ = SetZlibDecompressor("libdeflate")
}

// libdeflate decompressors are not safe for concurrent use; a bounded free
// list keeps a few (C memory, which a sync.Pool would leak when it drops them).
var freeDecompressors = make(chan *C.struct_libdeflate_decompressor, maxNativeWorkers)

func getDecompressor() (*C.struct_libdeflate_decompressor, error) {
	select {
	case d := <-freeDecompressors:
		return d, nil
	default:
	}
	d := C.libdeflate_alloc_decompressor()
	if d == nil {
		return nil, errors.New("libdeflate: cannot allocate a decompressor")
	}
	return d, nil
}

func putDecompressor(d *C.struct_libdeflate_decompressor) {
	select {
	case freeDecompressors <- d:
	default:
		C.libdeflate_free_decompressor(d)
	}
}

// clusterPools hold decompression buffers by size class: pool i holds
// buffers of 1<<i bytes, up to maxCluster.
var clusterPools [22]sync.Pool

// clusterBuffer returns a buffer for a cluster whose compressed section
// (as go-qcow2reader passes it: the cluster size plus the additional
// sectors its descriptor names) is sectionSize bytes. A valid compressed
// cluster is smaller than the cluster it decompresses to (qemu stores a
// cluster that does not shrink uncompressed), so the section is less than
// twice the cluster size and its largest power of two is the cluster size.
func clusterBuffer(sectionSize int64) *[]byte {
	size := int64(maxCluster)
	if sectionSize > 0 && sectionSize < maxCluster {
		size = int64(1) << (bits.Len64(uint64(sectionSize)) - 1)
	}
	i := bits.Len64(uint64(size)) - 1
	if b, ok := clusterPools[i].Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, size)
	return &b
}

func putClusterBuffer(b *[]byte) {
	clusterPools[bits.Len64(uint64(cap(*b)))-1].Put(b)
}

// libdeflateCluster serves a cluster decompressed in one call.
type libdeflateCluster struct {
	out  *[]byte
	data []byte
}

func (c *libdeflateCluster) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.data)
	c.data = c.data[n:]
	return n, nil
}

func (c *libdeflateCluster) Close() error {
	if c.out != nil {
		putClusterBuffer(c.out)
		c.out, c.data = nil, nil
	}
	return nil
}

func newLibdeflateCluster(r io.Reader) (io.ReadCloser, error) {
	section := int64(maxCluster)
	if sr, ok := r.(*io.SectionReader); ok {
		section = sr.Size()
	}
	in, err := readCompressed(r)
	if err != nil {
		return nil, err
	}
	defer compressedPool.Put(in)
	if len(*in) == 0 {
		return nil, io.ErrUnexpectedEOF
	}
	d, err := getDecompressor()
	if err != nil {
		return nil, err
	}
	defer putDecompressor(d)
	out := clusterBuffer(section)
	var got C.size_t
	res := C.libdeflate_deflate_decompress(d,
		unsafe.Pointer(&(*in)[0]), C.size_t(len(*in)),
		unsafe.Pointer(&(*out)[0]), C.size_t(len(*out)), &got)
	if res == C.LIBDEFLATE_INSUFFICIENT_SPACE && len(*out) < maxCluster {
		// The section did not tell the cluster size after all (it depends
		// on how go-qcow2reader sizes it): try again with room for the
		// largest cluster.
		putClusterBuffer(out)
		out = clusterBuffer(maxCluster)
		res = C.libdeflate_deflate_decompress(d,
			unsafe.Pointer(&(*in)[0]), C.size_t(len(*in)),
			unsafe.Pointer(&(*out)[0]), C.size_t(len(*out)), &got)
	}
	if res != C.LIBDEFLATE_SUCCESS {
		putClusterBuffer(out)
		return nil, fmt.Errorf("libdeflate: decompression failed (result %d; a compressed cluster must inflate to at most its cluster size, %d bytes)", int(res), len(*out))
	}
	return &libdeflateCluster{out: out, data: (*out)[:got]}, nil
}
