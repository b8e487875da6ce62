// Command provisionerctl drives the provisioner's REST API: submit and
// watch provisioning jobs with a live progress bar each, read and cancel
// jobs, manage hosts' image caches, list hosts and mint API tokens.
//
// Settings come from flags, then PROVISIONER_* environment variables (the
// flag's name upper-cased, dashes as underscores: --server is
// PROVISIONER_SERVER), then a JSON config file whose keys are the flag names
// (PROVISIONER_CONFIG, default ~/.config/provisionerctl/config.json).
//
// Exit codes: 0 success; 1 the job failed or was cancelled, or the API
// refused the request; 2 bad usage; 3 the API is unreachable; 4 the API
// refused the credentials (401) or the scope (403); 130 interrupted.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/libvirt-volume-provisioner/provisioner/client"
)

// Exit codes.
const (
	exitFailure     = 1
	exitUsage       = 2
	exitUnreachable = 3
	exitAuth        = 4
	exitInterrupted = 130
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line and returns its exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	app := &app{stdout: stdout, stderr: stderr}
	root := app.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	return report(cmd, err, stderr)
}

// usageError is bad input on the command line.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// exitError carries an exit code whose message was already printed.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

// report prints err once, without a stack trace, and picks the exit code.
func report(cmd *cobra.Command, err error, stderr io.Writer) int {
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		fmt.Fprintf(stderr, "provisionerctl: %v\n\n", err)
		if cmd != nil {
			fmt.Fprint(stderr, cmd.UsageString())
		}
		return exitUsage
	}
	var unreachable *client.UnreachableError
	var apiErr *client.APIError
	switch {
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(stderr, "provisionerctl: interrupted")
		return exitInterrupted
	case errors.As(err, &unreachable):
		fmt.Fprintf(stderr, "provisionerctl: cannot reach the API at %s: %v (check --server / PROVISIONER_SERVER)\n", unreachable.URL, rootCause(unreachable.Err))
		return exitUnreachable
	case errors.Is(err, client.ErrUnauthorized):
		fmt.Fprintf(stderr, "provisionerctl: the API refused the credentials (401): %s (set --token, or --token-key-id and --token-secret)\n", apiMessage(err))
		return exitAuth
	case errors.Is(err, client.ErrForbidden):
		fmt.Fprintf(stderr, "provisionerctl: the API refused the request (403 forbidden): %s\n", apiMessage(err))
		return exitAuth
	case errors.As(err, &apiErr):
		fmt.Fprintf(stderr, "provisionerctl: %s\n", apiErr.Error())
		return exitFailure
	}
	fmt.Fprintf(stderr, "provisionerctl: %v\n", err)
	return exitFailure
}

// isCobraUsage recognises cobra's own command-line errors, which are
// plain errors.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "required flag", "flag needs an argument",
		"invalid argument", "accepts ", "requires at least", "requires at most", "bad flag syntax", "if any flags in the group", "none of the others can be"} {
		if strings.HasPrefix(msg, p) || strings.Contains(msg, " "+p) {
			return true
		}
	}
	return false
}

func apiMessage(err error) string {
	var apiErr *client.APIError
	if errors.As(err, &apiErr) && apiErr.Body.Message != "" {
		return apiErr.Body.Message
	}
	return err.Error()
}

// rootCause is the innermost error, which names what failed (connection
// refused, no such host) without the layers of URL and operation.
func rootCause(err error) error {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err
		}
		err = next
	}
}
