package natsconn_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/natsconn"
)

// writeCreds writes a credentials file of a user JWT with tags.
func writeCreds(t *testing.T, tags ...string) string {
	t.Helper()
	account, err := nkeys.CreateAccount()
	require.NoError(t, err)
	user, err := nkeys.CreateUser()
	require.NoError(t, err)
	pub, err := user.PublicKey()
	require.NoError(t, err)
	uc := jwt.NewUserClaims(pub)
	uc.Tags.Add(tags...)
	token, err := uc.Encode(account)
	require.NoError(t, err)
	seed, err := user.Seed()
	require.NoError(t, err)
	creds, err := jwt.FormatUserConfig(token, seed)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "w.creds")
	require.NoError(t, os.WriteFile(path, creds, 0o600))
	return path
}

func TestCheckCredsHost(t *testing.T) {
	t.Parallel()
	hv01 := writeCreds(t, natsconn.HostTag("hv-01"))
	host, err := natsconn.CredsHost(hv01)
	require.NoError(t, err)
	require.Equal(t, "hv-01", host)
	require.NoError(t, natsconn.CheckCredsHost(hv01, "hv-01"))

	err = natsconn.CheckCredsHost(hv01, "hv-02")
	require.ErrorIs(t, err, natsconn.ErrCredsForAnotherHost)
	require.ErrorContains(t, err, `was enrolled for host "hv-01", not "hv-02" (PROVISIONER_HOST)`)

	// Credentials that name no host (made by other tools) are left to the server.
	require.NoError(t, natsconn.CheckCredsHost(writeCreds(t, "team:ops"), "hv-02"))

	bad := filepath.Join(t.TempDir(), "bad.creds")
	require.NoError(t, os.WriteFile(bad, []byte("not a creds file"), 0o600))
	require.Error(t, natsconn.CheckCredsHost(bad, "hv-01"))
}
