// Command provisioner-nats manages the NATS credentials of a provisioner
// fleet with NATS decentralized (JWT) authentication: an operator
// directory, and one NATS account per hypervisor pushed to the servers'
// account resolver at run time.
//
//	provisioner-nats init   -dir DIR [-prefix provisioner]
//	provisioner-nats enroll -dir DIR -server URL [-out FILE | -out-dir DIR] HOST...
//	provisioner-nats revoke -dir DIR -server URL HOST...
//	provisioner-nats push   -dir DIR -server URL
//	provisioner-nats hosts  -dir DIR
//
// init makes the operator, the SYS and PROVISIONER accounts, the api,
// admin and sys credentials and server.conf (what nats-server includes).
// enroll gives each host its account, pushes them and PROVISIONER's updated
// import list to the resolver, and writes each worker's .creds; enrolling a
// host again rotates its credentials. revoke disables hosts' accounts at
// once: their workers are disconnected and cannot connect again. push sends
// every stored account JWT again (a resolver that lost its directory).
// deploy/nats/README.md describes the whole procedure.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/libvirt-volume-provisioner/provisioner/embedded"
	"github.com/libvirt-volume-provisioner/provisioner/natsauth"
	"github.com/libvirt-volume-provisioner/provisioner/natsconn"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "provisioner-nats:", err)
		os.Exit(1)
	}
}

const usage = `usage: provisioner-nats <command> [flags] [host...]

commands:
  init    make an operator directory (keys, accounts, api/admin/sys credentials, server.conf)
  enroll  give hosts their NATS accounts and write their workers' .creds
  revoke  revoke hosts: their workers are disconnected and refused
  push    push every account JWT of the directory to the servers again
  hosts   list the enrolled hosts

"provisioner-nats <command> -h" lists a command's flags.`

// run dispatches the subcommand in args[0].
func run(args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	cmds := map[string]func([]string, io.Writer) error{
		"init": runInit, "enroll": runEnroll, "revoke": runRevoke, "push": runPush, "hosts": runHosts,
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		return fmt.Errorf("unknown command %q\n%s", args[0], usage)
	}
	return cmd(args[1:], out)
}

// envOr is the environment variable name's value, or def.
func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// common are the flags every command that changes the servers takes.
type common struct {
	dir, server, creds, tlsCA *string
	timeout                   *time.Duration
}

func commonFlags(fs *flag.FlagSet, withServer bool) common {
	c := common{dir: fs.String("dir", envOr("PROVISIONER_NATS_OPERATOR_DIR", "/etc/provisioner/nats-operator"), "operator directory (PROVISIONER_NATS_OPERATOR_DIR)")}
	if withServer {
		c.server = fs.String("server", envOr("PROVISIONER_NATS_URL", nats.DefaultURL), "NATS server URL(s), comma-separated (PROVISIONER_NATS_URL)")
		c.creds = fs.String("creds", "", "system account credentials (default: <dir>/"+natsauth.SystemCredsFile+")")
		c.tlsCA = fs.String("tls-ca", envOr("PROVISIONER_NATS_TLS_CA", ""), "CA bundle (PEM) that verifies the NATS server (PROVISIONER_NATS_TLS_CA)")
		c.timeout = fs.Duration("timeout", 10*time.Second, "how long to wait for the servers")
	}
	return c
}

// parse parses args; hosts says whether host names follow the flags (at
// least one) or nothing may.
func parse(fs *flag.FlagSet, args []string, hosts bool) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case hosts && fs.NArg() == 0:
		return fmt.Errorf("%s: name at least one host", fs.Name())
	case !hosts && fs.NArg() > 0:
		return fmt.Errorf("%s: takes no arguments, got %q", fs.Name(), fs.Args())
	}
	return nil
}

// connect connects to the servers as the system account user.
func (c common) connect() (*nats.Conn, error) {
	creds := *c.creds
	if creds == "" {
		creds = filepath.Join(*c.dir, natsauth.SystemCredsFile)
	}
	nc, err := natsconn.Connect(natsconn.Config{URL: *c.server, CredsFile: creds, TLSCA: *c.tlsCA, Name: "provisioner-nats"},
		nats.Timeout(*c.timeout))
	if err != nil {
		return nil, fmt.Errorf("connect to NATS %s with %s: %w", *c.server, creds, err)
	}
	return nc, nil
}

func runInit(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	c := commonFlags(fs, false)
	prefix := fs.String("prefix", envOr("PROVISIONER_SUBJECT_PREFIX", ""), "subject prefix (PROVISIONER_SUBJECT_PREFIX; default provisioner)")
	if err := parse(fs, args, false); err != nil {
		return err
	}
	o, err := natsauth.Init(*c.dir, *prefix)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, `operator directory %[1]s made (keep it private: it holds the signing keys)
  %[2]s  for nats-server: include it from every node's configuration (deploy/nats)
  %[3]s  the API (PROVISIONER_NATS_CREDS)
  %[4]s  operators (nats --creds)
  %[5]s  this command's pushes to the resolver
system account %[6]s, %[7]s account %[8]s
next: start the servers, then "provisioner-nats enroll -dir %[1]s -server <url> <host>" for each hypervisor
`, o.Dir, filepath.Join(o.Dir, natsauth.ServerConfFile), filepath.Join(o.Dir, natsauth.APICredsFile),
		filepath.Join(o.Dir, natsauth.AdminCredsFile), filepath.Join(o.Dir, natsauth.SystemCredsFile),
		o.SystemAccount, embedded.MainAccount, o.MainAccount)
	return err
}

// change opens the directory, takes its lock, prepares a change of hosts
// with prepare, pushes it and commits it.
func change(c common, hosts []string, prepare func(*natsauth.Operator, ...string) (*natsauth.Change, error)) (*natsauth.Change, error) {
	o, err := natsauth.Open(*c.dir)
	if err != nil {
		return nil, err
	}
	unlock, err := o.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	ch, err := prepare(o, hosts...)
	if err != nil {
		return nil, err
	}
	nc, err := c.connect()
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *c.timeout+time.Duration(len(ch.JWTs))*10*time.Millisecond)
	defer cancel()
	if err := natsauth.Push(ctx, nc, ch.JWTs...); err != nil {
		return nil, err
	}
	if err := o.Commit(ch); err != nil {
		return nil, err
	}
	return ch, nil
}

func runEnroll(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("enroll", flag.ContinueOnError)
	c := commonFlags(fs, true)
	dst := fs.String("out", "", "where to write the worker's credentials, for one host (default: <out-dir>/<host>.creds)")
	dstDir := fs.String("out-dir", ".", "directory of the workers' credentials, <host>.creds each")
	if err := parse(fs, args, true); err != nil {
		return err
	}
	hosts := fs.Args()
	if *dst != "" && len(hosts) > 1 {
		return errors.New("enroll: -out names one file; use -out-dir for several hosts")
	}
	ch, err := change(c, hosts, (*natsauth.Operator).Enroll)
	if err != nil {
		return fmt.Errorf("enroll %s: %w", strings.Join(hosts, ", "), err)
	}
	for _, host := range hosts {
		path := *dst
		if path == "" {
			path = filepath.Join(*dstDir, host+".creds")
		}
		if err := writeCreds(path, ch.Creds[host]); err != nil {
			return fmt.Errorf("enroll %s: the account is pushed but the credentials could not be written (enroll it again): %w", host, err)
		}
		if _, err := fmt.Fprintf(out, "host %s enrolled; its worker's credentials are in %s (any earlier ones are revoked)\n", host, path); err != nil {
			return err
		}
	}
	_, err = fmt.Fprintf(out, `on each host: install its file as /etc/provisioner/nats-worker.creds (mode 0600) and set
  PROVISIONER_HOST=<host> PROVISIONER_NATS_CREDS=/etc/provisioner/nats-worker.creds PROVISIONER_NATS_JS_PREFIX=%s
`, embedded.HostAPIPrefix)
	return err
}

// writeCreds writes a credentials file readable by its owner only.
func writeCreds(path string, creds []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write(creds)
	return errors.Join(werr, f.Chmod(0o600), f.Sync(), f.Close())
}

func runRevoke(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("revoke", flag.ContinueOnError)
	c := commonFlags(fs, true)
	if err := parse(fs, args, true); err != nil {
		return err
	}
	hosts := fs.Args()
	if _, err := change(c, hosts, (*natsauth.Operator).Revoke); err != nil {
		return fmt.Errorf("revoke %s: %w", strings.Join(hosts, ", "), err)
	}
	for _, host := range hosts {
		if _, err := fmt.Fprintf(out, "host %s revoked: its worker is disconnected and its credentials are refused (enroll it again to issue new ones)\n", host); err != nil {
			return err
		}
	}
	return nil
}

func runPush(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("push", flag.ContinueOnError)
	c := commonFlags(fs, true)
	if err := parse(fs, args, false); err != nil {
		return err
	}
	o, err := natsauth.Open(*c.dir)
	if err != nil {
		return err
	}
	jwts, err := o.AccountJWTs()
	if err != nil {
		return err
	}
	nc, err := c.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *c.timeout+time.Duration(len(jwts))*time.Second)
	defer cancel()
	if err := natsauth.Push(ctx, nc, jwts...); err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "pushed %d account JWTs\n", len(jwts))
	return err
}

func runHosts(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("hosts", flag.ContinueOnError)
	c := commonFlags(fs, false)
	if err := parse(fs, args, false); err != nil {
		return err
	}
	o, err := natsauth.Open(*c.dir)
	if err != nil {
		return err
	}
	hosts, err := o.Hosts()
	if err != nil {
		return err
	}
	names := make([]string, 0, len(hosts))
	for h := range hosts {
		names = append(names, h)
	}
	sort.Strings(names)
	for _, h := range names {
		state := "enrolled"
		if hosts[h] {
			state = "revoked"
		}
		if _, err := fmt.Fprintf(out, "%s\t%s\n", h, state); err != nil {
			return err
		}
	}
	return nil
}
