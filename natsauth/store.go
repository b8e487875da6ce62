package natsauth

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// Files of the operator directory (Init writes them; every other call reads
// them). Seeds and credentials are mode 0600, the directory 0700.
const (
	OperatorKeyFile        = "operator.nk"
	OperatorSigningKeyFile = "operator-signing.nk"
	OperatorJWTFile        = "operator.jwt"
	MainSigningKeyFile     = "provisioner-signing.nk"
	SystemSigningKeyFile   = "sys-signing.nk"
	WorkerSigningKeyFile   = "worker-signing.nk"
	MainJWTFile            = "accounts/PROVISIONER.jwt"
	SystemJWTFile          = "accounts/SYS.jwt"
	APICredsFile           = "creds/api.creds"
	AdminCredsFile         = "creds/admin.creds"
	SystemCredsFile        = "creds/sys.creds"
	ServerConfFile         = "server.conf"
	// PrefixFile holds the subject prefix the accounts were written for.
	PrefixFile = "prefix"
	hostsDir   = "hosts"
)

// ErrNotInitialized is returned by Open for a directory Init did not make.
var ErrNotInitialized = errors.New("not an operator directory (run provisioner-nats init)")

// ErrInvalidHost is returned for a host name that is not a host token
// (messaging.ValidHost).
var ErrInvalidHost = errors.New("invalid host name")

// ErrNotEnrolled is returned for a host that has no account in the
// operator directory.
var ErrNotEnrolled = errors.New("host is not enrolled")

// path is name inside the directory.
func (o *Operator) path(name string) string { return filepath.Join(o.Dir, name) }

// hostJWTPath is the file of host's account JWT.
func (o *Operator) hostJWTPath(host string) string {
	return filepath.Join(o.Dir, hostsDir, host+".jwt")
}

// writeFile writes data to path atomically with mode perm, making its
// directory (0700).
func writeFile(path string, data []byte, perm fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(data)
	err = errors.Join(werr, tmp.Chmod(perm), tmp.Sync(), tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// writeSeed writes kp's seed to name (0600).
func (o *Operator) writeSeed(name string, kp nkeys.KeyPair) error {
	seed, err := kp.Seed()
	if err != nil {
		return fmt.Errorf("seed for %s: %w", name, err)
	}
	// Seed returns the key pair's own bytes: copy, never wipe them.
	return writeFile(o.path(name), append(append([]byte(nil), seed...), '\n'), 0o600)
}

// readSeed reads the key pair in name, which must have the prefix want.
func (o *Operator) readSeed(name string, want nkeys.PrefixByte) (nkeys.KeyPair, error) {
	data, err := os.ReadFile(o.path(name))
	if err != nil {
		return nil, fmt.Errorf("operator directory: %w", err)
	}
	defer wipe(data)
	kp, err := nkeys.ParseDecoratedNKey(data)
	if err != nil {
		return nil, fmt.Errorf("operator directory: %s: %w", name, err)
	}
	pub, err := kp.PublicKey()
	if err != nil || !nkeys.IsValidPublicKey(pub) || nkeys.Prefix(pub) != want {
		return nil, fmt.Errorf("operator directory: %s is not a %s seed", name, want)
	}
	return kp, nil
}

// readAccount reads and decodes the account JWT in path.
func readAccount(path string) (*jwt.AccountClaims, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ac, err := jwt.DecodeAccountClaims(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("account JWT %s: %w", path, err)
	}
	return ac, nil
}

// writeCreds writes a credentials file (user JWT and seed) to path (0600).
func writeCreds(path, userJWT string, kp nkeys.KeyPair) error {
	creds, err := formatCreds(userJWT, kp)
	if err != nil {
		return err
	}
	defer wipe(creds)
	return writeFile(path, creds, 0o600)
}

// formatCreds is the credentials file of userJWT and kp's seed.
func formatCreds(userJWT string, kp nkeys.KeyPair) ([]byte, error) {
	seed, err := kp.Seed()
	if err != nil {
		return nil, err
	}
	return jwt.FormatUserConfig(userJWT, seed)
}

func wipe(b []byte) {
	for i := range b {
		b[i] = 'x'
	}
}
