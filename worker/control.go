package worker

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// ErrImageInUse is returned by an ImageCache's Remove for an image a job
// is using.
var ErrImageInUse = errors.New("image is in use by a running job")

// serveControl answers the host's control requests (removing an image from
// the cache) until the returned function is called.
func (w *Worker) serveControl(ctx context.Context) (func(), error) {
	index := w.CacheIndex()
	sub, err := w.nc.Subscribe(w.subjects.CacheDelete(w.cfg.Host), func(m *nats.Msg) {
		if !fromRequester(m) {
			w.log.WithField("subject", m.Subject).Warn("control request ignored: it has no reply subject a requester listens on, so it did not come from the API")
			return
		}
		reply := func(r messaging.CacheDeleteReply) {
			data, _ := json.Marshal(r)
			_ = m.Respond(data)
		}
		var req messaging.CacheDeleteRequest
		if err := messaging.DecodeStrict(m.Data, &req); err != nil || req.Key == "" {
			reply(messaging.CacheDeleteReply{Result: messaging.CacheError, Message: "malformed cache delete request"})
			return
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if _, err := index.Get(rctx, w.cfg.Host, req.Key); errors.Is(err, kvstate.ErrCacheEntryNotFound) {
			// Not a cache key: it may be an image's content checksum (what
			// the cache list shows; images without a .sha256 are keyed by
			// their URL's hash).
			found := false
			if entries, err := index.List(rctx, w.cfg.Host); err == nil {
				for _, e := range entries {
					if e.Checksum == req.Key {
						req.Key, found = e.Key, true
						break
					}
				}
			}
			if !found {
				reply(messaging.CacheDeleteReply{Result: messaging.CacheNotFound, Message: "no such image in the cache of " + w.cfg.Host})
				return
			}
		}
		err := w.parts.Cache.Remove(rctx, req.Key)
		switch {
		case err == nil:
			w.log.WithFields(map[string]any{"host": w.cfg.Host, "key": req.Key, "caller": req.Caller}).Info("image removed from the cache")
			reply(messaging.CacheDeleteReply{Result: messaging.CacheDeleted})
		case errors.Is(err, ErrImageInUse) || isInUse(err):
			reply(messaging.CacheDeleteReply{Result: messaging.CacheInUse, Message: err.Error()})
		default:
			reply(messaging.CacheDeleteReply{Result: messaging.CacheError, Message: err.Error()})
		}
	})
	if err != nil {
		return nil, err
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

// inUse is implemented by errors that say an image is in use.
type inUse interface{ InUse() bool }

func isInUse(err error) bool {
	var iu inUse
	return errors.As(err, &iu) && iu.InUse()
}

// fromRequester reports whether m can be a request a client sent: it has a
// reply subject, and not a JetStream one. Messages that nats-server itself
// publishes on a subject a client chose (the answer to a request whose reply
// subject names another host's control subject, a pulled job delivered
// there) have no reply subject, or a $JS.ACK one.
func fromRequester(m *nats.Msg) bool {
	return m.Reply != "" && !strings.HasPrefix(m.Reply, "$JS.")
}
