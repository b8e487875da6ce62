package pipeline

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/imagecache"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/source"
	"github.com/libvirt-volume-provisioner/provisioner/volume/file"
)

const (
	MiB = int64(1) << 20
	gib = int64(1) << 30
)

// One MinIO server process for the package's tests; each test has its own
// bucket, NATS server, cache and volumes.
var sharedMinIO testenv.SharedMinIO

func TestMain(m *testing.M) { os.Exit(sharedMinIO.Main(m, nil)) }

// recorder is the Reporter of the plans under test: it keeps what a plan
// reports (the worker's reporter writes the same to the job's record and
// events), and checks that the volume does not exist yet when the plan
// says it creates it.
type recorder struct {
	t   *testing.T
	dir string // the file backend's directory
	job messaging.Job

	mu      sync.Mutex
	stages  []string // each stage as it became the current one
	created bool
	hit     *bool
}

func (r *recorder) Progress(stage string, _, _ int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.stages) == 0 || r.stages[len(r.stages)-1] != stage {
		r.stages = append(r.stages, stage)
	}
}

func (r *recorder) CountOnly(string, int64) {}

func (r *recorder) SetCache(hit bool, _, _ string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hit = &hit
}

func (r *recorder) RecordImage(string, string) {}

func (r *recorder) MarkVolumeCreated(context.Context) error {
	_, err := os.Stat(filepath.Join(r.dir, r.job.VolumeName))
	require.ErrorIs(r.t, err, os.ErrNotExist, "the job's record says it creates the volume before the volume exists")
	r.mu.Lock()
	defer r.mu.Unlock()
	r.created = true
	return nil
}

func (r *recorder) Log() *logrus.Entry { return logrus.NewEntry(logrus.StandardLogger()) }

// seen reports whether the stages were reported in this order (others may
// come between them).
func (r *recorder) seen(order ...string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := 0
	for _, s := range r.stages {
		if i < len(order) && s == order[i] {
			i++
		}
	}
	return i == len(order)
}

// host is one host's parts on real services: images in a MinIO bucket of
// the test's own, the cache with its index in a JetStream KV bucket, and a
// file backend in dir (with reflink clones where dir's file system makes
// them and clones is set).
type host struct {
	t      *testing.T
	m      *testenv.MinIO
	bucket string
	dir    string
	parts  Parts
	space  Space
	locks  sync.Mutex
	leased map[string]bool
}

func newHost(t *testing.T, conv convert.Converter, dir string, clones bool) *host {
	t.Helper()
	m, bucket := sharedMinIO.Bucket(t)
	js := testenv.JetStream(t)
	require.NoError(t, messaging.Setup(t.Context(), js, messaging.NewSubjects(""), messaging.DefaultLimits()))
	b, err := messaging.BindBuckets(t.Context(), js)
	require.NoError(t, err)
	src, err := source.NewMinIO(m.Endpoint, m.AccessKey, m.SecretKey, false)
	require.NoError(t, err)
	cache, err := imagecache.New(filepath.Join(t.TempDir(), "cache"), "h1", kvstate.CacheIndex{KV: b.Cache})
	require.NoError(t, err)
	open := file.NewWithoutClones
	if clones {
		open = file.New
	}
	backend, err := open(dir)
	require.NoError(t, err)
	if ok, _ := backend.CloneSupport(); ok {
		cache.SetGoldens(backend)
	}
	return &host{t: t, m: m, bucket: bucket, dir: backend.Dir, leased: map[string]bool{},
		parts: Parts{Source: src, Cache: cache, Backend: backend, Converter: conv, Checker: convert.QemuImg{}}}
}

// put uploads a qcow2 image of virtual size bytes (its published checksum
// with it) and returns its URL, its SHA-256, and what a volume filled from
// it holds.
func (h *host) put(name string, size int64, seed uint64) (url, digest, ref string) {
	h.t.Helper()
	qcow2, _ := testenv.QCOW2Image(h.t, h.t.TempDir(), size, seed)
	url, digest, err := h.m.PutImage(h.t.Context(), h.bucket, name, qcow2, true)
	require.NoError(h.t, err)
	return url, digest, testenv.QemuRawReference(h.t, qcow2)
}

// plan is the plan of job m on this host, with a recorder; its Lock refuses
// a volume another plan of the host holds (as the worker's lease does).
func (h *host) plan(m messaging.Job) (*Plan, *recorder) {
	rec := &recorder{t: h.t, dir: h.dir, job: m}
	lock := func(_ context.Context, name string) (func(), error) {
		h.locks.Lock()
		defer h.locks.Unlock()
		if h.leased[name] {
			return func() {}, &kvstate.LeaseHeldError{Volume: name}
		}
		h.leased[name] = true
		return func() {
			h.locks.Lock()
			delete(h.leased, name)
			h.locks.Unlock()
		}, nil
	}
	return &Plan{Parts: h.parts, Space: &h.space, Report: rec, Lock: lock, Job: m}, rec
}
