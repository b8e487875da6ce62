package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/libvirt-volume-provisioner/provisioner/embedded"
	"github.com/libvirt-volume-provisioner/provisioner/natsauth"
)

// fleetAuth is how the harness's programs authenticate to the cluster:
// not at all (nil, the default), or with the project's NATS JWT setup
// (-jwt): an operator directory from natsauth.Init, every simulated host
// enrolled in an account of its own, each worker with its host's
// credentials and the JetStream API prefix of its account, exactly as
// deploy/nats runs them.
type fleetAuth struct {
	op       *natsauth.Operator
	credsDir string
}

// newJWTAuth makes the run's operator directory under dir.
func newJWTAuth(dir string) (*fleetAuth, error) {
	op, err := natsauth.Init(filepath.Join(dir, "operator"), "")
	if err != nil {
		return nil, fmt.Errorf("NATS operator: %w", err)
	}
	return &fleetAuth{op: op, credsDir: filepath.Join(dir, "creds")}, nil
}

// serverConf is the operator.conf the nodes include ("" without auth).
func (a *fleetAuth) serverConf() string {
	if a == nil {
		return ""
	}
	return filepath.Join(a.op.Dir, natsauth.ServerConfFile)
}

// adminOpts authenticate the harness's own connections (admin, publishers).
func (a *fleetAuth) adminOpts() []nats.Option {
	if a == nil {
		return nil
	}
	return []nats.Option{nats.UserCredentials(filepath.Join(a.op.Dir, natsauth.AdminCredsFile))}
}

// apiEnv is what the API replicas authenticate with.
func (a *fleetAuth) apiEnv() []string {
	if a == nil {
		return nil
	}
	return []string{"PROVISIONER_NATS_CREDS=" + filepath.Join(a.op.Dir, natsauth.APICredsFile)}
}

// workerOpts and jsPrefix are how host's worker connects and where it
// finds the JetStream API.
func (a *fleetAuth) workerOpts(host string) []nats.Option {
	if a == nil {
		return nil
	}
	return []nats.Option{nats.UserCredentials(filepath.Join(a.credsDir, host+".creds"))}
}

func (a *fleetAuth) jsPrefix() string {
	if a == nil {
		return ""
	}
	return embedded.HostAPIPrefix
}

// enroll gives every host its account (one push, as provisioner-nats
// enroll with several hosts does) and writes the workers' credentials.
func (a *fleetAuth) enroll(ctx context.Context, urls string, hosts []string) error {
	if a == nil {
		return nil
	}
	ch, err := a.op.Enroll(hosts...)
	if err != nil {
		return err
	}
	nc, err := nats.Connect(urls, nats.Name("fleet-enroll"), nats.UserCredentials(filepath.Join(a.op.Dir, natsauth.SystemCredsFile)))
	if err != nil {
		return fmt.Errorf("connect as the system account: %w", err)
	}
	defer nc.Close()
	pctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := natsauth.Push(pctx, nc, ch.JWTs...); err != nil {
		return err
	}
	if err := a.op.Commit(ch); err != nil {
		return err
	}
	if err := os.MkdirAll(a.credsDir, 0o700); err != nil {
		return err
	}
	for host, creds := range ch.Creds {
		if err := os.WriteFile(filepath.Join(a.credsDir, host+".creds"), creds, 0o600); err != nil {
			return err
		}
	}
	return nil
}
