package kvstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Host is a host registry entry, written by the host's worker.
type Host struct {
	Name      string    `json:"host"`
	MachineID string    `json:"machine_id"`
	Version   string    `json:"version"`
	StartedAt time.Time `json:"started_at"`
	LastSeen  time.Time `json:"last_seen"`
	// Heartbeat is the interval at which LastSeen is renewed.
	Heartbeat time.Duration `json:"heartbeat_ns"`
	// ActiveJobs is how many jobs the worker was running at LastSeen.
	ActiveJobs int `json:"active_jobs"`
}

// Alive reports whether the worker renewed its entry recently (within three
// heartbeats).
func (h Host) Alive(now time.Time) bool {
	hb := h.Heartbeat
	if hb <= 0 {
		hb = 5 * time.Second
	}
	return now.Sub(h.LastSeen) < 3*hb
}

// ErrHostClaimed: a live worker on another machine owns the host name.
var ErrHostClaimed = errors.New("host name is claimed by another machine")

// Hosts is the host registry in the provisioner_hosts bucket.
type Hosts struct {
	KV jetstream.KeyValue
}

// Claim registers h. It refuses with ErrHostClaimed when a different machine
// holds the name and is still alive; a stale entry is taken over.
func (r Hosts) Claim(ctx context.Context, h Host) (uint64, error) {
	data, err := json.Marshal(h)
	if err != nil {
		return 0, err
	}
	for range 10 {
		e, err := r.KV.Get(ctx, h.Name)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			rev, err := r.KV.Create(ctx, h.Name, data)
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue
			}
			return rev, err
		}
		if err != nil {
			return 0, fmt.Errorf("read host %s: %w", h.Name, err)
		}
		var cur Host
		if err := json.Unmarshal(e.Value(), &cur); err == nil && cur.MachineID != h.MachineID && cur.Alive(time.Now()) {
			return 0, fmt.Errorf("%w: host %q belongs to machine %s, last seen %s ago", ErrHostClaimed, h.Name, cur.MachineID, time.Since(cur.LastSeen).Round(time.Second))
		}
		rev, err := r.KV.Update(ctx, h.Name, data, e.Revision())
		if isRevisionMismatch(err) {
			continue
		}
		return rev, err
	}
	return 0, fmt.Errorf("claim host %s: too many concurrent changes", h.Name)
}

// Renew writes h over the revision this worker last wrote; a mismatch means
// another machine took the name over.
func (r Hosts) Renew(ctx context.Context, h Host, rev uint64) (uint64, error) {
	data, err := json.Marshal(h)
	if err != nil {
		return 0, err
	}
	newRev, err := r.KV.Update(ctx, h.Name, data, rev)
	if isRevisionMismatch(err) {
		// A renewal whose reply was lost (NATS restarted) moved the
		// revision on: the entry is still this machine's.
		cur, gerr := r.KV.Get(ctx, h.Name)
		if gerr != nil {
			// Not known to be taken over: the next renewal asks again.
			return 0, fmt.Errorf("renew host %s: read it after a conflict: %w", h.Name, gerr)
		}
		var owner Host
		if json.Unmarshal(cur.Value(), &owner) == nil && owner.MachineID == h.MachineID {
			return r.KV.Update(ctx, h.Name, data, cur.Revision())
		}
		return 0, fmt.Errorf("%w: host %q was taken over", ErrHostClaimed, h.Name)
	}
	return newRev, err
}

// Get returns one host; ErrHostNotFound if there is none.
func (r Hosts) Get(ctx context.Context, name string) (Host, error) {
	var h Host
	e, err := r.KV.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return h, ErrHostNotFound
	}
	if err != nil {
		return h, err
	}
	err = json.Unmarshal(e.Value(), &h)
	return h, err
}

// List returns every registered host, sorted by name.
func (r Hosts) List(ctx context.Context) ([]Host, error) {
	lister, err := r.KV.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	defer lister.Stop()
	var out []Host
	for key := range lister.Keys() {
		h, err := r.Get(ctx, key)
		if errors.Is(err, ErrHostNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// WatchAll delivers the changes of every host's entry, the current ones
// first, until ctx ends or the watch is stopped.
func (r Hosts) WatchAll(ctx context.Context) (*Watch[Host], error) {
	w, err := r.KV.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("watch the host registry: %w", err)
	}
	return watch[Host](w), nil
}
