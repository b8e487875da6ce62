package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	if wait {
		return a.followJobs(ctx, c, jobs)
	}
	out := make([]rest.Accepted, len(jobs))
	rows := make([][]string, len(jobs))
	for i, j := range jobs {
		out[i] = rest.Accepted{JobID: j.jobID}
		rows[i] = []string{j.jobID, j.label}
	}
	return a.print(out, func() error { return a.table([]string{"JOB_ID", "FOR"}, rows) })
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
	perr := a.print(done, func() error {
		if len(done) == 0 {
			return nil
		}
		return a.jobTable(done)
	})
	if perr != nil {
		return perr
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
		RunE: a.withClient(func(cmd *cobra.Command, args []string, c *client.Client) error {
			jobs, err := eachArg(cmd.Context(), args, func(ctx context.Context, id string) (tracked, error) {
				j, err := c.Get(ctx, id)
				return tracked{jobID: j.JobID, label: jobLabel(j)}, err
			})
			if err != nil {
				return err
			}
			return a.followJobs(cmd.Context(), c, jobs)
		}),
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
		RunE: a.withClient(func(cmd *cobra.Command, args []string, c *client.Client) error {
			jobs, err := eachArg(cmd.Context(), args, c.Get)
			if err != nil {
				return err
			}
			var v any = jobs
			if len(jobs) == 1 {
				v = jobs[0]
			}
			return a.print(v, func() error { return a.jobTable(jobs) })
		}),
	}
}

func (a *app) jobTable(jobs []rest.Job) error {
	rows := make([][]string, len(jobs))
	for i, j := range jobs {
		stage, pct := "", ""
		if j.Progress != nil {
			stage, pct = j.Progress.Stage, fmt.Sprintf("%d%%", j.Progress.Percent)
		}
		rows[i] = []string{j.JobID, j.Hypervisor, j.VolumeName, string(j.Status), stage, pct, j.UpdatedAt.Local().Format(time.DateTime), j.Error}
	}
	return a.table([]string{"JOB_ID", "HYPERVISOR", "VOLUME", "STATUS", "STAGE", "PERCENT", "UPDATED", "ERROR"}, rows)
}

func (a *app) cancelCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "cancel JOB_ID...",
		Short: "Cancel pending or running jobs",
		Args:  minArgs(1),
		RunE: a.withClient(func(cmd *cobra.Command, args []string, c *client.Client) error {
			out, err := eachArg(cmd.Context(), args, c.Cancel)
			if err != nil {
				return err
			}
			return a.print(out, func() error {
				for _, r := range out {
					fmt.Fprintf(a.stdout, "%s %s\n", r.JobID, r.Status)
				}
				return nil
			})
		}),
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
		RunE: a.withClient(func(cmd *cobra.Command, _ []string, c *client.Client) error {
			q := client.JobQuery{Hypervisor: a.hypervisor, Offset: offset, Limit: limit}
			for _, s := range trimmed(statuses) {
				q.Statuses = append(q.Statuses, rest.Status(s))
			}
			list, err := c.ListJobs(cmd.Context(), q)
			if err != nil {
				return err
			}
			return a.print(list, func() error {
				if err := a.jobTable(list.Jobs); err != nil {
					return err
				}
				a.pageNote(list.Offset, len(list.Jobs), list.Count, "jobs")
				return nil
			})
		}),
	}
	f := cmd.Flags()
	f.StringSliceVar(&statuses, "status", nil, "only jobs in these states: pending, running, completed, failed, cancelled")
	f.IntVar(&offset, "offset", 0, "skip this many jobs")
	f.IntVar(&limit, "limit", 0, "at most this many jobs (the API's default: 100)")
	return cmd
}
