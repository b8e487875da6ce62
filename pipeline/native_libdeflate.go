//go:build cgo && libdeflate

package pipeline

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
	"sync"
	"unsafe"

	"github.com/lima-vm/go-qcow2reader/image/qcow2"
)

// maxCluster is the largest qcow2 cluster (cluster_bits 21), the most a
// compressed cluster decompresses to.
const maxCluster = 2 << 20

func init() {
	// Runs after native.go's init (files initialise in name order), so this
	// replaces its compress/flate decompressor.
	zlibDecompressor = "libdeflate"
	qcow2.SetDecompressor(qcow2.CompressionTypeZlib, newLibdeflateCluster)
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

var clusterPool = sync.Pool{New: func() any {
	b := make([]byte, maxCluster)
	return &b
}}

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
		clusterPool.Put(c.out)
		c.out, c.data = nil, nil
	}
	return nil
}

func newLibdeflateCluster(r io.Reader) (io.ReadCloser, error) {
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
	out := clusterPool.Get().(*[]byte)
	var got C.size_t
	res := C.libdeflate_deflate_decompress(d,
		unsafe.Pointer(&(*in)[0]), C.size_t(len(*in)),
		unsafe.Pointer(&(*out)[0]), C.size_t(len(*out)), &got)
	if res != C.LIBDEFLATE_SUCCESS {
		clusterPool.Put(out)
		return nil, fmt.Errorf("libdeflate: decompression failed (result %d)", int(res))
	}
	return &libdeflateCluster{out: out, data: (*out)[:got]}, nil
}
