package natsconn

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
)

// HostTag is the tag that names a worker's host on its account and user
// JWTs (provisioner-nats enroll writes it): "provisioner-host:<host>".
func HostTag(host string) string { return hostTagPrefix + host }

const hostTagPrefix = "provisioner-host:"

// ErrCredsForAnotherHost is returned by CheckCredsHost for a credentials
// file issued to another host.
var ErrCredsForAnotherHost = errors.New("NATS credentials were issued for another host")

// ErrRefused wraps the error of a connection the NATS server refused for
// good: its credentials are revoked, expired or not accepted.
var ErrRefused = errors.New("the NATS server refused this program's credentials")

// CredsHost is the host a credentials file was enrolled for (its user
// JWT's HostTag), or "" when it names none (credentials not made by
// provisioner-nats enroll).
func CredsHost(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("NATS credentials file %s: %w", path, err)
	}
	defer wipe(data)
	token, err := jwt.ParseDecoratedJWT(data)
	if err != nil {
		return "", fmt.Errorf("NATS credentials file %s: %w", path, err)
	}
	uc, err := jwt.DecodeUserClaims(token)
	if err != nil {
		return "", fmt.Errorf("NATS credentials file %s: user JWT: %w", path, err)
	}
	for _, t := range uc.Tags {
		if h, ok := strings.CutPrefix(t, hostTagPrefix); ok {
			return h, nil
		}
	}
	return "", nil
}

// CheckCredsHost refuses a credentials file that names a host other than
// host (the server would refuse every subject of host to it anyway; this
// says why before anything times out).
func CheckCredsHost(path, host string) error {
	h, err := CredsHost(path)
	if err != nil {
		return err
	}
	if h != "" && h != host {
		return fmt.Errorf("NATS credentials file %s was enrolled for host %q, not %q (PROVISIONER_HOST): %w; install the host's own .creds (provisioner-nats enroll %s)",
			path, h, host, ErrCredsForAnotherHost, host)
	}
	return nil
}

// authError reports whether err is nats.go's name for a refusal of the
// connection's credentials.
func authError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthRevoked) ||
		errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAccountAuthExpired)
}

// OnRefused are options that call refused once when the server refuses
// the connection's credentials for good: at once when they are revoked or
// expired, and for any other authorization error when nats.go gives up
// (the same error twice from a server). The error wraps ErrRefused and
// names the cause. Other asynchronous errors (permission violations, slow
// consumers) are passed to other, which may be nil.
func OnRefused(what string, refused func(error), other func(error)) []nats.Option {
	var once bool
	fire := func(err error) {
		if once {
			return
		}
		once = true
		refused(fmt.Errorf("%w (%s): %w: %s", ErrRefused, what, err, refusalHint(err)))
	}
	return []nats.Option{
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			switch {
			case errors.Is(err, nats.ErrAuthRevoked), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAccountAuthExpired):
				fire(err)
			case authError(err):
			case other != nil:
				other(err)
			}
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			if err := nc.LastError(); authError(err) {
				fire(err)
			}
		}),
	}
}

// refusalHint says what to do about a refusal.
func refusalHint(err error) string {
	switch {
	case errors.Is(err, nats.ErrAuthRevoked):
		return "these credentials were revoked (provisioner-nats revoke, or a newer enrollment of the host replaced them); enroll the host again and install its new .creds"
	case errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAccountAuthExpired):
		return "these credentials have expired; issue new ones"
	}
	return "the server does not accept these credentials (revoked, for another host's account that was revoked, or from another NATS operator)"
}
