// Package embedded runs the single-machine default: an in-process
// nats-server with JetStream, listening on loopback so local workers and the
// nats CLI can connect.
package embedded

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options configure the embedded server.
type Options struct {
	// Listen is host:port for clients.
	Listen string
	// DataDir holds JetStream's storage (in DataDir/jetstream).
	DataDir string
	// MaxMemory and MaxStore are JetStream's explicit limits in bytes.
	MaxMemory int64
	MaxStore  int64
}

// Start starts the server and waits until it accepts clients. The caller
// owns signals (the server installs no handlers) and calls Shutdown.
func Start(o Options) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS listen address %q: %w", o.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS listen port %q: %w", portStr, err)
	}
	opts := &server.Options{
		ServerName:         "provisioner-embedded",
		Host:               host,
		Port:               port,
		JetStream:          true,
		StoreDir:           filepath.Join(o.DataDir, "nats"),
		JetStreamMaxMemory: o.MaxMemory,
		JetStreamMaxStore:  o.MaxStore,
		NoSigs:             true,
		MaxPayload:         1 << 20,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(15 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded NATS did not start listening on %s within 15s (is the port taken?)", o.Listen)
	}
	return ns, nil
}
