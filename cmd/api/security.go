package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/libvirt-volume-provisioner/provisioner/auth"
	"github.com/libvirt-volume-provisioner/provisioner/config"
)

// security holds the REST authentication settings.
type security struct {
	cert, key, clientCA, clientPolicy *string
	secrets, secretsFile              *string
	insecure                          *bool
}

func securityFlags(c *config.Set) *security {
	return &security{
		cert:         c.String("PROVISIONER_TLS_CERT", "", "TLS certificate (PEM) of the REST listener"),
		key:          c.String("PROVISIONER_TLS_KEY", "", "TLS private key (PEM) of the REST listener"),
		clientCA:     c.String("PROVISIONER_CLIENT_CA", "", "CA bundle (PEM) that verifies client certificates (mutual TLS)"),
		clientPolicy: c.String("PROVISIONER_CLIENT_POLICY", "", "JSON allowlist of client certificate names and their scopes"),
		secrets:      c.Secret("PROVISIONER_TOKEN_SECRETS", "API token secrets, <kid>:<base64>, comma-separated (prefer the file)"),
		secretsFile:  c.String("PROVISIONER_TOKEN_SECRETS_FILE", "", "file of API token secrets, one <kid>:<base64> a line, mode 0600"),
		insecure:     c.Bool("PROVISIONER_INSECURE", false, "allow a non-loopback listener without TLS and authentication"),
	}
}

// keys reads the token secrets from the file or the variable.
func (s *security) keys() (auth.Keys, error) {
	switch {
	case *s.secretsFile != "" && *s.secrets != "":
		return nil, errors.New("set PROVISIONER_TOKEN_SECRETS or PROVISIONER_TOKEN_SECRETS_FILE, not both")
	case *s.secretsFile != "":
		return auth.LoadKeys(*s.secretsFile)
	case *s.secrets != "":
		return auth.ParseKeys(*s.secrets)
	}
	return auth.Keys{}, nil
}

// load builds the authenticator and the TLS configuration, and refuses a
// listener that is not on loopback without TLS and authentication unless
// PROVISIONER_INSECURE is set.
func (s *security) load(addr string) (*auth.Authenticator, *tls.Config, error) {
	keys, err := s.keys()
	if err != nil {
		return nil, nil, err
	}
	a := &auth.Authenticator{Keys: keys}
	var tc *tls.Config
	if *s.cert != "" || *s.key != "" {
		pair, err := tls.LoadX509KeyPair(*s.cert, *s.key)
		if err != nil {
			return nil, nil, fmt.Errorf("TLS certificate and key (PROVISIONER_TLS_CERT, PROVISIONER_TLS_KEY): %w", err)
		}
		tc = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
	}
	if *s.clientCA != "" {
		if tc == nil {
			return nil, nil, errors.New("PROVISIONER_CLIENT_CA needs TLS: set PROVISIONER_TLS_CERT and PROVISIONER_TLS_KEY")
		}
		pem, err := os.ReadFile(*s.clientCA)
		if err != nil {
			return nil, nil, fmt.Errorf("client CA (PROVISIONER_CLIENT_CA): %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("client CA %s holds no PEM certificate", *s.clientCA)
		}
		tc.ClientCAs = pool
		// Certificates are verified when given; tokens remain the fallback.
		tc.ClientAuth = tls.VerifyClientCertIfGiven
		if *s.clientPolicy == "" {
			return nil, nil, errors.New("PROVISIONER_CLIENT_CA needs PROVISIONER_CLIENT_POLICY, the allowlist of client certificate names")
		}
		if a.Policy, err = auth.LoadPolicy(*s.clientPolicy); err != nil {
			return nil, nil, err
		}
	} else if *s.clientPolicy != "" {
		return nil, nil, errors.New("PROVISIONER_CLIENT_POLICY needs PROVISIONER_CLIENT_CA to verify client certificates")
	}
	if !loopback(addr) && !*s.insecure {
		switch {
		case tc == nil:
			return nil, nil, fmt.Errorf("refusing to listen on %s without TLS: set PROVISIONER_TLS_CERT and PROVISIONER_TLS_KEY (or PROVISIONER_INSECURE=true)", addr)
		case !a.Enabled():
			return nil, nil, fmt.Errorf("refusing to listen on %s without authentication: configure client certificates or API token secrets (or PROVISIONER_INSECURE=true)", addr)
		}
	}
	return a, tc, nil
}

// loopback reports whether addr's host is a loopback address or localhost.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
