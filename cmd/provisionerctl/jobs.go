package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/libvirt-volume-provisioner/provisioner/client"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

func (a *app) submitCommand() *cobra.Command {
	var (
		image, imageType, correlation, idemKey string
		volumes                                []string
		size                                   int64
		wait                                   bool
		ci                                     cloudInitFlags
	)
	cmd := &cobra.Command{
		Use:   "submit --image URL --volume NAME --size GIB [--user-data FILE] [--wait]",
		Short: "Provision volumes from an image (one job per --volume)",
		Example: `  provisionerctl submit --image http://127.0.0.1:9000/images/demo/go-src-ext4.qcow2 --volume vm-1-root --size 2 --wait
  provisionerctl submit --image http://minio:9000/images/base.qcow2 --volume web-1 --volume web-2 --size 20 --hypervisor hv-1 -o json
  provisionerctl submit --image $IMG --volume vm-1-root --size 2 --user-data user-data.yaml --wait   # and vm-1-root-seed
  provisionerctl submit --volume vm-1-root --user-data user-data.yaml                               # only the seed`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cloudInit, err := ci.load()
			if err != nil {
				return err
			}
			seedOnly := cloudInit != nil && image == "" && size == 0
			var missing []string
			if image == "" && !seedOnly {
				missing = append(missing, "--image")
			}
			if len(volumes) == 0 {
				missing = append(missing, "--volume")
			}
			if size == 0 && !seedOnly {
				missing = append(missing, "--size")
			}
			if len(missing) > 0 {
				return usagef("missing %s", strings.Join(missing, ", "))
			}
			if idemKey != "" && len(volumes) > 1 {
				return usagef("--idempotency-key names one submission: give one --volume with it")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			var jobs []tracked
			for _, v := range volumes {
				var opts []client.SubmitOption
				if idemKey != "" {
					opts = append(opts, client.WithIdempotencyKey(idemKey))
				}
				req := rest.JobRequest{ImageURL: image, VolumeName: v, ImageType: imageType,
					CorrelationID: correlation, Hypervisor: a.hypervisor, CloudInit: cloudInit}
				if !seedOnly {
					req.VolumeSizeGB = &size
				}
				sub, err := c.Submit(cmd.Context(), req, opts...)
				if err != nil {
					return fmt.Errorf("submit volume %s: %w", v, err)
				}
				jobs = append(jobs, tracked{jobID: sub.JobID, label: v})
			}
			return a.accepted(cmd.Context(), c, jobs, wait)
		},
	}
	f := cmd.Flags()
	f.StringVar(&image, "image", "", "image URL: http(s)://<endpoint>/<bucket>/<object> (required)")
	f.StringSliceVar(&volumes, "volume", nil, "volume name; repeat (or comma-separate) for several volumes (required)")
	f.Int64Var(&size, "size", 0, "volume size in GiB (required)")
	f.StringVar(&imageType, "type", "", "image type: qcow2 (the API's default) or raw")
	f.StringVar(&correlation, "correlation-id", "", "your reference, kept on the job")
	f.StringVar(&idemKey, "idempotency-key", "", "Idempotency-Key: repeating the command with it returns the same job (default: a new key, kept across retries)")
	f.BoolVar(&wait, "wait", false, "follow the jobs until they end (a live bar each on a terminal); exit 1 if one fails")
	ci.register(f)
	return cmd
}

// accepted prints submitted jobs, or follows them with wait.
func (a *app) accepted(ctx context.Context, c *client.Client, jobs []tracked, wait bool) error {
	if !wait {
		if a.output == "json" {
			out := make([]rest.Accepted, len(jobs))
			for i, j := range jobs {
				out[i] = rest.Accepted{JobID: j.jobID}
			}
			return a.printJSON(out)
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "JOB_ID\tFOR")
		for _, j := range jobs {
			fmt.Fprintf(tw, "%s\t%s\n", j.jobID, j.label)
		}
		return tw.Flush()
	}
	return a.followJobs(ctx, c, jobs)
}

// followJobs shows the jobs' progress on stderr until they end, then
// prints the final records (-o json) and picks the exit code.
func (a *app) followJobs(ctx context.Context, c *client.Client, jobs []tracked) error {
	finals, err := follow(ctx, c, a.stderr, jobs)
	if errors.Is(err, context.Canceled) || errors.Is(ctx.Err(), context.Canceled) {
		ids := make([]string, len(jobs))
		for i, j := range jobs {
			ids[i] = j.jobID
		}
		fmt.Fprintf(a.stderr, "stopped watching; the job keeps running. Watch it again with:\n  provisionerctl watch %s\n", strings.Join(ids, " "))
		return exitError{exitInterrupted}
	}
	var done []rest.Job
	for _, j := range finals {
		if j.JobID != "" {
			done = append(done, j)
		}
	}
	if a.output == "json" {
		if perr := a.printJSON(done); perr != nil {
			return perr
		}
	} else if len(done) > 0 {
		if perr := a.jobTable(done); perr != nil {
			return perr
		}
	}
	var je *client.JobError
	if errors.As(err, &je) {
		for _, e := range flatten(err) {
			if errors.As(e, &je) {
				fmt.Fprintf(a.stderr, "provisionerctl: %v\n", je)
			} else {
				fmt.Fprintf(a.stderr, "provisionerctl: %v\n", e)
			}
		}
		return exitError{exitFailure}
	}
	return err
}

// flatten lists the errors errors.Join put together.
func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func (a *app) watchCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "watch JOB_ID...",
		Short: "Follow jobs until they end (a live bar each on a terminal); exit 1 if one fails",
		Args:  minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			jobs := make([]tracked, len(args))
			for i, id := range args {
				j, err := c.Get(cmd.Context(), id)
				if err != nil {
					return err
				}
				jobs[i] = tracked{jobID: j.JobID, label: jobLabel(j)}
			}
			return a.followJobs(cmd.Context(), c, jobs)
		},
	}
}

// jobLabel names a job for a person: its volume, or the host whose cache
// it fills.
func jobLabel(j rest.Job) string {
	if j.VolumeName != "" {
		return j.VolumeName
	}
	return "cache@" + j.Hypervisor
}

func (a *app) getCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "get JOB_ID...",
		Short: "Show jobs' records",
		Args:  minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			var jobs []rest.Job
			for _, id := range args {
				j, err := c.Get(cmd.Context(), id)
				if err != nil {
					return err
				}
				jobs = append(jobs, j)
			}
			if a.output == "json" {
				if len(jobs) == 1 {
					return a.printJSON(jobs[0])
				}
				return a.printJSON(jobs)
			}
			return a.jobTable(jobs)
		},
	}
}

func (a *app) jobTable(jobs []rest.Job) error {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB_ID\tHYPERVISOR\tVOLUME\tSTATUS\tSTAGE\tPERCENT\tUPDATED\tERROR")
	for _, j := range jobs {
		stage, pct := "", ""
		if j.Progress != nil {
			stage, pct = j.Progress.Stage, fmt.Sprintf("%d%%", j.Progress.Percent)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.JobID, j.Hypervisor, j.VolumeName, j.Status, stage, pct,
			j.UpdatedAt.Local().Format(time.DateTime), j.Error)
	}
	return tw.Flush()
}

func (a *app) cancelCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "cancel JOB_ID...",
		Short: "Cancel pending or running jobs",
		Args:  minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			var out []rest.Cancelled
			for _, id := range args {
				r, err := c.Cancel(cmd.Context(), id)
				if err != nil {
					return err
				}
				out = append(out, r)
			}
			if a.output == "json" {
				return a.printJSON(out)
			}
			for _, r := range out {
				fmt.Fprintf(a.stdout, "%s %s\n", r.JobID, r.Status)
			}
			return nil
		},
	}
}

// noArgs, minArgs and exactArgs are cobra's argument checks as usage errors.
func noArgs(cmd *cobra.Command, args []string) error { return asUsage(cobra.NoArgs(cmd, args)) }

func minArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error { return asUsage(cobra.MinimumNArgs(n)(cmd, args)) }
}

func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error { return asUsage(cobra.ExactArgs(n)(cmd, args)) }
}

func asUsage(err error) error {
	if err == nil {
		return nil
	}
	return usageError{err}
}

func (a *app) jobsCommand() *cobra.Command {
	var (
		statuses      []string
		offset, limit int
	)
	cmd := &cobra.Command{
		Use:     "jobs [--status running,pending] [--hypervisor HOST]",
		Short:   "List jobs, newest first",
		Example: "  provisionerctl jobs --status failed --hypervisor hv-1 --limit 20",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			q := client.JobQuery{Hypervisor: a.hypervisor, Offset: offset, Limit: limit}
			for _, s := range trimmed(statuses) {
				q.Statuses = append(q.Statuses, rest.Status(s))
			}
			list, err := c.ListJobs(cmd.Context(), q)
			if err != nil {
				return err
			}
			if a.output == "json" {
				return a.printJSON(list)
			}
			if err := a.jobTable(list.Jobs); err != nil {
				return err
			}
			if list.Offset+len(list.Jobs) < list.Count {
				fmt.Fprintf(a.stderr, "%d of %d jobs shown; see --offset and --limit\n", len(list.Jobs), list.Count)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&statuses, "status", nil, "only jobs in these states: pending, running, completed, failed, cancelled")
	f.IntVar(&offset, "offset", 0, "skip this many jobs")
	f.IntVar(&limit, "limit", 0, "at most this many jobs (the API's default: 100)")
	return cmd
}
