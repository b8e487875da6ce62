package imagecache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
)

// ErrStreamRestarted is what reads of a Partial return after its download
// had to start over from the first byte (an object without an ETag cannot
// be resumed safely): bytes read before may belong to another version of
// the object. The download goes on; convert from the finished file instead.
var ErrStreamRestarted = errors.New("the download restarted from the beginning while the image was being read; the bytes read so far cannot be trusted")

// Partial is an image being downloaded into the cache, readable while it
// arrives: ReaderAt's reads of bytes not yet written wait for them. The
// download writes the file front to back, so what has arrived is always
// the prefix [0, written).
//
// Bytes read from a Partial are unverified until Wait returns the committed
// cache entry: the digest is checked when the last byte arrived. A caller
// that streams from a Partial must see Wait succeed before it trusts what it
// wrote.
type Partial struct {
	mu      sync.Mutex
	f       *os.File // read-only handle on the download file, once it exists
	total   int64    // announced size, -1 unknown
	written int64
	broken  error         // set when reading can no longer be trusted
	arrived chan struct{} // closed and replaced each time written grows

	done  chan struct{} // closed when the download ended
	entry kvstate.CacheEntry
	err   error

	cancel context.CancelFunc // stops the download
}

func newPartial(cancel context.CancelFunc) *Partial {
	return &Partial{total: -1, arrived: make(chan struct{}), done: make(chan struct{}), cancel: cancel}
}

// start is called by the download once its file exists.
func (p *Partial) start(path string, total int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open download file %s for reading: %w", path, err)
	}
	p.mu.Lock()
	p.f, p.total = f, total
	p.mu.Unlock()
	return nil
}

// advance records that [0, written) is in the file; written only grows
// (a download that starts over calls restart first).
func (p *Partial) advance(written int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.written = written
	close(p.arrived)
	p.arrived = make(chan struct{})
}

// restart is called by the download before it starts over from the first
// byte (truncating the file): every read from then on, and every read that
// was under way, fails with ErrStreamRestarted.
func (p *Partial) restart() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.broken = ErrStreamRestarted
	p.written = 0
	close(p.arrived)
	p.arrived = make(chan struct{})
}

// Restarted reports whether the download started over from the first byte:
// what was read before may belong to another version of the object, even
// if no read failed.
func (p *Partial) Restarted() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.broken != nil
}

// finish records the download's outcome and wakes every reader.
func (p *Partial) finish(e kvstate.CacheEntry, err error) {
	p.mu.Lock()
	p.entry, p.err = e, err
	close(p.arrived)
	p.arrived = make(chan struct{})
	p.mu.Unlock()
	close(p.done)
}

// Done is closed when the download has ended, committed or not.
func (p *Partial) Done() <-chan struct{} { return p.done }

// Wait waits for the download to end and returns the cache entry it
// committed (the digest verified), or why it failed.
func (p *Partial) Wait(ctx context.Context) (kvstate.CacheEntry, error) {
	select {
	case <-p.done:
		return p.entry, p.err
	case <-ctx.Done():
		return kvstate.CacheEntry{}, ctx.Err()
	}
}

// Abort stops the download if it is still running and waits for it to end
// (its partial file removed). The outcome stays readable through Wait.
func (p *Partial) Abort() {
	select {
	case <-p.done:
	default:
		p.cancel()
		<-p.done
	}
	p.mu.Lock()
	if p.f != nil {
		_ = p.f.Close()
		p.f = nil
	}
	p.mu.Unlock()
}

// ReaderAt returns a reader of the image whose reads wait, until ctx ends,
// for the bytes they ask for to arrive. A read past the end of a finished
// download returns io.EOF as a file would; reads after a failed download
// return its error.
func (p *Partial) ReaderAt(ctx context.Context) io.ReaderAt {
	return &partialReader{p: p, ctx: ctx}
}

type partialReader struct {
	p   *Partial
	ctx context.Context
}

func (r *partialReader) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	p := r.p
	for {
		p.mu.Lock()
		f, total, written, broken, arrived := p.f, p.total, p.written, p.broken, p.arrived
		var ended bool
		select {
		case <-p.done:
			ended = true
		default:
		}
		err := p.err
		p.mu.Unlock()
		switch {
		case broken != nil:
			return 0, broken
		case ended && err != nil:
			return 0, fmt.Errorf("the download failed: %w", err)
		case ended && f == nil:
			return 0, errors.New("the download ended and its file is closed")
		}
		need := off + int64(len(b))
		if total >= 0 {
			need = min(need, total)
		}
		if f != nil && (ended || written >= need) {
			n, err := f.ReadAt(b, off)
			// The file may have been truncated for a restart while it was
			// read: then these bytes cannot be trusted.
			p.mu.Lock()
			broken = p.broken
			p.mu.Unlock()
			if broken != nil {
				return 0, broken
			}
			return n, err
		}
		select {
		case <-arrived:
		case <-r.ctx.Done():
			return 0, context.Cause(r.ctx)
		}
	}
}
