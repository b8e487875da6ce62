package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/libvirt-volume-provisioner/provisioner/client"
)

// withClient is a command's RunE that makes the API client from the
// settings and hands it to run.
func (a *app) withClient(run func(cmd *cobra.Command, args []string, c *client.Client) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, err := a.client()
		if err != nil {
			return err
		}
		return run(cmd, args, c)
	}
}

// eachArg asks the API about every argument in turn, stopping at the
// first error, and returns the answers in the order of args.
func eachArg[T any](ctx context.Context, args []string, ask func(ctx context.Context, arg string) (T, error)) ([]T, error) {
	out := make([]T, 0, len(args))
	for _, arg := range args {
		v, err := ask(ctx, arg)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// print writes v as indented JSON under -o json; otherwise text writes it
// for a person.
func (a *app) print(v any, text func() error) error {
	if a.output == "json" {
		return a.printJSON(v)
	}
	return text()
}

// printJSON writes v indented.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes rows under header in aligned columns.
func (a *app) table(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, row := range rows {
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

// pageNote tells, on stderr, that a page of a list (from offset, shown
// items of count) leaves some out.
func (a *app) pageNote(offset, shown, count int, what string) {
	if offset+shown < count {
		fmt.Fprintf(a.stderr, "%d of %d %s shown; see --offset and --limit\n", shown, count, what)
	}
}
