package config

import "github.com/libvirt-volume-provisioner/provisioner/natsconn"

// NATSFlags binds the NATS client credential and TLS settings shared by the
// API and the worker.
func NATSFlags(s *Set) func() natsconn.Config {
	creds := s.String("PROVISIONER_NATS_CREDS", "", "NATS credentials file (JWT and nkey seed)")
	nkey := s.String("PROVISIONER_NATS_NKEY", "", "NATS nkey seed file")
	user := s.String("PROVISIONER_NATS_USER", "", "NATS user name")
	password := s.Secret("PROVISIONER_NATS_PASSWORD", "NATS password (prefer a creds or nkey file)")
	ca := s.String("PROVISIONER_NATS_TLS_CA", "", "CA bundle (PEM) that verifies the NATS server")
	cert := s.String("PROVISIONER_NATS_TLS_CERT", "", "client certificate (PEM) for NATS")
	key := s.String("PROVISIONER_NATS_TLS_KEY", "", "client key (PEM) for NATS")
	return func() natsconn.Config {
		return natsconn.Config{CredsFile: *creds, NKeyFile: *nkey, User: *user, Password: *password, TLSCA: *ca, TLSCert: *cert, TLSKey: *key}
	}
}
