// Command api is the provisioner's REST front-end. With no NATS URL it starts
// an embedded nats-server with JetStream (the single-machine default).
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"

	"github.com/libvirt-volume-provisioner/provisioner/api"
	"github.com/libvirt-volume-provisioner/provisioner/config"
	"github.com/libvirt-volume-provisioner/provisioner/embedded"
	"github.com/libvirt-volume-provisioner/provisioner/internal/logging"
	"github.com/libvirt-volume-provisioner/provisioner/internal/version"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/natsconn"
	"github.com/libvirt-volume-provisioner/provisioner/telemetry"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "token" {
		if err := tokenCommand(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "api token:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "api:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	c := config.New("api")
	httpAddr := c.String("PROVISIONER_HTTP_ADDR", "127.0.0.1:8080", "REST listen address")
	natsURL := c.String("PROVISIONER_NATS_URL", "", "NATS server URL(s), comma-separated; empty starts an embedded server")
	natsListen := c.String("PROVISIONER_NATS_LISTEN", "127.0.0.1:4222", "listen address of the embedded NATS server")
	dataDir := c.String("PROVISIONER_DATA_DIR", "./var", "state directory of the embedded NATS server")
	jsMem := c.Int64("PROVISIONER_JETSTREAM_MAX_MEMORY", 256<<20, "embedded JetStream memory limit in bytes")
	jsStore := c.Int64("PROVISIONER_JETSTREAM_MAX_STORE", 8<<30, "embedded JetStream storage limit in bytes")
	prefix := c.String("PROVISIONER_SUBJECT_PREFIX", messaging.DefaultPrefix, "first token of every subject")
	replicas := c.Int("PROVISIONER_REPLICAS", 1, "replicas of streams and buckets (3 on a NATS cluster)")
	eventReplicas := c.Int("PROVISIONER_EVENT_REPLICAS", 1, "replicas of the progress event stream, a replay aid (at most PROVISIONER_REPLICAS; job records keep PROVISIONER_REPLICAS)")
	maxHosts := c.Int("PROVISIONER_MAX_HOSTS", messaging.DefaultMaxHosts, "fleet maximum: hosts with a job consumer (the job stream's consumer limit)")
	dispatch := c.String("PROVISIONER_DISPATCH", string(messaging.DispatchLimits), "job stream layout: limits (one R1 consumer per host, in memory) or workqueue (one consumer of the stream's replicas per host); every API replica must say the same")
	jobRetention := c.Duration("PROVISIONER_JOB_RETENTION", 7*24*time.Hour, "how long job records are kept after their last change")
	defaultHost := c.String("PROVISIONER_DEFAULT_HYPERVISOR", "", "hypervisor used when a request names none (empty: requests must name one)")
	endpoints := c.String("PROVISIONER_IMAGE_ENDPOINTS", os.Getenv("MINIO_ENDPOINT"), "object store endpoints (host:port, comma-separated) image URLs may name; defaults to $MINIO_ENDPOINT; empty allows any")
	buckets := c.String("PROVISIONER_IMAGE_BUCKETS", "", "buckets (or bucket/prefix), comma-separated, image URLs may name; empty allows any")
	logLevel := c.String("PROVISIONER_LOG_LEVEL", "info", "log level: debug, info, warn, error")
	fleetInterval := c.Duration("PROVISIONER_FLEET_METRICS_INTERVAL", 15*time.Second, "how often the fleet metrics read the hosts' queues (consumer info) and judge hosts alive")
	fleetTop := c.Int("PROVISIONER_FLEET_TOP_HOSTS", 50, "hosts with the longest queues that get a per-host queued-jobs series on /metrics (0: none)")
	sec := securityFlags(c)
	httpCfg := httpFlags(c)
	natsCfg := config.NATSFlags(c)
	if err := c.Parse(args); err != nil {
		return err
	}
	if err := httpCfg.check(); err != nil {
		return err
	}
	log, err := logging.New(*logLevel)
	if err != nil {
		return err
	}
	authn, tlsConfig, err := sec.load(*httpAddr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	tp, shutdownTracing, err := telemetry.Setup(ctx, "provisioner-api", version.Version)
	if err != nil {
		return fmt.Errorf("set up tracing from OTEL_* variables: %w", err)
	}
	defer shutdownTracing()

	nconf := natsCfg()
	nconf.URL, nconf.Name = *natsURL, "provisioner-api"
	if nconf.URL == "" {
		ns, err := embedded.Start(embedded.Options{Listen: *natsListen, DataDir: *dataDir, MaxMemory: *jsMem, MaxStore: *jsStore, Prefix: *prefix})
		if err != nil {
			return err
		}
		defer func() {
			ns.Shutdown()
			ns.WaitForShutdown()
		}()
		nconf = natsconn.Config{URL: ns.ClientURL(), Name: "provisioner-api", NKeyFile: ns.Credentials.API}
		log.WithFields(logrus.Fields{"listen": *natsListen, "store": *dataDir, "worker_nkey": ns.Credentials.Worker, "admin_nkey": ns.Credentials.Admin}).Info("embedded NATS server started")
	}
	opts, err := natsconn.Options(nconf)
	if err != nil {
		return err
	}
	opts = append(opts, natsconn.Resilient(
		func(err error) {
			if err != nil { // nil: the connection was closed on purpose (shutdown)
				log.WithError(err).Warn("NATS disconnected")
			}
		},
		func(url string) { log.WithField("url", url).Info("NATS reconnected") })...)
	nc, err := nats.Connect(nconf.URL, opts...)
	if err != nil {
		return fmt.Errorf("connect to NATS %s: %w", nconf.URL, err)
	}
	defer nc.Drain()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	subjects := messaging.NewSubjects(*prefix)
	limits := messaging.DefaultLimits()
	limits.Replicas = *replicas
	limits.EventReplicas = *eventReplicas
	limits.JobRetention = *jobRetention
	limits.MaxHosts = *maxHosts
	if limits.Dispatch, err = messaging.ParseDispatch(*dispatch); err != nil {
		return fmt.Errorf("PROVISIONER_DISPATCH: %w", err)
	}
	if err := setupWithRetry(ctx, js, subjects, limits, log); err != nil {
		return err
	}
	var eps []string
	for _, e := range strings.Split(*endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			secure := os.Getenv("MINIO_USE_SSL") == "true"
			eps = append(eps, messaging.NormalizeEndpoint(e, secure))
		}
	}
	sources, err := messaging.ParseImageSources(*buckets)
	if err != nil {
		return fmt.Errorf("PROVISIONER_IMAGE_BUCKETS: %w", err)
	}
	apiCfg := api.Config{MaxHosts: limits.MaxHosts, Replicas: limits.Replicas, Dispatch: limits.Dispatch, DefaultHypervisor: *defaultHost, ImageEndpoints: eps, ImageBuckets: sources, Version: version.Version, TracerProvider: tp, Auth: authn}
	httpCfg.apply(&apiCfg, *httpAddr, tlsConfig)
	srv, err := api.New(ctx, apiCfg, nc, subjects, log)
	if err != nil {
		return err
	}
	stopWorkers, err := srv.ServeWorkers(ctx)
	if err != nil {
		return err
	}
	defer stopWorkers()
	go srv.SweepSettled(ctx, api.SweepEvery)
	if err := srv.RunFleetMetrics(ctx, api.FleetOptions{Interval: *fleetInterval, TopHosts: *fleetTop, JobRetention: *jobRetention}); err != nil {
		return fmt.Errorf("start the fleet metrics: %w", err)
	}
	ln, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *httpAddr, err)
	}
	hs := httpCfg.server(srv.Handler(), tlsConfig, log)
	errc := make(chan error, 1)
	go func() {
		if tlsConfig != nil {
			errc <- hs.ServeTLS(ln, "", "")
		} else {
			errc <- hs.Serve(ln)
		}
	}()
	log.WithFields(logrus.Fields{"addr": ln.Addr().String(), "version": version.Version, "tls": tlsConfig != nil,
		"client_certificates": tlsConfig != nil && tlsConfig.ClientCAs != nil, "tokens": authn.Enabled() && len(authn.Keys) > 0}).Info("API listening")
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	log.Info("shutting down")
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return hs.Shutdown(shutCtx)
}

// jsErrNoSuitablePeers is JetStream's "no suitable peers for placement".
const jsErrNoSuitablePeers = 10005

// setupWithRetry creates the streams and buckets, waiting for NATS to be
// reachable (a cluster may still be starting).
func setupWithRetry(ctx context.Context, js jetstream.JetStream, s messaging.Subjects, l messaging.Limits, log *logrus.Logger) error {
	for {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := messaging.Setup(sctx, js, s, l)
		cancel()
		if err == nil {
			return nil
		}
		if errors.Is(err, messaging.ErrDispatchChange) {
			return fmt.Errorf("set up streams and buckets: %w", err)
		}
		var apiErr *jetstream.APIError
		// 10005, "no suitable peers for placement": a cluster whose nodes
		// have not all seen each other yet (it is starting); retried.
		if errors.As(err, &apiErr) && apiErr.ErrorCode != jsErrNoSuitablePeers && !kvstate.Transient(err) {
			return fmt.Errorf("set up streams and buckets: %w (they reserve %d MiB of JetStream storage)", err, messaging.ReservedBytes>>20)
		}
		log.WithError(err).WithField("reserve_mib", messaging.ReservedBytes>>20).Warn("cannot set up streams and buckets yet (a cluster still forming, or too little JetStream storage on its nodes); retrying")
		select {
		case <-ctx.Done():
			return fmt.Errorf("set up streams and buckets: %w", err)
		case <-time.After(2 * time.Second):
		}
	}
}
