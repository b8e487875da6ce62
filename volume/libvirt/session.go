//go:build cgo

package libvirt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	golibvirt "libvirt.org/go/libvirt"
)

// libvirtError shows a libvirt error as libvirt's own message, which is
// what a person can act on, and still unwraps to the libvirt.Error (so
// errors.Is(err, libvirt.ERR_NO_STORAGE_VOL) works).
type libvirtError struct{ err golibvirt.Error }

func (e libvirtError) Error() string { return e.err.Message }
func (e libvirtError) Unwrap() error { return e.err }

// clean turns a libvirt.Error into a libvirtError and passes other errors on.
func clean(err error) error {
	var le golibvirt.Error
	if errors.As(err, &le) {
		return libvirtError{le}
	}
	return err
}

// poolXML is the part of a storage pool's XML description read here.
type poolXML struct {
	Type   string `xml:"type,attr"`
	Target struct {
		Path string `xml:"path"`
	} `xml:"target"`
}

// session is a connection to libvirt and one of its storage pools. Calls
// through do are serialized, and a connection that died (libvirtd restarted)
// is replaced on the next call.
type session struct {
	uri      string
	poolName string

	mu       sync.Mutex
	closed   bool
	conn     *golibvirt.Connect
	pool     *golibvirt.StoragePool
	poolType string
	poolPath string
}

// openSession connects to uri and finds the active pool poolName.
func openSession(uri, poolName string) (*session, error) {
	if poolName == "" {
		return nil, fmt.Errorf("libvirt storage pool name is empty (libvirt at %s)", uri)
	}
	s := &session{uri: uri, poolName: poolName}
	if err := s.connect(); err != nil {
		return nil, err
	}
	return s, nil
}

// connect opens the connection and looks the pool up; s.mu is held or s is
// not shared yet.
func (s *session) connect() error {
	conn, err := golibvirt.NewConnect(s.uri)
	if err != nil {
		return fmt.Errorf("connect to libvirt at %s: %w", s.uri, clean(err))
	}
	pool, err := conn.LookupStoragePoolByName(s.poolName)
	if err != nil {
		_, _ = conn.Close()
		if errors.Is(err, golibvirt.ERR_NO_STORAGE_POOL) {
			return fmt.Errorf("libvirt storage pool %q does not exist at %s: define and start it (virsh pool-define-as, virsh pool-start)", s.poolName, s.uri)
		}
		return fmt.Errorf("look up libvirt storage pool %q at %s: %w", s.poolName, s.uri, clean(err))
	}
	fail := func(e error) error {
		_ = pool.Free()
		_, _ = conn.Close()
		return e
	}
	active, err := pool.IsActive()
	if err != nil {
		return fail(fmt.Errorf("libvirt storage pool %q at %s: %w", s.poolName, s.uri, clean(err)))
	}
	if !active {
		return fail(fmt.Errorf("libvirt storage pool %q at %s is not active: start it (virsh pool-start %s)", s.poolName, s.uri, s.poolName))
	}
	desc, err := pool.GetXMLDesc(0)
	if err != nil {
		return fail(fmt.Errorf("describe libvirt storage pool %q at %s: %w", s.poolName, s.uri, clean(err)))
	}
	var px poolXML
	if err := xml.Unmarshal([]byte(desc), &px); err != nil {
		return fail(fmt.Errorf("parse the XML of libvirt storage pool %q at %s: %w", s.poolName, s.uri, err))
	}
	s.conn, s.pool, s.poolType, s.poolPath = conn, pool, px.Type, px.Target.Path
	return nil
}

// release frees the pool and closes the connection; s.mu is held.
func (s *session) release() {
	if s.pool != nil {
		_ = s.pool.Free()
		s.pool = nil
	}
	if s.conn != nil {
		_, _ = s.conn.Close()
		s.conn = nil
	}
}

// do runs fn with a live connection and the pool, reconnecting first when
// the last connection died. Calls are serialized.
func (s *session) do(ctx context.Context, fn func(conn *golibvirt.Connect, pool *golibvirt.StoragePool) error) error {
	return s.run(ctx, false, fn)
}

// doIdempotent is do for fn that may safely run twice: when fn fails
// because the connection died under it (libvirtd restarted), it reconnects
// and runs fn once more.
func (s *session) doIdempotent(ctx context.Context, fn func(conn *golibvirt.Connect, pool *golibvirt.StoragePool) error) error {
	return s.run(ctx, true, fn)
}

func (s *session) run(ctx context.Context, retry bool, fn func(conn *golibvirt.Connect, pool *golibvirt.StoragePool) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("libvirt storage pool %q at %s: the connection is closed", s.poolName, s.uri)
	}
	for attempt := 0; ; attempt++ {
		if s.conn != nil && !s.alive() {
			s.release()
		}
		if s.conn == nil {
			if err := s.connect(); err != nil {
				return err
			}
		}
		err := fn(s.conn, s.pool)
		if err == nil {
			return nil
		}
		if errors.Is(err, golibvirt.ERR_NO_STORAGE_POOL) || errors.Is(err, golibvirt.ERR_INVALID_CONN) || !s.alive() {
			// The connection broke, or the pool was undefined and
			// redefined: look everything up again.
			s.release()
			if retry && attempt == 0 && ctx.Err() == nil {
				continue
			}
		}
		return err
	}
}

// alive tells whether the connection is still open; s.mu is held.
func (s *session) alive() bool {
	if s.conn == nil {
		return false
	}
	ok, err := s.conn.IsAlive()
	return err == nil && ok
}

// close releases the connection; later calls fail.
func (s *session) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.release()
	return nil
}

// refreshRetryFor bounds how long refresh waits for libvirt's asynchronous
// jobs on the pool (a volume being built) to end.
const refreshRetryFor = 30 * time.Second

// refresh re-reads the pool's contents (pool.Refresh), waiting while libvirt
// refuses because a volume of the pool is being built.
func (s *session) refresh(ctx context.Context, pool *golibvirt.StoragePool) error {
	deadline := time.Now().Add(refreshRetryFor)
	wait := 50 * time.Millisecond
	for {
		err := pool.Refresh(0)
		if err == nil {
			return nil
		}
		var le golibvirt.Error
		busy := errors.As(err, &le) && strings.Contains(le.Message, "asynchronous jobs")
		if !busy || time.Now().After(deadline) {
			return fmt.Errorf("refresh libvirt storage pool %q at %s: %w", s.poolName, s.uri, clean(err))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("refresh libvirt storage pool %q at %s: %w", s.poolName, s.uri, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}
