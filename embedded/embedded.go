// Package embedded runs the single-machine default: an in-process
// nats-server with JetStream, listening on loopback so local workers and the
// nats CLI can connect.
//
// The server accepts no anonymous clients. On its first start it generates
// three nkey user seeds in <DataDir>/credentials (directory 0700, files
// 0600) and reuses them on every later start:
//
//   - api.nk: full access; the API connects with it in-process.
//   - worker.nk: for the workers on this machine; may do what a worker does
//     (WorkerPermissions, for any host) and nothing else: it cannot create or
//     delete streams, publish jobs or read the API's replies.
//   - admin.nk: full access, for operators ("nats --nkey <DataDir>/credentials/admin.nk").
//
// Other local users, who cannot read these files, cannot connect, so they
// cannot publish jobs or read job records.
package embedded

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// Options configure the embedded server.
type Options struct {
	// Listen is host:port for clients.
	Listen string
	// DataDir holds JetStream's storage (in DataDir/nats) and the generated
	// credentials (in DataDir/credentials).
	DataDir string
	// MaxMemory and MaxStore are JetStream's explicit limits in bytes.
	MaxMemory int64
	MaxStore  int64
	// Prefix is the subject prefix (PROVISIONER_SUBJECT_PREFIX) the worker
	// key's permissions are written for; empty means messaging.DefaultPrefix.
	Prefix string
}

// Credentials are the paths of the generated nkey seed files.
type Credentials struct {
	// Dir is <DataDir>/credentials.
	Dir string
	// API is the API's key (full access).
	API string
	// Worker is the key of the workers on this machine (worker permissions,
	// any host). A worker using it must set the inbox prefix
	// natsconn.WorkerInboxPrefix(host).
	Worker string
	// Admin is the operators' key (full access), for the nats CLI.
	Admin string
}

// Server is the running embedded server (every *server.Server method, such
// as ClientURL, Shutdown and WaitForShutdown, is promoted) and the paths of
// its credentials.
type Server struct {
	*server.Server
	Credentials Credentials
}

// Names of the seed files in the credentials directory.
const (
	APIKeyFile    = "api.nk"
	WorkerKeyFile = "worker.nk"
	AdminKeyFile  = "admin.nk"
)

// Start starts the server and waits until it accepts clients. The caller
// owns signals (the server installs no handlers) and calls Shutdown.
func Start(o Options) (*Server, error) {
	host, portStr, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS listen address %q: %w", o.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS listen port %q: %w", portStr, err)
	}
	creds, err := EnsureCredentials(filepath.Join(o.DataDir, "credentials"))
	if err != nil {
		return nil, err
	}
	users, err := nkeyUsers(creds, o.Prefix)
	if err != nil {
		return nil, err
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
		Nkeys:              users,
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
	return &Server{Server: ns, Credentials: creds}, nil
}

// nkeyUsers lists the server's users: the API and the admin with full
// access, the worker key with the worker permissions for any host.
func nkeyUsers(c Credentials, prefix string) ([]*server.NkeyUser, error) {
	var users []*server.NkeyUser
	for _, k := range []struct {
		path  string
		perms *server.Permissions
	}{{c.API, nil}, {c.Admin, nil}, {c.Worker, WorkerPermissions(prefix, "*")}} {
		pub, err := publicKey(k.path)
		if err != nil {
			return nil, err
		}
		users = append(users, &server.NkeyUser{Nkey: pub, Permissions: k.perms})
	}
	return users, nil
}

// EnsureCredentials makes dir (0700) and the three seed files (0600) in it,
// generating the seeds that do not exist yet and keeping those that do. It
// tightens the modes of an existing directory and files that are looser,
// and refuses files that do not hold an nkey user seed.
func EnsureCredentials(dir string) (Credentials, error) {
	c := Credentials{Dir: dir, API: filepath.Join(dir, APIKeyFile), Worker: filepath.Join(dir, WorkerKeyFile), Admin: filepath.Join(dir, AdminKeyFile)}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return c, fmt.Errorf("embedded NATS credentials directory %s: %w", dir, err)
	}
	if err := tighten(dir, 0o700); err != nil {
		return c, err
	}
	for _, path := range []string{c.API, c.Worker, c.Admin} {
		if err := ensureSeed(path); err != nil {
			return c, err
		}
	}
	return c, nil
}

// tighten removes permission bits beyond want from path.
func tighten(path string, want fs.FileMode) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("embedded NATS credentials %s: %w", path, err)
	}
	if st.Mode().Perm()&^want != 0 {
		if err := os.Chmod(path, st.Mode().Perm()&want); err != nil {
			return fmt.Errorf("embedded NATS credentials %s: restrict mode to %o: %w", path, want, err)
		}
	}
	return nil
}

// ensureSeed keeps a valid seed file at path or writes a new one.
func ensureSeed(path string) error {
	if _, err := publicKey(path); err == nil {
		return tighten(path, 0o600)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		return fmt.Errorf("generate nkey for %s: %w", path, err)
	}
	defer kp.Wipe()
	seed, err := kp.Seed()
	if err != nil {
		return fmt.Errorf("generate nkey for %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write nkey %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write nkey %s: %w", path, err)
	}
	_, werr := tmp.Write(append(seed, '\n'))
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return fmt.Errorf("write nkey %s: %w", path, err)
	}
	// Link rather than rename: a seed another process wrote meanwhile wins.
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("write nkey %s: %w", path, err)
	}
	_, err = publicKey(path)
	return err
}

// publicKey reads the user seed in path and returns its public key.
func publicKey(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("embedded NATS nkey %s: %w", path, err)
	}
	kp, err := nkeys.ParseDecoratedNKey(data)
	for i := range data {
		data[i] = 0
	}
	if err != nil {
		return "", fmt.Errorf("embedded NATS nkey %s: not an nkey seed: %w", path, err)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return "", fmt.Errorf("embedded NATS nkey %s: %w", path, err)
	}
	if !nkeys.IsValidPublicUserKey(pub) {
		return "", fmt.Errorf("embedded NATS nkey %s: not a user seed (want one starting with SU)", path)
	}
	return pub, nil
}

// WorkerPermissions are the NATS permissions of host's worker with subject
// prefix prefix (empty: messaging.DefaultPrefix) when it shares the
// PROVISIONER account: its own consumer (which the API creates for it),
// jobs, acks, events, KV keys and API requests, and nothing else. It may
// create no consumer at all, so none can deliver to a subject of its
// choosing. host "*" allows any one host (the embedded server's shared
// worker key).
//
// A worker must use the inbox prefix natsconn.WorkerInboxPrefix(host): it
// may subscribe only there. In a shared account a worker can still name
// another host's subjects as the reply subject of its own JetStream
// requests; deploy/nats therefore puts each host in an account of its own
// (HostAccount).
func WorkerPermissions(prefix, host string) *server.Permissions {
	return workerPermissions(prefix, host, workerPublishes(prefix, host))
}

// workerPermissions are a worker's permissions with publish allow list pub.
func workerPermissions(prefix, host string, pub []string) *server.Permissions {
	if prefix == "" {
		prefix = messaging.DefaultPrefix
	}
	inbox := "_INBOX_worker." + host + ".>"
	if host == "*" {
		inbox = "_INBOX_worker.>"
	}
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: pub, Deny: sharedKeyDeny(host)},
		// Replies (JetStream API, publish acks, pulled jobs, the API's
		// answers) arrive on its own inbox only; control requests (cache
		// delete) and cancel hints on its own control subjects.
		Subscribe: &server.SubjectPermission{Allow: []string{inbox, prefix + ".control." + host + ".>"}},
		// It may answer the control requests it receives, once each.
		Response: &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
	}
}

// workerPublishes are the subjects of the PROVISIONER account host's worker
// publishes on (see WorkerPermissions).
func workerPublishes(prefix, host string) []string {
	if prefix == "" {
		prefix = messaging.DefaultPrefix
	}
	consumer := messaging.ConsumerName(host)
	if host == "*" {
		consumer = "*"
	}
	jobs := messaging.JobStream
	pub := []string{
		// Ask the API to create or update its consumer and to list its cache
		// index. A worker creates no consumer itself: a consumer's creator
		// picks its deliver subject, and nats-server does not check it.
		prefix + ".api.hosts." + host + ".>",
		// Consumer info (binding, queue depth for health) and pull requests.
		"$JS.API.CONSUMER.INFO." + jobs + "." + consumer,
		"$JS.API.CONSUMER.MSG.NEXT." + jobs + "." + consumer,
		// Ack, nak, in-progress and term of its own deliveries.
		"$JS.ACK." + jobs + "." + consumer + ".>",
		// Progress events of its own jobs.
		prefix + ".events." + host + ".>",
		// JetStream account info.
		"$JS.API.INFO",
		// Host registry: only its own entry.
		"$JS.API.STREAM.INFO.KV_" + messaging.HostBucket,
		"$KV." + messaging.HostBucket + "." + host,
		"$JS.API.DIRECT.GET.KV_" + messaging.HostBucket + ".$KV." + messaging.HostBucket + "." + host,
	}
	pub = append(pub, ContentReads(host)...)
	for _, b := range []string{messaging.JobBucket, messaging.CacheBucket, messaging.VolumeBucket} {
		pub = append(pub,
			// Bind the bucket.
			"$JS.API.STREAM.INFO.KV_"+b,
			// Put, create, update, delete its own keys.
			"$KV."+b+"."+host+".>",
			// Read its own keys (the buckets allow direct gets).
			"$JS.API.DIRECT.GET.KV_"+b+".$KV."+b+"."+host+".>",
		)
	}
	return pub
}

// ContentReads let host's worker read its own content bucket (an Object
// Store, one per host: messaging.ContentBucket) by direct gets alone: the
// object's metadata by subject, its chunks by sequence. Reading an Object
// Store the usual way needs a consumer, which a worker may not create. The
// stream's name is the only place an Object Store's subjects carry the
// host, so a bucket per host is what confines the reads. It may not write,
// delete or purge: the API removes an upload when its job ends.
func ContentReads(host string) []string {
	stream := messaging.ContentStream(host)
	if host == "*" {
		// Stream names are one token: the shared key of the embedded
		// server (valid for every host anyway) reads any stream's info
		// and direct gets, except those sharedKeyDeny names.
		stream = "*"
	}
	return []string{
		"$JS.API.STREAM.INFO." + stream,
		"$JS.API.DIRECT.GET." + stream,
		"$JS.API.DIRECT.GET." + stream + ".>",
	}
}

// sharedKeyDeny keeps the embedded server's shared worker key (host "*")
// away from the streams contentReads' wildcards would open to it beyond
// what it had: the job stream, the event stream and the API's idempotency
// bucket.
func sharedKeyDeny(host string) []string {
	if host != "*" {
		return nil
	}
	var deny []string
	for _, s := range []string{messaging.JobStream, messaging.EventStream, "KV_" + messaging.IdempotencyBucket} {
		deny = append(deny, "$JS.API.STREAM.INFO."+s, "$JS.API.DIRECT.GET."+s, "$JS.API.DIRECT.GET."+s+".>")
	}
	return deny
}
