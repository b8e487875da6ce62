package tests

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/embedded"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/natsauth"
	"github.com/libvirt-volume-provisioner/provisioner/natsconn"
)

// permJWTServer starts one nats-server with deploy/nats/single.conf (the
// JWT setup) trusting a new operator, and returns its URL and the
// operator's credentials.
func permJWTServer(t *testing.T) (string, permKeys) {
	t.Helper()
	dir := t.TempDir()
	keys := permInitOperator(t, dir)
	port := permFreePort(t)
	conf := permCopyConfig(t, dir, "single.conf",
		"host: 0.0.0.0", "host: 127.0.0.1",
		"port: 4222", "port: "+port,
		`store_dir: "/var/lib/nats/jetstream"`, `store_dir: "`+filepath.Join(dir, "js")+`"`,
		`dir: "/var/lib/nats/resolver"`, `dir: "`+filepath.Join(dir, "resolver")+`"`,
		"max_file_store: 8GB", "max_file_store: 2GB")
	permStartServer(t, conf, nil)
	return "nats://127.0.0.1:" + port, keys
}

// permAccountsMatch checks the account JWTs natsauth makes against
// embedded.HostAccount: a host account imports exactly the worker's
// subjects from PROVISIONER (under the prefix), exports its control
// subjects, has no JetStream, and its only signing key is the worker key
// scoped to the worker's permissions; the worker's user carries no
// permissions of its own; PROVISIONER imports the host's control subjects;
// a revocation leaves the account nothing.
func permAccountsMatch(t *testing.T) {
	o, err := natsauth.Init(filepath.Join(t.TempDir(), "op"), "")
	require.NoError(t, err)
	for _, host := range []string{"hv-01", "hv-02"} {
		a := embedded.NewHostAccount("", host)
		ch, err := o.Enroll(host)
		require.NoError(t, err)
		require.NoError(t, o.Commit(ch))
		ac, err := jwt.DecodeAccountClaims(ch.JWTs[0])
		require.NoError(t, err)
		require.Equal(t, a.Name, ac.Name)
		require.False(t, ac.Limits.IsJSEnabled(), "%s has JetStream", host)
		type im struct{ subject, local string }
		var got, want []im
		var subjects []string
		for _, i := range ac.Imports {
			require.Equal(t, jwt.Service, i.Type, i.Subject)
			require.Equal(t, o.MainAccount, i.Account, i.Subject)
			local := string(i.LocalSubject)
			if local == "" {
				local = string(i.Subject)
			}
			got = append(got, im{string(i.Subject), local})
			subjects = append(subjects, string(i.Subject))
		}
		for _, i := range a.Imports {
			want = append(want, im{i.Subject, i.To})
		}
		require.ElementsMatch(t, want, got, host)
		require.ElementsMatch(t, embedded.WorkerPermissions("", host).Publish.Allow, subjects, host)
		require.Len(t, ac.Exports, 1)
		require.Equal(t, a.Control, string(ac.Exports[0].Subject))
		require.Equal(t, jwt.Service, ac.Exports[0].Type)

		keys := ac.SigningKeys.Keys()
		require.Len(t, keys, 1)
		scope, ok := ac.SigningKeys.GetScope(keys[0])
		require.True(t, ok)
		us, ok := scope.(*jwt.UserScope)
		require.True(t, ok, "the worker signing key is scoped")
		require.ElementsMatch(t, a.Permissions.Publish.Allow, []string(us.Template.Pub.Allow), host)
		require.ElementsMatch(t, a.Permissions.Subscribe.Allow, []string(us.Template.Sub.Allow), host)
		require.Empty(t, us.Template.Pub.Deny)
		require.Empty(t, us.Template.Sub.Deny)
		require.Equal(t, a.Permissions.Response.MaxMsgs, us.Template.Resp.MaxMsgs)
		require.Equal(t, a.Permissions.Response.Expires, us.Template.Resp.Expires)

		token, err := jwt.ParseDecoratedJWT(ch.Creds[host])
		require.NoError(t, err)
		uc, err := jwt.DecodeUserClaims(token)
		require.NoError(t, err)
		require.Equal(t, ac.Subject, uc.IssuerAccount)
		require.Equal(t, keys[0], uc.Issuer)
		require.True(t, uc.HasEmptyPermissions(), "a scoped user carries no permissions")
		require.Contains(t, []string(uc.Tags), natsconn.HostTag(host))

		main, err := jwt.DecodeAccountClaims(ch.JWTs[1])
		require.NoError(t, err)
		require.True(t, slices.ContainsFunc(main.Imports, func(i *jwt.Import) bool {
			return string(i.Subject) == a.Control && i.Account == ac.Subject && i.Type == jwt.Service
		}), "PROVISIONER does not import %s's control subjects", host)
	}

	ch, err := o.Revoke("hv-01")
	require.NoError(t, err)
	ac, err := jwt.DecodeAccountClaims(ch.JWTs[0])
	require.NoError(t, err)
	require.Contains(t, ac.Revocations, jwt.All)
	require.Empty(t, ac.Imports)
	require.Empty(t, ac.Exports)
	require.Empty(t, ac.SigningKeys)
	main, err := jwt.DecodeAccountClaims(ch.JWTs[1])
	require.NoError(t, err)
	var controls []string
	for _, i := range main.Imports {
		controls = append(controls, string(i.Subject))
	}
	require.Equal(t, []string{embedded.NewHostAccount("", "hv-02").Control}, controls, "after revoking hv-01")
}

// TestNATSJWTEnrollRefusesBadInput: enroll refuses a host name that is not
// a host token before it contacts any server, and revoke refuses a host
// that was never enrolled.
func TestNATSJWTEnrollRefusesBadInput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	op := filepath.Join(dir, "op")
	permRunTool(t, "init", "-dir", op)
	for _, host := range []string{"HV-01", "hv_01", "hv.01", "", strings.Repeat("h", 64), "hv-01/../x"} {
		out, err := permTool("enroll", "-dir", op, "-server", "nats://127.0.0.1:1", "-out", filepath.Join(dir, "x.creds"), host)
		require.Error(t, err, host)
		require.Contains(t, out, "is not a valid host token", host)
	}
	entries, err := os.ReadDir(filepath.Join(op, "hosts"))
	if err == nil {
		require.Empty(t, entries)
	}
	require.NoFileExists(t, filepath.Join(dir, "x.creds"))
	out, err := permTool("revoke", "-dir", op, "-server", "nats://127.0.0.1:1", "hv-09")
	require.Error(t, err)
	require.Contains(t, out, "host is not enrolled")
	out, err = permTool("init", "-dir", op)
	require.Error(t, err)
	require.Contains(t, out, "already holds an operator")
}

// TestNATSJWTWorkers runs the real API and workers against a nats-server
// in the JWT setup: an enrolled host provisions a volume through its own
// account; hv-01's credentials on hv-02 are refused with a message naming
// both hosts; revoking hv-01 disconnects its running worker within
// seconds, which exits naming the revocation, and its credentials cannot
// connect again, while hv-02 keeps working; enrolling hv-01 again issues
// credentials that work.
func TestNATSJWTWorkers(t *testing.T) {
	t.Parallel()
	url, keys := permJWTServer(t)
	permEnrollBoth(t, &keys, url)
	e := newEnv(t, envOptions{noWorker: true, apiEnv: []string{
		"PROVISIONER_NATS_URL=" + url, "PROVISIONER_NATS_CREDS=" + keys.api, "PROVISIONER_DEFAULT_HYPERVISOR=hv-01"}})
	e.natsURL = url
	jwtWorker := func(creds string) []string {
		return []string{"PROVISIONER_NATS_NKEY=", "PROVISIONER_NATS_CREDS=" + creds, "PROVISIONER_NATS_JS_PREFIX=" + embedded.HostAPIPrefix}
	}
	w1 := e.startWorker("hv-01", jwtWorker(keys.hv01)...)

	// An enrolled host works: a job end to end through its account.
	qcow2, ref := image(t, 16<<20, 8)
	img := e.upload("images/jwt.qcow2", qcow2, true)
	id := e.submit(map[string]any{"image_url": img, "volume_name": "vm-jwt", "volume_size_gb": 1, "hypervisor": "hv-01"})
	e.waitStatus(id, "completed")
	requireVolume(t, e.volumePath("hv-01", "vm-jwt"), ref, gib)
	// Its host entry, written through its account, is in PROVISIONER's bucket.
	_, adminJS, _ := permConnect(t, url, natsconn.Config{CredsFile: keys.admin, Name: "admin-hosts"})
	hostsKV, err := adminJS.KeyValue(permCtx(t, 5*time.Second), messaging.HostBucket)
	require.NoError(t, err)
	_, err = hostsKV.Get(permCtx(t, 5*time.Second), "hv-01")
	require.NoError(t, err)

	// hv-01's credentials used as hv-02: refused, naming both.
	wrong := startProc(t, "worker", filepath.Join(e.dir, "worker-wrong.log"), e.workerEnv("hv-02", jwtWorker(keys.hv01)...))
	permExits(t, wrong, 20*time.Second)
	require.Contains(t, wrong.output(), `was enrolled for host "hv-01", not "hv-02"`)

	// Revoke hv-01 while its worker runs.
	start := time.Now()
	out := permRunTool(t, "revoke", "-dir", keys.dir, "-server", url, "hv-01")
	require.Contains(t, out, "host hv-01 revoked")
	permExits(t, w1, 10*time.Second)
	t.Logf("the revoked worker exited %s after the revoke command started", time.Since(start).Round(time.Millisecond))
	require.Contains(t, w1.output(), "authentication revoked")
	require.Contains(t, w1.output(), "NATS refused the worker")

	// Its credentials cannot connect again, nor can a restarted worker.
	_, err = nats.Connect(url, nats.UserCredentials(keys.hv01), nats.NoReconnect(), nats.Timeout(2*time.Second))
	require.Error(t, err)
	require.Contains(t, strings.ToLower(err.Error()), "authorization violation")
	again := startProc(t, "worker", filepath.Join(e.dir, "worker-again.log"), e.workerEnv("hv-01", jwtWorker(keys.hv01)...))
	permExits(t, again, 30*time.Second)
	require.Contains(t, again.output(), "the NATS server refused this program's credentials (host hv-01): nats: Authorization Violation")

	// hv-02 is not affected.
	e.startWorker("hv-02", jwtWorker(keys.hv02)...)
	id2 := e.submit(map[string]any{"image_url": img, "volume_name": "vm-jwt-2", "volume_size_gb": 1, "hypervisor": "hv-02"})
	e.waitStatus(id2, "completed")
	requireVolume(t, e.volumePath("hv-02", "vm-jwt-2"), ref, gib)

	// Enrolled again, hv-01 works with its new credentials only.
	old := keys.hv01
	renewed := filepath.Join(e.dir, "hv-01-new.creds")
	permRunTool(t, "enroll", "-dir", keys.dir, "-server", url, "-out", renewed, "hv-01")
	e.startWorker("hv-01", jwtWorker(renewed)...)
	id3 := e.submit(map[string]any{"image_url": img, "volume_name": "vm-jwt-3", "volume_size_gb": 1, "hypervisor": "hv-01"})
	e.waitStatus(id3, "completed")
	_, err = nats.Connect(url, nats.UserCredentials(old), nats.NoReconnect(), nats.Timeout(2*time.Second))
	require.Error(t, err, "the revoked credentials work again after re-enrolling")
}

// permExits waits for p to exit with an error within d.
func permExits(t *testing.T, p *proc, d time.Duration) {
	t.Helper()
	select {
	case <-p.done:
		require.Error(t, p.err, "exit status\n%s", p.output())
	case <-time.After(d):
		t.Fatalf("still running after %s:\n%s", d, tail(p.output(), 4000))
	}
}

// permRevoke revokes hv-02 by pushing to the first of urls while its
// workers are connected to every one of them: each is disconnected within
// seconds with "authentication revoked", and its credentials are refused
// on every server afterwards.
func permRevoke(t *testing.T, urls []string, keys permKeys) {
	type conn struct {
		url     string
		revoked chan error
	}
	var conns []conn
	for _, u := range urls {
		c := conn{url: u, revoked: make(chan error, 8)}
		opts, err := natsconn.Options(natsconn.Config{CredsFile: keys.hv02, Name: "revoke-" + u, InboxPrefix: natsconn.WorkerInboxPrefix("hv-02")})
		require.NoError(t, err)
		nc, err := nats.Connect(u, append(opts, nats.NoReconnect(), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			c.revoked <- err
		}))...)
		require.NoError(t, err)
		t.Cleanup(nc.Close)
		require.NoError(t, nc.Flush())
		conns = append(conns, c)
	}
	start := time.Now()
	out := permRunTool(t, "revoke", "-dir", keys.dir, "-server", urls[0], "hv-02")
	require.Contains(t, out, "host hv-02 revoked")
	deadline := time.After(10 * time.Second)
	for _, c := range conns {
		var seen []error
		for revoked := false; !revoked; {
			select {
			case err := <-c.revoked:
				// The server may first apply the account's change to the
				// connection ("maximum subscriptions exceeded"), then evict it.
				seen = append(seen, err)
				revoked = errors.Is(err, nats.ErrAuthRevoked)
			case <-deadline:
				t.Fatalf("hv-02's connection to %s was not revoked within 10s; errors: %v", c.url, seen)
			}
		}
	}
	t.Logf("revoked on %d servers within %s", len(urls), time.Since(start).Round(time.Millisecond))
	for _, u := range urls {
		_, err := nats.Connect(u, nats.UserCredentials(keys.hv02), nats.NoReconnect(), nats.Timeout(2*time.Second))
		require.Error(t, err, u)
		require.Contains(t, strings.ToLower(err.Error()), "authorization violation", u)
	}
}
