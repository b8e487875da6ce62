// Package natsconn turns the provisioner's NATS connection settings
// (PROVISIONER_NATS_* variables) into nats.go connect options: who the
// program authenticates as (a credentials file, an nkey seed file, or a user
// and password), how it verifies the server (TLS with a private CA) and which
// inbox prefix it receives replies on.
//
// The programs map their environment onto Config:
//
//	PROVISIONER_NATS_URL       Config.URL
//	PROVISIONER_NATS_CREDS     Config.CredsFile  (JWT + seed, "provisioner-nats enroll")
//	PROVISIONER_NATS_NKEY      Config.NKeyFile   (an nkey user seed, "nk -gen user")
//	PROVISIONER_NATS_USER      Config.User
//	PROVISIONER_NATS_PASSWORD  Config.Password
//	PROVISIONER_NATS_TLS_CA    Config.TLSCA
//	PROVISIONER_NATS_TLS_CERT  Config.TLSCert
//	PROVISIONER_NATS_TLS_KEY   Config.TLSKey
//
// A worker also sets Config.InboxPrefix to WorkerInboxPrefix(host): the NATS
// permissions in deploy/nats (and those of the embedded server's worker key)
// let a worker receive replies only on its own inbox prefix, so no worker can
// read the replies another worker or the API gets. A worker with enrolled
// credentials also checks they are its host's (CheckCredsHost) and ends
// when the server refuses them (OnRefused).
package natsconn

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Config is how a program connects to NATS. The zero value connects
// anonymously without TLS (what a NATS server without authorization accepts).
type Config struct {
	// URL is the server URL, or several separated by commas. Options does not
	// use it; it is here so one value describes the whole connection (see
	// Connect).
	URL string
	// CredsFile is a NATS credentials file (user JWT and nkey seed), for
	// servers in operator (JWT) mode (deploy/nats; provisioner-nats writes
	// them).
	CredsFile string
	// NKeyFile is a file holding an nkey user seed ("SU…"), for servers that
	// list users by their public nkey (the embedded server).
	NKeyFile string
	// User and Password authenticate with a user name and password.
	User, Password string
	// TLSCA is a PEM file of the CA certificates the server's certificate must
	// chain to. Setting it (or TLSCert) requires TLS.
	TLSCA string
	// TLSCert and TLSKey are the PEM client certificate and its key, for
	// servers that verify clients (mutual TLS). Both or neither.
	TLSCert, TLSKey string
	// Name is the connection's name as servers show it (nats server report
	// connections).
	Name string
	// InboxPrefix replaces "_INBOX" as the first part of reply subjects. A
	// worker sets WorkerInboxPrefix(host): its NATS user may subscribe only
	// there. Empty keeps nats.go's default.
	InboxPrefix string
}

// WorkerInboxPrefix is the inbox prefix of host's worker: "_INBOX_worker.<host>".
// NATS permissions grant worker-<host> "subscribe _INBOX_worker.<host>.>"
// (the embedded server's shared worker key gets "_INBOX_worker.>").
func WorkerInboxPrefix(host string) string { return "_INBOX_worker." + host }

// Options returns the nats.go options that authenticate as c says, verify
// the server with c's TLS settings and name the connection. The files are
// read now, so a missing or malformed file is reported here, naming it,
// rather than as a failed connection later. At most one of CredsFile,
// NKeyFile and User may be set.
func Options(c Config) ([]nats.Option, error) {
	var opts []nats.Option
	if c.Name != "" {
		opts = append(opts, nats.Name(c.Name))
	}
	if c.InboxPrefix != "" {
		if strings.ContainsAny(c.InboxPrefix, "*> \t") || strings.HasPrefix(c.InboxPrefix, ".") || strings.HasSuffix(c.InboxPrefix, ".") {
			return nil, fmt.Errorf("NATS inbox prefix %q must be a subject without wildcards, spaces or leading/trailing dots", c.InboxPrefix)
		}
		opts = append(opts, nats.CustomInboxPrefix(c.InboxPrefix))
	}

	var methods []string
	if c.CredsFile != "" {
		methods = append(methods, "a credentials file (PROVISIONER_NATS_CREDS)")
	}
	if c.NKeyFile != "" {
		methods = append(methods, "an nkey seed file (PROVISIONER_NATS_NKEY)")
	}
	if c.User != "" {
		methods = append(methods, "a user and password (PROVISIONER_NATS_USER)")
	}
	if len(methods) > 1 {
		return nil, fmt.Errorf("NATS authentication: set only one of %s", strings.Join(methods, ", "))
	}
	if c.Password != "" && c.User == "" {
		return nil, errors.New("NATS authentication: a password (PROVISIONER_NATS_PASSWORD) needs a user (PROVISIONER_NATS_USER)")
	}
	switch {
	case c.CredsFile != "":
		if err := checkCredsFile(c.CredsFile); err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	case c.NKeyFile != "":
		o, err := nats.NkeyOptionFromSeed(c.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("NATS nkey seed file %s: %w", c.NKeyFile, err)
		}
		opts = append(opts, o)
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	}

	tlsOpt, err := tlsOption(c)
	if err != nil {
		return nil, err
	}
	if tlsOpt != nil {
		opts = append(opts, tlsOpt)
	}
	return opts, nil
}

// Connect connects to c.URL with Options(c) followed by extra (reconnect
// behaviour, handlers).
func Connect(c Config, extra ...nats.Option) (*nats.Conn, error) {
	if c.URL == "" {
		return nil, errors.New("no NATS URL (PROVISIONER_NATS_URL)")
	}
	opts, err := Options(c)
	if err != nil {
		return nil, err
	}
	return nats.Connect(c.URL, append(opts, extra...)...)
}

// checkCredsFile makes sure the credentials file can be read and holds both
// a user JWT and an nkey seed; nats.go itself reads it at every connect.
func checkCredsFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("NATS credentials file %s: %w", path, err)
	}
	defer wipe(data)
	var jwt, seed bool
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "-----BEGIN NATS USER JWT-----"):
			jwt = true
		case strings.HasPrefix(line, "-----BEGIN USER NKEY SEED-----"):
			seed = true
		}
	}
	if !jwt || !seed {
		return fmt.Errorf("NATS credentials file %s: not a credentials file (want a NATS USER JWT and a USER NKEY SEED block, as written by provisioner-nats or nsc)", path)
	}
	return nil
}

func wipe(b []byte) {
	for i := range b {
		b[i] = 'x'
	}
}

// tlsOption builds the TLS configuration: the CA pool and the client
// certificate. It returns nil when c asks for neither.
func tlsOption(c Config) (nats.Option, error) {
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return nil, errors.New("NATS TLS: a client certificate (PROVISIONER_NATS_TLS_CERT) and its key (PROVISIONER_NATS_TLS_KEY) go together; set both or neither")
	}
	if c.TLSCA == "" && c.TLSCert == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.TLSCA != "" {
		pem, err := os.ReadFile(c.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("NATS TLS CA file %s: %w", c.TLSCA, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("NATS TLS CA file %s: no PEM certificate in it", c.TLSCA)
		}
		cfg.RootCAs = pool
	}
	if c.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("NATS TLS client certificate %s with key %s: %w", c.TLSCert, c.TLSKey, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return nats.Secure(cfg), nil
}

// Resilient are the options both programs connect with: start even when
// NATS is not up yet, reconnect forever, and report both through the given
// callbacks.
func Resilient(onDisconnect func(error), onReconnect func(url string)) []nats.Option {
	return []nats.Option{
		nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1), nats.ReconnectWait(time.Second), nats.Timeout(5 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { onDisconnect(err) }),
		nats.ReconnectHandler(func(nc *nats.Conn) { onReconnect(nc.ConnectedUrlRedacted()) }),
	}
}
