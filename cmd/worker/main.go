// Command worker runs one hypervisor host's provisioning jobs: it pulls them
// from the host's JetStream consumer, caches images from MinIO and writes
// volumes.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"syscall"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/pipeline/convert"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/imagecache"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/source"

	"github.com/libvirt-volume-provisioner/provisioner/volume/lvm"

	"github.com/nats-io/nats.go"
	"github.com/sirupsen/logrus"

	"github.com/libvirt-volume-provisioner/provisioner/config"
	"github.com/libvirt-volume-provisioner/provisioner/internal/logging"
	"github.com/libvirt-volume-provisioner/provisioner/internal/version"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/natsconn"
	"github.com/libvirt-volume-provisioner/provisioner/telemetry"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
	"github.com/libvirt-volume-provisioner/provisioner/worker"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

func defaultHost() string {
	h, err := os.Hostname()
	if err != nil {
		return "localhost"
	}
	return messaging.SanitizeHost(h)
}

func machineID() string {
	for _, p := range []string{"/etc/machine-id", "/var/lib/dbus/machine-id"} {
		if b, err := os.ReadFile(p); err == nil && len(bytes.TrimSpace(b)) > 0 {
			return string(bytes.TrimSpace(b))
		}
	}
	h, _ := os.Hostname()
	return "host-" + h
}

func run(args []string) (err error) {
	c := config.New("worker")
	host := c.String("PROVISIONER_HOST", defaultHost(), "host name this worker serves (default: the machine's hostname, sanitized)")
	machine := c.String("PROVISIONER_MACHINE_ID", machineID(), "identity of this machine in the host registry (default: /etc/machine-id)")
	httpAddr := c.String("PROVISIONER_HTTP_ADDR", "127.0.0.1:8081", "listen address of /metrics and the health endpoints")
	httpIdle := c.Duration("PROVISIONER_HTTP_IDLE_TIMEOUT", 2*time.Minute, "how long an idle keep-alive connection to the HTTP endpoints stays open")
	natsURL := c.String("PROVISIONER_NATS_URL", nats.DefaultURL, "NATS server URL(s), comma-separated")
	jsPrefix := c.String("PROVISIONER_NATS_JS_PREFIX", "", "JetStream API prefix: empty when the worker shares the streams' NATS account (embedded server), $JS.PROV.API for a host account of its own (deploy/nats)")
	prefix := c.String("PROVISIONER_SUBJECT_PREFIX", messaging.DefaultPrefix, "first token of every subject")
	ackWait := c.Duration("PROVISIONER_ACK_WAIT", 2*time.Minute, "consumer ack wait; in-progress acks, lease renewals and the record heartbeat go out every sixth of it")
	maxDeliver := c.Int("PROVISIONER_MAX_DELIVER", 5, "deliveries of one job before it fails")
	heartbeat := c.Duration("PROVISIONER_HEARTBEAT", worker.DefaultHeartbeat, "host registry heartbeat interval (alive = seen within three)")
	cacheDir := c.String("PROVISIONER_CACHE_DIR", "/var/lib/libvirt/images", "image cache directory")
	backend := c.String("PROVISIONER_VOLUME_BACKEND", "file", "volume backend: file, lvm or libvirt")
	volumeDir := c.String("PROVISIONER_VOLUME_DIR", "/var/lib/provisioner/volumes", "directory of the file backend's volumes")
	clones := c.String("PROVISIONER_CLONES", "auto", "file and libvirt backends: auto keeps a golden raw volume per image and makes volumes as reflink clones of it where the volume directory (or the libvirt dir pool) is on a file system with reflinks (XFS reflink=1, btrfs), converting elsewhere; off always converts")
	scrubEvery := c.Duration("PROVISIONER_SCRUB_INTERVAL", 24*time.Hour, "how often cached images and goldens are re-hashed in the background, evicting what no longer matches (0: never)")
	lvmVG := c.String("PROVISIONER_LVM_VG", "", "volume group of the lvm backend")
	thinPool := c.String("PROVISIONER_LVM_THINPOOL", "", "lvm backend: thin pool vg/pool; each image gets a read-only golden thin LV there and every volume is a thin snapshot of it (empty: thick LVs, converted into)")
	thinMaxUsed := c.Int("PROVISIONER_LVM_THINPOOL_MAX_USED_PERCENT", 95, "lvm backend with a thin pool: a job that would leave the pool's data or metadata fuller than this percentage is refused before it writes")
	libvirtURI := c.String("PROVISIONER_LIBVIRT_URI", "qemu:///system", "libvirt connection URI of the libvirt backend")
	libvirtPool := c.String("PROVISIONER_LIBVIRT_POOL", "", "storage pool of the libvirt backend's volumes")
	imagesPool := c.String("PROVISIONER_LIBVIRT_IMAGES_POOL", "images", "libvirt pool whose directory is the image cache (libvirt backend)")
	qemuImg := c.String("PROVISIONER_QEMU_IMG", "qemu-img", "qemu-img binary")
	writeLimit := c.Int64("PROVISIONER_WRITE_LIMIT", 0, "cap on volume writes in bytes per second (0: no limit)")
	converterName := c.String("PROVISIONER_CONVERTER", "native", "qcow2 converter: native (go-qcow2reader, parallel O_DIRECT writers; streams a cold image into a new volume while it downloads), or qemu-img")
	minioEndpoint := c.String("MINIO_ENDPOINT", "", "MinIO endpoint host:port image URLs must name")
	minioAccess := c.String("MINIO_ACCESS_KEY", "", "MinIO access key")
	minioSecret := c.Secret("MINIO_SECRET_KEY", "MinIO secret key")
	minioSSL := c.Bool("MINIO_USE_SSL", false, "use https to reach MinIO")
	logLevel := c.String("PROVISIONER_LOG_LEVEL", "info", "log level: debug, info, warn, error")
	cacheMax := c.Int64("PROVISIONER_CACHE_MAX_BYTES", 0, "image cache size cap in bytes; least recently used images not in use are evicted (0: no cap)")
	cacheMinFree := c.Int64("PROVISIONER_CACHE_MIN_FREE_BYTES", 64<<20, "free space kept in the cache's filesystem after a download, bytes")
	retryBudget := c.Duration("PROVISIONER_DOWNLOAD_RETRY_BUDGET", 2*time.Minute, "how long transient object store errors are retried (the download resumes) before a job fails")
	grace := c.Duration("PROVISIONER_SHUTDOWN_GRACE", 30*time.Second, "how long running jobs may finish after SIGTERM before they are stopped and left for redelivery")
	maxPending := c.Duration("PROVISIONER_MAX_PENDING_AGE", 24*time.Hour, "fail a job that waited longer than this for a worker (0: no limit)")
	maxRun := c.Duration("PROVISIONER_MAX_RUN_TIME", 2*time.Hour, "fail an attempt that runs longer than this (0: no limit)")
	volumeAllow := c.String("PROVISIONER_VOLUME_ALLOW", "", "regular expression (anchored) of the volume names this worker may touch (empty: all)")
	buckets := c.String("PROVISIONER_IMAGE_BUCKETS", "", "buckets (or bucket/prefix), comma-separated, this worker reads images from; a job naming another fails (empty: any its credentials can read)")
	natsCfg := config.NATSFlags(c)
	if err := c.Parse(args); err != nil {
		return err
	}
	log, err := logging.New(*logLevel)
	if err != nil {
		return err
	}
	var allow *regexp.Regexp
	if *volumeAllow != "" {
		if allow, err = regexp.Compile("^(?:" + *volumeAllow + ")$"); err != nil {
			return fmt.Errorf("PROVISIONER_VOLUME_ALLOW: %w", err)
		}
	}
	sources, err := messaging.ParseImageSources(*buckets)
	if err != nil {
		return fmt.Errorf("PROVISIONER_IMAGE_BUCKETS: %w", err)
	}
	if *minioEndpoint == "" {
		return errors.New("MINIO_ENDPOINT is not set: the worker needs the object store that holds the images")
	}
	qemuPath, err := exec.LookPath(*qemuImg)
	if err != nil {
		return fmt.Errorf("qemu-img not found (%s): install Debian's qemu-utils", *qemuImg)
	}
	var converter convert.Converter
	switch *converterName {
	case "qemu-img":
		converter = convert.QemuImg{Path: qemuPath, RateLimit: *writeLimit}
	case "native":
		converter = convert.Native{RateLimit: *writeLimit}
	default:
		return fmt.Errorf("PROVISIONER_CONVERTER=%q: want qemu-img or native", *converterName)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	tp, shutdownTracing, err := telemetry.Setup(ctx, "provisioner-worker", version.Version)
	if err != nil {
		return fmt.Errorf("set up tracing from OTEL_* variables: %w", err)
	}
	defer shutdownTracing()

	nconf := natsCfg()
	nconf.URL, nconf.Name, nconf.InboxPrefix = *natsURL, "provisioner-worker-"+*host, natsconn.WorkerInboxPrefix(*host)
	ctx, refused := context.WithCancelCause(ctx)
	defer refused(nil)
	nc, err := connectNATS(nconf, *host, log, refused)
	if err != nil {
		return err
	}
	defer nc.Drain()
	defer func() {
		// A worker the server refused exits naming why, whatever Run made of it.
		if cause := context.Cause(ctx); errors.Is(cause, natsconn.ErrRefused) {
			err = cause
		}
	}()

	source, err := source.NewMinIO(*minioEndpoint, *minioAccess, *minioSecret, *minioSSL)
	if err != nil {
		return err
	}
	vols, err := openBackend(backendConfig{kind: *backend, clones: *clones, volumeDir: *volumeDir, vg: *lvmVG, thinPool: *thinPool, thinMaxUsed: *thinMaxUsed, libvirtURI: *libvirtURI,
		libvirtPool: *libvirtPool, imagesPool: *imagesPool, cacheDir: *cacheDir})
	if err != nil {
		return err
	}
	defer vols.close()
	subjects := messaging.NewSubjects(*prefix)
	// The cache index needs the buckets; New waits for the API to create them.
	w, err := worker.New(ctx, worker.Config{Host: *host, JSAPIPrefix: *jsPrefix, MachineID: *machine, Version: version.Version, AckWait: *ackWait,
		MaxDeliver: *maxDeliver, Heartbeat: *heartbeat, TracerProvider: tp,
		ShutdownGrace: *grace, MaxPendingAge: *maxPending, MaxRunTime: *maxRun, VolumeAllow: allow, ImageBuckets: sources}, nc, subjects, worker.Parts{Source: source, Backend: vols.backend, Converter: converter, Checker: convert.QemuImg{Path: qemuPath}}, log)
	if err != nil {
		return err
	}
	minFree := *cacheMinFree
	if minFree == 0 {
		minFree = -1 // CacheOptions' zero means the default
	}
	cache, err := imagecache.NewWithOptions(vols.cacheDir, *host, w.CacheIndex(),
		imagecache.Options{MaxBytes: *cacheMax, MinFreeBytes: minFree, RetryBudget: *retryBudget})
	if err != nil {
		return err
	}
	cache.SetOnForeignFile(func(_ context.Context, path, reason string) {
		log.WithFields(logrus.Fields{"path": path, "reason": reason}).Warn("image cache left a file it did not create")
	})
	if vols.refreshCache != nil {
		cache.SetOnChange(func(ctx context.Context) {
			if err := vols.refreshCache(ctx); err != nil {
				log.WithError(err).Warn("refresh the libvirt images pool")
			}
		})
	}
	if cl, ok := vols.backend.(volume.Cloner); ok {
		if ok, reason := cl.CloneSupport(); ok {
			cache.SetGoldens(cl)
			logClones(ctx, log, vols.backend, vols.where)
		} else {
			log.WithFields(logrus.Fields{"volumes": vols.where, "reason": reason}).Info("clones are not possible here; every volume is converted into")
		}
	}
	if lb, ok := vols.backend.(*lvm.Backend); ok && lb.Pool != "" {
		w.Registry().MustRegister(newThinPoolCollector(lb))
	}
	w.SetCache(cache)
	if *scrubEvery > 0 {
		go cache.RunScrub(ctx, *scrubEvery, func(sum imagecache.ScrubSummary, err error) {
			l := log.WithFields(logrus.Fields{"images": sum.Images, "goldens": sum.Goldens, "images_evicted": sum.ImagesEvicted,
				"goldens_evicted": sum.GoldensEvicted, "busy": sum.Busy})
			switch {
			case err != nil:
				l.WithError(err).Warn("cache scrub failed")
			case sum.ImagesEvicted+sum.GoldensEvicted > 0:
				l.Warn("cache scrub evicted files that no longer matched their digest")
			default:
				l.Info("cache scrub found everything intact")
			}
		})
	}

	ln, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *httpAddr, err)
	}
	if *httpIdle <= 0 {
		return fmt.Errorf("PROVISIONER_HTTP_IDLE_TIMEOUT must be positive, not %s", *httpIdle)
	}
	// Every phase of a connection is bounded: an idle or slow client never
	// holds a connection open for ever.
	hs := &http.Server{Handler: w.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: *httpIdle}
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()
	log.WithFields(logrus.Fields{"addr": ln.Addr().String(), "host": *host, "cache_dir": vols.cacheDir, "backend": *backend,
		"converter": *converterName, "zlib": convert.ZlibDecompressor()}).Info("worker HTTP listening")
	return w.Run(ctx)
}

// connectNATS connects as c, host's worker. Credentials enrolled for
// another host are refused before connecting; a refusal by the server
// (revoked, expired or unknown credentials) is logged and passed to
// refused, which ends the worker with it.
func connectNATS(c natsconn.Config, host string, log *logrus.Logger, refused func(error)) (*nats.Conn, error) {
	if c.CredsFile != "" {
		if err := natsconn.CheckCredsHost(c.CredsFile, host); err != nil {
			return nil, err
		}
	}
	opts, err := natsconn.Options(c)
	if err != nil {
		return nil, err
	}
	opts = append(opts, natsconn.Resilient(
		func(err error) { log.WithError(err).Warn("NATS disconnected") },
		func(url string) { log.WithField("url", url).Info("NATS reconnected") })...)
	opts = append(opts, natsconn.OnRefused("host "+host,
		func(err error) {
			log.WithError(err).Error("NATS refused the worker")
			refused(err)
		},
		func(err error) { log.WithError(err).Warn("NATS error") })...)
	nc, err := nats.Connect(c.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS %s: %w", c.URL, err)
	}
	return nc, nil
}
