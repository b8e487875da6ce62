package natsconn_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/natsconn"
)

func runServer(t *testing.T, o *server.Options) *server.Server {
	t.Helper()
	o.Host, o.Port, o.NoSigs, o.NoLog = "127.0.0.1", -1, true, true
	ns, err := server.NewServer(o)
	require.NoError(t, err)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second))
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

func connect(url string, c natsconn.Config) (*nats.Conn, error) {
	opts, err := natsconn.Options(c)
	if err != nil {
		return nil, err
	}
	return nats.Connect(url, append(opts, nats.Timeout(3*time.Second))...)
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, data, 0o600))
	return p
}

func TestZeroConfig(t *testing.T) {
	t.Parallel()
	opts, err := natsconn.Options(natsconn.Config{})
	require.NoError(t, err)
	require.Empty(t, opts)
	ns := runServer(t, &server.Options{})
	nc, err := connect(ns.ClientURL(), natsconn.Config{Name: "probe"})
	require.NoError(t, err)
	defer nc.Close()
	require.Equal(t, "probe", nc.Opts.Name)
}

func TestNKeyFile(t *testing.T) {
	t.Parallel()
	kp, err := nkeys.CreateUser()
	require.NoError(t, err)
	seed, err := kp.Seed()
	require.NoError(t, err)
	pub, err := kp.PublicKey()
	require.NoError(t, err)
	dir := t.TempDir()
	seedFile := writeFile(t, dir, "user.nk", append(seed, '\n'))

	ns := runServer(t, &server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}})
	nc, err := connect(ns.ClientURL(), natsconn.Config{NKeyFile: seedFile})
	require.NoError(t, err)
	nc.Close()

	_, err = nats.Connect(ns.ClientURL())
	require.Error(t, err, "the server wants the key")

	missing := filepath.Join(dir, "missing.nk")
	_, err = natsconn.Options(natsconn.Config{NKeyFile: missing})
	require.ErrorContains(t, err, "NATS nkey seed file "+missing)

	bad := writeFile(t, dir, "bad.nk", []byte("hello\n"))
	_, err = natsconn.Options(natsconn.Config{NKeyFile: bad})
	require.ErrorContains(t, err, "NATS nkey seed file "+bad)
}

func TestUserPassword(t *testing.T) {
	t.Parallel()
	ns := runServer(t, &server.Options{Users: []*server.User{{Username: "api", Password: "s3cret"}}})
	nc, err := connect(ns.ClientURL(), natsconn.Config{User: "api", Password: "s3cret"})
	require.NoError(t, err)
	nc.Close()
	_, err = connect(ns.ClientURL(), natsconn.Config{User: "api", Password: "wrong"})
	require.Error(t, err)
}

func TestCredsFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	creds := writeFile(t, dir, "user.creds", []byte(`-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.x
------END NATS USER JWT------

-----BEGIN USER NKEY SEED-----
SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU
------END USER NKEY SEED------
`))
	opts, err := natsconn.Options(natsconn.Config{CredsFile: creds})
	require.NoError(t, err)
	require.Len(t, opts, 1)

	missing := filepath.Join(dir, "missing.creds")
	_, err = natsconn.Options(natsconn.Config{CredsFile: missing})
	require.ErrorContains(t, err, "NATS credentials file "+missing)

	notCreds := writeFile(t, dir, "seed.nk", []byte("SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU\n"))
	_, err = natsconn.Options(natsconn.Config{CredsFile: notCreds})
	require.ErrorContains(t, err, "NATS credentials file "+notCreds+": not a credentials file")
}

func TestConflictingSettings(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		c    natsconn.Config
		want string
	}{
		{"creds and nkey", natsconn.Config{CredsFile: "a", NKeyFile: "b"}, "set only one of a credentials file (PROVISIONER_NATS_CREDS), an nkey seed file (PROVISIONER_NATS_NKEY)"},
		{"nkey and user", natsconn.Config{NKeyFile: "b", User: "u"}, "set only one of"},
		{"password alone", natsconn.Config{Password: "p"}, "needs a user (PROVISIONER_NATS_USER)"},
		{"cert without key", natsconn.Config{TLSCert: "c"}, "set both or neither"},
		{"key without cert", natsconn.Config{TLSKey: "k"}, "set both or neither"},
		{"bad inbox", natsconn.Config{InboxPrefix: "_INBOX.*"}, "inbox prefix"},
		{"inbox trailing dot", natsconn.Config{InboxPrefix: "_INBOX_x."}, "inbox prefix"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := natsconn.Options(tt.c)
			require.ErrorContains(t, err, tt.want)
		})
	}
	_, err := natsconn.Connect(natsconn.Config{})
	require.ErrorContains(t, err, "PROVISIONER_NATS_URL")
}

func TestInboxPrefix(t *testing.T) {
	t.Parallel()
	require.Equal(t, "_INBOX_worker.hv-01", natsconn.WorkerInboxPrefix("hv-01"))
	ns := runServer(t, &server.Options{})
	nc, err := natsconn.Connect(natsconn.Config{URL: ns.ClientURL(), InboxPrefix: natsconn.WorkerInboxPrefix("hv-01")})
	require.NoError(t, err)
	defer nc.Close()
	require.Regexp(t, `^_INBOX_worker\.hv-01\.`, nc.NewInbox())
}

// pki is a CA with a server and a client certificate, in PEM files.
type pki struct {
	ca, serverCert, serverKey, clientCert, clientKey string
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature,
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		require.NoError(t, err)
		kder, err := x509.MarshalECPrivateKey(key)
		require.NoError(t, err)
		return writeFile(t, dir, name+".pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			writeFile(t, dir, name+"-key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	}
	p := pki{ca: writeFile(t, dir, "ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))}
	p.serverCert, p.serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth)
	return p
}

func TestTLS(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: p.serverCert, KeyFile: p.serverKey, CaFile: p.ca, Verify: true})
	require.NoError(t, err)
	ns := runServer(t, &server.Options{TLSConfig: tc, TLS: true, TLSVerify: true, TLSTimeout: 2})
	url := "tls://127.0.0.1:" + strconv.Itoa(ns.Addr().(*net.TCPAddr).Port)

	nc, err := connect(url, natsconn.Config{TLSCA: p.ca, TLSCert: p.clientCert, TLSKey: p.clientKey})
	require.NoError(t, err)
	require.True(t, nc.TLSRequired())
	nc.Close()

	// Without a client certificate the server refuses; without the CA the
	// client does not trust the server.
	_, err = connect(url, natsconn.Config{TLSCA: p.ca})
	require.Error(t, err)
	_, err = connect(url, natsconn.Config{TLSCert: p.clientCert, TLSKey: p.clientKey})
	require.Error(t, err)

	missing := filepath.Join(t.TempDir(), "ca.pem")
	_, err = natsconn.Options(natsconn.Config{TLSCA: missing})
	require.ErrorContains(t, err, "NATS TLS CA file "+missing)
	_, err = natsconn.Options(natsconn.Config{TLSCA: p.clientKey})
	require.ErrorContains(t, err, "NATS TLS CA file "+p.clientKey+": no PEM certificate")
	_, err = natsconn.Options(natsconn.Config{TLSCert: p.clientCert, TLSKey: p.serverCert})
	require.ErrorContains(t, err, "NATS TLS client certificate "+p.clientCert+" with key "+p.serverCert)
}
