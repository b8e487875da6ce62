package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/imagecache"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/source"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/stages"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
	"github.com/libvirt-volume-provisioner/provisioner/worker"
)

// This file is the harness's STAND-IN pipeline: an image cache, image
// source, volume backend and converter that sleep instead of downloading
// and writing, and count what they are asked to do. It exists only in this
// harness (package main of tests/fleet); bin/worker cannot select it.

// standInEndpoint is the object store endpoint job image URLs name; nothing listens there.
const standInEndpoint = "standin.fleet:9000"

// volumePrefix starts every volume name the harness asks for; the rest is the job's key.
const volumePrefix = "fleet-"

// jobKey is the harness's own name of a job, carried in its image URL and
// volume name (a REST job's id is known only once the API answered).
func imageURL(key string) string {
	return "http://" + standInEndpoint + "/images/" + key + ".raw"
}

// tally counts, fleet-wide, what the stand-in pipelines were asked to do.
type tally struct {
	mu sync.Mutex
	// starts: the worker asked the cache for the job's image (the job started).
	firstStart map[string]time.Time
	starts     map[string]int
	// effects: a conversion ran to its end (the volume was written).
	effects    map[string]int
	effectHost map[string]string
	startTimes []time.Time
	// writing counts the conversions of a job under way right now, and
	// twoWriters the jobs that ever had two at once.
	writing    map[string]int
	twoWriters map[string]bool
	completed  int
	// maxPerHost is the most jobs seen running at once on one host.
	maxPerHost int
	maxHost    string
	// exits counts workers that exited on their own (then restarted).
	exits     int
	firstExit string
}

// workerExit counts a worker that exited on its own.
func (t *tally) workerExit(host string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.exits++
	if t.firstExit == "" {
		t.firstExit = host + ": " + err.Error()
	}
}

func newTally() *tally {
	return &tally{firstStart: map[string]time.Time{}, starts: map[string]int{}, effects: map[string]int{}, effectHost: map[string]string{}, writing: map[string]int{}, twoWriters: map[string]bool{}}
}

func (t *tally) start(key string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.firstStart[key]; !ok {
		t.firstStart[key] = now
	}
	t.starts[key]++
	t.startTimes = append(t.startTimes, now)
}

func (t *tally) effect(key, host string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.effects[key]++
	t.effectHost[key] = host
	if t.effects[key] == 1 {
		t.completed++
	}
}

// writeBegins and writeEnds bracket one conversion of a job (a writer of
// its volume).
func (t *tally) writeBegins(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.writing[key]++
	if t.writing[key] > 1 {
		t.twoWriters[key] = true
	}
}

func (t *tally) writeEnds(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.writing[key]--
}

// overlapped reports whether two conversions of a job ran at once (two
// writers of one volume), rather than one after the other (an attempt
// stopped or lost between the write and its record). t.mu held.
func (t *tally) overlapped(key string) bool { return t.twoWriters[key] }

func (t *tally) concurrency(host string, n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n > t.maxPerHost {
		t.maxPerHost, t.maxHost = n, host
	}
}

// completedJobs is how many distinct jobs have had their effect.
func (t *tally) completedJobs() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.completed
}

// standInHost is a simulated hypervisor's state that outlives its worker
// process: its volumes, and the jobs running on it now.
type standInHost struct {
	name    string
	sleep   time.Duration
	image   string
	dir     string
	tally   *tally
	mu      sync.Mutex
	volumes map[string]volume.Volume
	active  int
}

// standInPipeline is one worker process's stand-in pipeline on a host. It
// implements worker.Source, worker.ImageCache, volume.Backend and
// convert.Converter. After kill it acts like a dead process: conversions
// stop at once without effect and its running jobs no longer count.
type standInPipeline struct {
	host   *standInHost
	dead   chan struct{}
	once   sync.Once
	active int // jobs of this process counted in host.active
}

var (
	_ worker.Source     = (*standInPipeline)(nil)
	_ worker.ImageCache = (*standInPipeline)(nil)
	_ volume.Backend    = (*standInPipeline)(nil)
	_ convert.Converter = (*standInPipeline)(nil)
)

func newStandInPipeline(h *standInHost) *standInPipeline {
	return &standInPipeline{host: h, dead: make(chan struct{})}
}

// parts are the worker.Parts of this stand-in pipeline.
func (p *standInPipeline) parts() worker.Parts {
	return worker.Parts{Source: p, Cache: p, Backend: p, Converter: p}
}

// kill makes this pipeline's process dead: its jobs stop counting as running.
func (p *standInPipeline) kill() {
	p.once.Do(func() {
		p.host.mu.Lock()
		p.host.active -= p.active
		p.active = 0
		p.host.mu.Unlock()
		close(p.dead)
	})
}

func (p *standInPipeline) isDead() bool {
	select {
	case <-p.dead:
		return true
	default:
		return false
	}
}

// Endpoint is the stand-in object store's endpoint.
func (p *standInPipeline) Endpoint() string { return standInEndpoint }

// Checksum says no .sha256 is published (never called: the stand-in cache answers first).
func (p *standInPipeline) Checksum(context.Context, string, string) (string, bool, error) {
	return "", false, nil
}

// Open is never called: the stand-in cache always hits.
func (p *standInPipeline) Open(context.Context, string, string) (io.ReadCloser, source.ObjectInfo, error) {
	return nil, source.ObjectInfo{}, errors.New("stand-in source: nothing to download")
}

// Acquire is always a hit on one tiny raw image file; it marks the job as
// started and running on the host until release.
func (p *standInPipeline) Acquire(_ context.Context, _ source.Source, ref messaging.ImageRef, o imagecache.AcquireOptions) (*imagecache.Fetch, error) {
	if o.Miss == imagecache.StreamDownload {
		return nil, errors.New("stand-in cache: streaming is not offered")
	}
	key := strings.TrimSuffix(filepath.Base(ref.Object), ".raw")
	p.host.tally.start(key, time.Now())
	p.host.mu.Lock()
	if p.isDead() {
		p.host.mu.Unlock()
		return nil, errors.New("stand-in: process is dead")
	}
	p.active++
	p.host.active++
	n := p.host.active
	p.host.mu.Unlock()
	p.host.tally.concurrency(p.host.name, n)
	var once sync.Once
	release := func() {
		once.Do(func() {
			p.host.mu.Lock()
			defer p.host.mu.Unlock()
			if !p.isDead() {
				p.active--
				p.host.active--
			}
		})
	}
	entry := kvstate.CacheEntry{Key: key, KeyKind: "url", Path: p.host.image, Size: 4096, SourceURL: ref.URL}
	return imagecache.NewFetch(entry, true, nil, release), nil
}

// Remove forgets nothing: the stand-in cache has one shared file.
func (p *standInPipeline) Remove(context.Context, string) error { return nil }

// ReconcileReport has nothing to reconcile.
func (p *standInPipeline) ReconcileReport(context.Context) (imagecache.ReconcileSummary, error) {
	return imagecache.ReconcileSummary{}, nil
}

// Dir is the host's (empty) cache directory.
func (p *standInPipeline) Dir() string { return p.host.dir }

// Lookup finds a volume the host's stand-in backend holds.
func (p *standInPipeline) Lookup(_ context.Context, name string) (volume.Volume, bool, error) {
	p.host.mu.Lock()
	defer p.host.mu.Unlock()
	v, ok := p.host.volumes[name]
	return v, ok, nil
}

// Create records a volume; nothing is allocated.
func (p *standInPipeline) Create(_ context.Context, name string, size int64) (volume.Volume, error) {
	p.host.mu.Lock()
	defer p.host.mu.Unlock()
	if _, ok := p.host.volumes[name]; ok {
		return volume.Volume{}, fmt.Errorf("stand-in backend: volume %q exists", name)
	}
	v := volume.Volume{Name: name, Path: "/standin/" + p.host.name + "/" + name, Size: size}
	p.host.volumes[name] = v
	return v, nil
}

// Delete forgets a volume.
func (p *standInPipeline) Delete(_ context.Context, name string) error {
	p.host.mu.Lock()
	defer p.host.mu.Unlock()
	delete(p.host.volumes, name)
	return nil
}

// Convert sleeps the job duration, reporting progress, and counts one
// effect for the job when the sleep ends (the volume "written"). A
// cancelled job or a killed process leaves no effect.
func (p *standInPipeline) Convert(ctx context.Context, img image.Image, _ string, vol volume.Volume, progress stages.ProgressFunc) error {
	key := strings.TrimPrefix(vol.Name, volumePrefix)
	p.host.tally.writeBegins(key)
	defer p.host.tally.writeEnds(key)
	end := time.Now().Add(p.host.sleep)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		left := time.Until(end)
		if left <= 0 {
			break
		}
		progress(stages.Populate, img.VirtualSize*int64(p.host.sleep-left)/int64(max(p.host.sleep, 1)), img.VirtualSize)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.dead:
			return errors.New("stand-in: process is dead")
		case <-tick.C:
		case <-time.After(left):
		}
	}
	if p.isDead() {
		return errors.New("stand-in: process is dead")
	}
	p.host.tally.effect(key, p.host.name)
	progress(stages.Populate, img.VirtualSize, img.VirtualSize)
	return nil
}

// writeStandInImage writes the one small raw image every stand-in cache hands out.
func writeStandInImage(dir string) (string, error) {
	path := filepath.Join(dir, "standin.raw")
	if err := os.WriteFile(path, make([]byte, 4096), 0o600); err != nil {
		return "", fmt.Errorf("write the stand-in image: %w", err)
	}
	return path, nil
}
