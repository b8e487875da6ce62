package tests

// TestNATSPermissions runs real nats-server processes with the configuration
// in deploy/nats (single.conf, and the 3-node cluster in cluster/) and checks
// that a hypervisor's worker user can do its work and nothing that belongs
// to another hypervisor, and that the API user can set everything up.
//
// The nats-server processes are this test binary re-executed: init (below)
// sees permServerEnv and runs nats-server's own option parsing and server
// instead of the tests, exactly as the nats-server command does with -c.

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/embedded"
	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/natsauth"
	"github.com/libvirt-volume-provisioner/provisioner/natsconn"
)

// permServerEnv names the configuration file when this binary is to run as
// nats-server.
const permServerEnv = "PROVISIONER_TEST_RUN_NATS_SERVER"

func init() {
	if conf := os.Getenv(permServerEnv); conf != "" {
		os.Exit(permRunNATSServer(conf))
	}
}

// permRunNATSServer is nats-server's main with "-c conf".
func permRunNATSServer(conf string) int {
	fs := flag.NewFlagSet("nats-server", flag.ContinueOnError)
	opts, err := server.ConfigureOptions(fs, []string{"-c", conf}, server.PrintServerAndExit, fs.Usage, server.PrintTLSHelpAndDie)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nats-server:", err)
		return 1
	}
	s, err := server.NewServer(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nats-server:", err)
		return 1
	}
	s.ConfigureLogger()
	if err := server.Run(s); err != nil {
		fmt.Fprintln(os.Stderr, "nats-server:", err)
		return 1
	}
	s.WaitForShutdown()
	return 0
}

const (
	permJobA = "550e8400-e29b-41d4-a716-446655440000" // for hv-01
	permJobB = "6ba7b810-9dad-11d1-80b4-00c04fd430c8" // for hv-02
)

// permKeys are the credentials files of an operator directory that
// provisioner-nats init made (admin, api, sys) and of the hosts it
// enrolled.
type permKeys struct {
	dir                   string // the operator directory
	admin, api, sys       string
	hv01, hv02            string
	serverConf, configDir string
}

// permInitOperator runs provisioner-nats init in dir/operator and puts its
// server.conf where deploy/nats's configurations include it from
// (configDir/operator.conf, configDir being where permCopyConfig writes
// single.conf).
func permInitOperator(t *testing.T, dir string) permKeys {
	t.Helper()
	op := filepath.Join(dir, "operator")
	out := permRunTool(t, "init", "-dir", op)
	require.Contains(t, out, "operator directory "+op+" made")
	k := permKeys{dir: op, configDir: dir,
		admin: filepath.Join(op, natsauth.AdminCredsFile), api: filepath.Join(op, natsauth.APICredsFile),
		sys: filepath.Join(op, natsauth.SystemCredsFile), serverConf: filepath.Join(op, natsauth.ServerConfFile)}
	data, err := os.ReadFile(k.serverConf)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "operator.conf"), data, 0o600))
	return k
}

// permRunTool runs bin/provisioner-nats with args and returns its output;
// it must succeed.
func permRunTool(t *testing.T, args ...string) string {
	t.Helper()
	out, err := permTool(args...)
	require.NoError(t, err, "provisioner-nats %s: %s", strings.Join(args, " "), out)
	return out
}

// permTool runs bin/provisioner-nats with args.
func permTool(args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(binDir, "provisioner-nats"), args...).CombinedOutput()
	return string(out), err
}

// permEnrollBoth waits for JetStream at url, then enrolls hv-01 and hv-02.
func permEnrollBoth(t *testing.T, k *permKeys, url string) {
	t.Helper()
	_, adminJS, _ := permConnect(t, url, natsconn.Config{CredsFile: k.admin, Name: "admin-enroll"})
	require.Eventually(t, func() bool {
		_, err := adminJS.AccountInfo(permCtx(t, time.Second))
		return err == nil
	}, 30*time.Second, 200*time.Millisecond, "JetStream did not become available")
	// Both in one command: one push of PROVISIONER.
	out := permRunTool(t, "enroll", "-dir", k.dir, "-server", url, "-out-dir", k.configDir, "hv-01", "hv-02")
	for _, host := range []string{"hv-01", "hv-02"} {
		require.Contains(t, out, "host "+host+" enrolled")
		st, err := os.Stat(filepath.Join(k.configDir, host+".creds"))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	}
	k.hv01, k.hv02 = filepath.Join(k.configDir, "hv-01.creds"), filepath.Join(k.configDir, "hv-02.creds")
}

// permDeployDir is deploy/nats in the repository.
func permDeployDir(t *testing.T) string {
	dir, err := filepath.Abs(filepath.Join("..", "deploy", "nats"))
	require.NoError(t, err)
	return dir
}

// permCopyConfig writes deploy/nats/<name> to dir/<name>, replacing each
// old string of repl (which must occur) by its new one.
func permCopyConfig(t *testing.T, dir, name string, repl ...string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(permDeployDir(t), name))
	require.NoError(t, err)
	s := string(data)
	for i := 0; i < len(repl); i += 2 {
		require.Contains(t, s, repl[i], "%s no longer contains %q: update the test", name, repl[i])
		s = strings.ReplaceAll(s, repl[i], repl[i+1])
	}
	dst := filepath.Join(dir, name)
	require.NoError(t, os.MkdirAll(filepath.Dir(dst), 0o700))
	require.NoError(t, os.WriteFile(dst, []byte(s), 0o600))
	return dst
}

func permFreePort(t *testing.T) string {
	t.Helper()
	p, err := testenv.FreePort()
	require.NoError(t, err)
	return strconv.Itoa(p)
}

// permStartServer runs nats-server -c conf until the test ends.
func permStartServer(t *testing.T, conf string, env []string) {
	t.Helper()
	logPath := conf + ".log"
	logf, err := os.Create(logPath)
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), permServerEnv+"="+conf), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("%s:\n%s", filepath.Base(conf), tail(string(out), 4000))
		}
	})
}

// permErrs collects a connection's asynchronous errors.
type permErrs struct {
	mu   sync.Mutex
	list []string
}

func (e *permErrs) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	e.mu.Lock()
	e.list = append(e.list, err.Error())
	e.mu.Unlock()
}

// waitViolation waits for a "Permissions Violation" error naming subject;
// a "*" token in subject stands for any token (a random consumer name).
func (e *permErrs) waitViolation(t *testing.T, what, subject string) {
	t.Helper()
	tokens := strings.Split(subject, ".")
	for i, tok := range tokens {
		if tok == "*" {
			tokens[i] = `[^."]+`
		} else {
			tokens[i] = regexp.QuoteMeta(tok)
		}
	}
	want := regexp.MustCompile(`(?i)permissions violation for ` + what + ` to "` + strings.Join(tokens, `\.`) + `"`)
	require.Eventually(t, func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return slices.ContainsFunc(e.list, want.MatchString)
	}, 5*time.Second, 10*time.Millisecond, "expected an error matching %s; got %q", want, e.snapshot())
}

func (e *permErrs) snapshot() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.list)
}

// permJSPrefix is the JetStream API prefix of the workers in their host
// accounts (deploy/nats, natsauth).
const permJSPrefix = embedded.HostAPIPrefix

// permLocal is subject of the PROVISIONER account as a worker in its host
// account names it.
func permLocal(subject string) string {
	if permJSPrefix == "" {
		return subject
	}
	return embedded.LocalSubject(subject)
}

// permConnect connects as c with the JetStream API of the PROVISIONER
// account (the API, operators).
func permConnect(t *testing.T, url string, c natsconn.Config) (*nats.Conn, jetstream.JetStream, *permErrs) {
	t.Helper()
	return permConnectPrefix(t, url, c, "")
}

// permConnectWorker connects with creds as host's worker from its host
// account: its inbox prefix, the JetStream API under permJSPrefix.
func permConnectWorker(t *testing.T, url, creds, host string) (*nats.Conn, jetstream.JetStream, *permErrs) {
	t.Helper()
	c := natsconn.Config{CredsFile: creds, Name: "worker-" + host, InboxPrefix: natsconn.WorkerInboxPrefix(host)}
	return permConnectPrefix(t, url, c, permJSPrefix)
}

// permConnectPrefix connects as c with the JetStream API under apiPrefix
// ("" for none).
func permConnectPrefix(t *testing.T, url string, c natsconn.Config, apiPrefix string) (*nats.Conn, jetstream.JetStream, *permErrs) {
	t.Helper()
	opts, err := natsconn.Options(c)
	require.NoError(t, err)
	e := &permErrs{}
	var nc *nats.Conn
	require.Eventually(t, func() bool {
		nc, err = nats.Connect(url, append(opts, nats.ErrorHandler(e.handler), nats.Timeout(2*time.Second))...)
		return err == nil
	}, 20*time.Second, 100*time.Millisecond, "connect to %s: %v", url, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if apiPrefix != "" {
		js, err = jetstream.NewWithAPIPrefix(nc, apiPrefix)
	}
	require.NoError(t, err)
	return nc, js, e
}

func permCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestNATSPermissions(t *testing.T) {
	t.Parallel()

	t.Run("single", func(t *testing.T) {
		t.Parallel()
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
		url := "nats://127.0.0.1:" + port
		permEnrollBoth(t, &keys, url)
		permCheck(t, url, keys, 1)
		permRevoke(t, []string{url}, keys)
	})

	t.Run("cluster", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		keys := permInitOperator(t, dir)
		client := []string{permFreePort(t), permFreePort(t), permFreePort(t)}
		route := []string{permFreePort(t), permFreePort(t), permFreePort(t)}
		var urls []string
		for i := range 3 {
			n := strconv.Itoa(i + 1)
			var repl []string
			for j := range 3 {
				if j != i {
					repl = append(repl, "127.0.0.1:"+strconv.Itoa(6222+j), "127.0.0.1:"+route[j])
				}
			}
			repl = append(repl,
				"port: "+strconv.Itoa(4222+i), "port: "+client[i],
				"port: "+strconv.Itoa(6222+i), "port: "+route[i],
				`store_dir: "/var/lib/nats/node-`+n+`"`, `store_dir: "`+filepath.Join(dir, "node-"+n)+`"`,
				`dir: "/var/lib/nats/resolver-node-`+n+`"`, `dir: "`+filepath.Join(dir, "resolver-node-"+n)+`"`,
				"max_file_store: 8GB", "max_file_store: 2GB",
				"REPLACE_WITH_ROUTE_SECRET", "s3cret-route")
			conf := permCopyConfig(t, dir, "cluster/node-"+n+".conf", repl...)
			data, err := os.ReadFile(conf)
			require.NoError(t, err)
			settings := regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(string(data), "")
			require.NotRegexp(t, regexp.MustCompile(`\b(4222|4223|4224|6222|6223|6224)\b`), settings, "a default port was left in")
			permStartServer(t, conf, nil)
			urls = append(urls, "nats://127.0.0.1:"+client[i])
		}
		url := strings.Join(urls, ",")
		permEnrollBoth(t, &keys, url)
		permCheck(t, url, keys, 3)
		permRevoke(t, urls, keys)
	})

	// The host accounts provisioner-nats enroll pushes are exactly
	// embedded.HostAccount: its imports from PROVISIONER, its control
	// export, and the worker signing key scoped to its permissions; and
	// PROVISIONER imports its control subjects.
	t.Run("accounts are embedded.HostAccount", func(t *testing.T) {
		t.Parallel()
		permAccountsMatch(t)
	})
}

// permCheck runs the permission checks against the servers at url.
func permCheck(t *testing.T, url string, keys permKeys, replicas int) {
	s := messaging.NewSubjects("")

	// Wait for JetStream (on a cluster: a meta leader).
	_, adminJS, _ := permConnect(t, url, natsconn.Config{CredsFile: keys.admin, Name: "admin"})
	require.Eventually(t, func() bool {
		_, err := adminJS.AccountInfo(permCtx(t, time.Second))
		return err == nil
	}, 30*time.Second, 200*time.Millisecond, "JetStream did not become available")

	// No anonymous access.
	_, err := nats.Connect(url, nats.Timeout(2*time.Second), nats.NoReconnect())
	require.Error(t, err)
	require.Contains(t, strings.ToLower(err.Error()), "authorization violation")

	// The API sets everything up and publishes jobs for both hosts.
	apiNC, apiJS, _ := permConnect(t, url, natsconn.Config{CredsFile: keys.api, Name: "api"})
	ctx := permCtx(t, 45*time.Second)
	limits := messaging.DefaultLimits()
	limits.Replicas = replicas
	require.Eventually(t, func() bool {
		return messaging.Setup(permCtx(t, 10*time.Second), apiJS, s, limits) == nil
	}, 20*time.Second, 500*time.Millisecond)
	info, err := apiJS.Stream(ctx, messaging.JobStream)
	require.NoError(t, err)
	require.Equal(t, replicas, info.CachedInfo().Config.Replicas)
	events, err := apiNC.SubscribeSync(s.AllEvents())
	require.NoError(t, err)
	require.NoError(t, apiNC.Flush())
	for host, id := range map[string]string{"hv-01": permJobA, "hv-02": permJobB} {
		_, err := apiJS.Publish(ctx, s.Job(host, id), []byte(`{"job_id":"`+id+`"}`), jetstream.WithMsgID(id))
		require.NoError(t, err)
	}
	apiB, err := messaging.BindBuckets(ctx, apiJS)
	require.NoError(t, err)
	m := messaging.Job{JobID: permJobB, ImageURL: "http://minio:9000/b/o.qcow2", VolumeName: "v", VolumeSizeGB: 1}
	m.Normalize()
	_, err = kvstate.Jobs{KV: apiB.Jobs}.Create(ctx, kvstate.NewJob(m, "hv-02", time.Now().UTC()))
	require.NoError(t, err)

	// hv-02's worker takes its job and holds it un-acked.
	nc2, js2, _ := permConnectWorker(t, url, keys.hv02, "hv-02")
	// The API creates each host's consumer (the API.ServeWorkers request);
	// the worker only binds it.
	_, err = apiJS.CreateOrUpdateConsumer(ctx, messaging.JobStream, messaging.ConsumerConfig(s, "hv-02", time.Minute, 5))
	require.NoError(t, err)
	cons2, err := js2.Consumer(ctx, messaging.JobStream, messaging.ConsumerName("hv-02"))
	require.NoError(t, err)
	msgB := permNext(t, cons2)
	require.Equal(t, s.Job("hv-02", permJobB), msgB.Subject())
	ackB := msgB.Reply()
	require.True(t, strings.HasPrefix(ackB, "$JS.ACK.PROVISIONER_JOBS.worker-hv-02."), ackB)

	// hv-01's worker does its work.
	host := "hv-01"
	nc1, js1, errs1 := permConnectWorker(t, url, keys.hv01, host)
	b, err := messaging.BindBuckets(ctx, js1)
	require.NoError(t, err)
	_, err = kvstate.Hosts{KV: b.Hosts}.Claim(ctx, kvstate.Host{Name: host, MachineID: "m1", LastSeen: time.Now().UTC(), Heartbeat: time.Second})
	require.NoError(t, err)
	_, err = apiJS.CreateOrUpdateConsumer(ctx, messaging.JobStream, messaging.ConsumerConfig(s, host, time.Minute, 5))
	require.NoError(t, err)
	cons1, err := js1.Consumer(ctx, messaging.JobStream, messaging.ConsumerName(host))
	require.NoError(t, err)
	_, err = cons1.Info(ctx)
	require.NoError(t, err)
	msgA := permNext(t, cons1)
	require.Equal(t, s.Job(host, permJobA), msgA.Subject())
	require.NoError(t, msgA.InProgress())
	jobs := kvstate.Jobs{KV: b.Jobs}
	mA := messaging.Job{JobID: permJobA, ImageURL: "http://minio:9000/b/o.qcow2", VolumeName: "v", VolumeSizeGB: 1}
	mA.Normalize()
	_, err = jobs.Create(ctx, kvstate.NewJob(mA, host, time.Now().UTC()))
	require.NoError(t, err)
	_, _, err = jobs.Update(ctx, host, permJobA, func(j *kvstate.Job) error { j.Status = kvstate.StatusRunning; return nil })
	require.NoError(t, err)
	// A worker reads its records by direct get (cancellation), never by a watch.
	got, _, err := jobs.Get(ctx, host, permJobA)
	require.NoError(t, err)
	require.Equal(t, kvstate.StatusRunning, got.Status)
	lease, err := kvstate.Leases{KV: b.Volumes}.Acquire(ctx, host, "v", permJobA, time.Minute)
	require.NoError(t, err)
	require.NoError(t, lease.Renew(ctx, time.Minute))
	require.NoError(t, lease.Release(ctx))
	cache := kvstate.CacheIndex{KV: b.Cache}
	require.NoError(t, cache.Put(ctx, host, kvstate.CacheEntry{Key: strings.Repeat("a", 64), Path: "/x"}))
	entry, err := cache.Get(ctx, host, strings.Repeat("a", 64))
	require.NoError(t, err)
	require.Equal(t, "/x", entry.Path)
	require.NoError(t, nc1.Publish(s.Event(host, permJobA), []byte(`{"status":"completed"}`)))
	ev, err := events.NextMsg(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, s.Event(host, permJobA), ev.Subject)
	require.NoError(t, msgA.DoubleAck(ctx))

	// The API sees what the worker wrote.
	rec, _, err := kvstate.Jobs{KV: apiB.Jobs}.Get(ctx, host, permJobA)
	require.NoError(t, err)
	require.Equal(t, kvstate.StatusRunning, rec.Status)

	// What hv-01's worker may not do. Each refused request times out; the
	// server reports the violation asynchronously.
	short := func() context.Context { return permCtx(t, time.Second) }
	var wg sync.WaitGroup
	var refused [][2]string
	denied := func(what, subject string, f func() error) {
		refused = append(refused, [2]string{what, subject})
		wg.Go(func() { assert.Error(t, f(), subject) })
	}
	other := messaging.ConsumerConfig(s, "hv-02", time.Minute, 5)
	denied("publish", permLocal("$JS.API.CONSUMER.CREATE.PROVISIONER_JOBS.worker-hv-02.provisioner.jobs.hv-02.>"), func() error {
		_, err := js1.CreateOrUpdateConsumer(short(), messaging.JobStream, other)
		return err
	})
	// Its own consumer name with hv-02's filter.
	sneaky := messaging.ConsumerConfig(s, host, time.Minute, 5)
	sneaky.FilterSubject = s.JobsFilter("hv-02")
	denied("publish", permLocal("$JS.API.CONSUMER.CREATE.PROVISIONER_JOBS.worker-hv-01.provisioner.jobs.hv-02.>"), func() error {
		_, err := js1.CreateOrUpdateConsumer(short(), messaging.JobStream, sneaky)
		return err
	})
	denied("publish", permLocal("$JS.API.CONSUMER.INFO.PROVISIONER_JOBS.worker-hv-02"), func() error {
		_, err := js1.Consumer(short(), messaging.JobStream, "worker-hv-02")
		return err
	})
	next2 := permLocal("$JS.API.CONSUMER.MSG.NEXT.PROVISIONER_JOBS.worker-hv-02")
	denied("publish", next2, func() error {
		_, err := nc1.Request(next2, []byte(`{"batch":1,"expires":500000000}`), time.Second)
		return err
	})
	denied("publish", permLocal("$JS.API.STREAM.CREATE.EVIL"), func() error {
		_, err := js1.CreateStream(short(), jetstream.StreamConfig{Name: "EVIL", Subjects: []string{"evil.>"}})
		return err
	})
	denied("publish", permLocal("$JS.API.STREAM.INFO."+messaging.JobStream), func() error {
		_, err := js1.Stream(short(), messaging.JobStream)
		return err
	})
	denied("publish", permLocal("$JS.API.STREAM.PURGE."+messaging.JobStream), func() error {
		_, err := nc1.Request(permLocal("$JS.API.STREAM.PURGE."+messaging.JobStream), []byte(`{}`), time.Second)
		return err
	})
	denied("publish", permLocal("$KV.provisioner_jobs.hv-02.x"), func() error {
		_, err := b.Jobs.Put(short(), "hv-02.x", []byte(`{}`))
		return err
	})
	denied("publish", permLocal("$JS.API.DIRECT.GET.KV_provisioner_jobs.$KV.provisioner_jobs.hv-02."+permJobB), func() error {
		_, err := b.Jobs.Get(short(), "hv-02."+permJobB)
		return err
	})
	denied("publish", permLocal("$KV.provisioner_hosts.hv-02"), func() error {
		_, err := b.Hosts.Put(short(), "hv-02", []byte(`{}`))
		return err
	})
	denied("publish", permLocal("$JS.API.CONSUMER.CREATE.KV_provisioner_jobs.*.$KV.provisioner_jobs.hv-02."+permJobB), func() error {
		// A watch of hv-02's record: the consumer name is random, so match
		// the violation by what follows it.
		_, err := b.Jobs.Watch(short(), "hv-02."+permJobB)
		return err
	})
	denied("publish", s.Job(host, permJobB), func() error {
		_, err := js1.Publish(short(), s.Job(host, permJobB), []byte(`{}`))
		return err
	})
	wg.Wait()
	for _, r := range refused {
		errs1.waitViolation(t, r[0], r[1])
	}

	// Plain publishes and subscriptions are refused asynchronously.
	require.NoError(t, nc1.Publish(ackB, []byte("+ACK")))
	errs1.waitViolation(t, "publish", ackB)
	require.NoError(t, nc1.Publish(s.Event("hv-02", permJobB), []byte(`{}`)))
	errs1.waitViolation(t, "publish", s.Event("hv-02", permJobB))
	for _, subj := range []string{s.AllJobs(), s.AllEvents(), "_INBOX.>", "_INBOX_worker.hv-02.>", "$KV.>"} {
		_, err := nc1.SubscribeSync(subj)
		require.NoError(t, err)
		errs1.waitViolation(t, "subscription", subj)
	}

	permRequestsAcrossAccounts(t, apiNC, nc1)
	permWorkerBinds(t, nc1)
	permNoDeliveryToOtherHosts(t, url, keys, nc1, errs1, adminJS)
	permNoReplyInjection(t, permInjection{url: url, keys: keys, nc1: nc1, nc2: nc2, worker1: b, api: apiB, apiJS: apiJS})
	permContent(t, apiJS, js1, js2, nc1, errs1, replicas)

	// hv-02's job is still its own, un-acked; it can ack it.
	ci, err := cons2.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, ci.NumAckPending)
	require.NoError(t, msgB.DoubleAck(ctx))
	// And nobody else touched hv-02's record.
	recB, _, err := kvstate.Jobs{KV: apiB.Jobs}.Get(ctx, "hv-02", permJobB)
	require.NoError(t, err)
	require.Equal(t, kvstate.StatusPending, recB.Status)
}

// permNext fetches the next message, retrying while a new consumer's leader
// is still being elected on a cluster ("no responders").
func permNext(t *testing.T, cons jetstream.Consumer) jetstream.Msg {
	t.Helper()
	var msg jetstream.Msg
	var last error
	require.Eventually(t, func() bool {
		m, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			last = err
			return false
		}
		msg = m
		return true
	}, 20*time.Second, 100*time.Millisecond, "fetch: %v", last)
	return msg
}
