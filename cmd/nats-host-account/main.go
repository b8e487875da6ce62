// Command nats-host-account prints the nats-server configuration that adds
// one hypervisor's worker to deploy/nats/accounts.conf: the worker's own
// account (its nkey user, the services it imports from the PROVISIONER
// account, its control subjects exported back) and the import line the
// PROVISIONER account needs for it.
//
//	go run ./cmd/nats-host-account [-prefix provisioner] <host>
//
// deploy/nats/README.md ("Add a hypervisor") says where each part goes.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/libvirt-volume-provisioner/provisioner/embedded"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "nats-host-account:", err)
		os.Exit(2)
	}
}

// run parses args (flags, then the host) and writes the configuration to out.
func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("nats-host-account", flag.ContinueOnError)
	prefix := fs.String("prefix", messaging.DefaultPrefix, "subject prefix (PROVISIONER_SUBJECT_PREFIX)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("want exactly one host name, got %d arguments", fs.NArg())
	}
	host := fs.Arg(0)
	if !messaging.ValidHost(host) {
		return fmt.Errorf("host name %q is not a valid host token (lower-case letters, digits, dashes)", host)
	}
	a := embedded.NewHostAccount(*prefix, host)
	_, err := fmt.Fprintf(out, `# 1. In accounts.conf, add this line to the imports list of %[1]s:
%[2]s
# 2. Add this account inside accounts { … }:
%[3]s
# 3. Put %[4]s=<worker public nkey> in nats-server's environment, reload
#    every node, and run the worker with PROVISIONER_NATS_JS_PREFIX=%[5]s
`, embedded.MainAccount, a.MainImport(), a.Config(), embedded.NKeyVariable(host), embedded.HostAPIPrefix)
	return err
}
