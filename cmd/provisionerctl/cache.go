package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/libvirt-volume-provisioner/provisioner/auth"
	"github.com/libvirt-volume-provisioner/provisioner/client"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

func (a *app) cacheCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "cache", Short: "List, fill and empty hosts' image caches", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return usagef("cache needs a command: ls, fetch or rm") }}
	cmd.AddCommand(a.cacheLsCommand(), a.cacheFetchCommand(), a.cacheRmCommand())
	return cmd
}

func (a *app) cacheLsCommand() *cobra.Command {
	var offset, limit int
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the images cached on a host (--hypervisor)",
		Args:  noArgs,
		RunE: a.withClient(func(cmd *cobra.Command, _ []string, c *client.Client) error {
			list, err := c.ListImages(cmd.Context(), client.CacheQuery{Hypervisor: a.hypervisor, Offset: offset, Limit: limit})
			if err != nil {
				return err
			}
			return a.print(list, func() error {
				rows := make([][]string, len(list.Images))
				for i, im := range list.Images {
					rows[i] = []string{im.Checksum, bytesText(im.Size), im.Path}
				}
				if err := a.table([]string{"CHECKSUM", "SIZE", "PATH"}, rows); err != nil {
					return err
				}
				a.pageNote(list.Offset, len(list.Images), list.Count, "images")
				return nil
			})
		}),
	}
	cmd.Flags().IntVar(&offset, "offset", 0, "skip this many images")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many images (the API's default: 100)")
	return cmd
}

func (a *app) cacheFetchCommand() *cobra.Command {
	var (
		image, correlation string
		hosts              []string
		wait               bool
	)
	cmd := &cobra.Command{
		Use:     "fetch --image URL [--hosts h1,h2] [--wait]",
		Short:   "Download an image into the caches of one or several hosts at once",
		Example: `  provisionerctl cache fetch --image http://minio:9000/images/base.qcow2 --hosts hv-1,hv-2,hv-3 --wait`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if image == "" {
				return usagef("missing --image")
			}
			if len(hosts) == 0 {
				hosts = []string{a.hypervisor} // empty: the API's default
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			var jobs []tracked
			for _, h := range hosts {
				sub, err := c.FetchImage(cmd.Context(), rest.FetchRequest{ImageURL: image, Hypervisor: h, CorrelationID: correlation})
				if err != nil {
					return fmt.Errorf("fetch on %s: %w", hostName(h), err)
				}
				jobs = append(jobs, tracked{jobID: sub.JobID, label: "cache@" + hostName(h)})
			}
			return a.accepted(cmd.Context(), c, jobs, wait)
		},
	}
	f := cmd.Flags()
	f.StringVar(&image, "image", "", "image URL (required)")
	f.StringSliceVar(&hosts, "hosts", nil, "hosts whose caches get the image, comma-separated (default: --hypervisor)")
	f.StringVar(&correlation, "correlation-id", "", "your reference, kept on the jobs")
	f.BoolVar(&wait, "wait", false, "follow the fetches until they end (a bar each on a terminal)")
	return cmd
}

func hostName(h string) string {
	if h == "" {
		return "default host"
	}
	return h
}

func (a *app) cacheRmCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "rm CHECKSUM",
		Short: "Remove an image from a host's cache (--hypervisor) by its checksum or cache key",
		Args:  exactArgs(1),
		RunE: a.withClient(func(cmd *cobra.Command, args []string, c *client.Client) error {
			out, err := c.DeleteImage(cmd.Context(), a.hypervisor, args[0])
			if err != nil {
				return err
			}
			return a.print(out, func() error {
				_, err := fmt.Fprintf(a.stdout, "%s %s from %s\n", out.Status, out.Checksum, out.Hypervisor)
				return err
			})
		}),
	}
}

func (a *app) hostsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "hosts",
		Short: "List the hypervisors and whether their workers are alive",
		Args:  noArgs,
		RunE: a.withClient(func(cmd *cobra.Command, _ []string, c *client.Client) error {
			hosts, err := c.Hosts(cmd.Context())
			if err != nil {
				return err
			}
			return a.print(hosts, func() error {
				rows := make([][]string, len(hosts))
				for i, h := range hosts {
					state := "stale"
					if h.Alive {
						state = "alive"
					}
					rows[i] = []string{h.Name, state, fmt.Sprintf("%s ago", time.Since(h.LastSeen).Round(time.Second)), fmt.Sprint(h.ActiveJobs), h.Version}
				}
				return a.table([]string{"HOST", "STATE", "LAST_SEEN", "ACTIVE_JOBS", "VERSION"}, rows)
			})
		}),
	}
}

// tokenCommand mints a token as "api token create" does, from the same
// secrets (PROVISIONER_TOKEN_SECRETS_FILE or PROVISIONER_TOKEN_SECRETS).
func (a *app) tokenCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Mint API tokens", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return usagef("token needs a command: create") }}
	var (
		kid, subject, vols, secretsFile string
		hyps, buckets                   []string
		ttl                             time.Duration
	)
	create := &cobra.Command{
		Use:   "create --key-id ID [--ttl 24h] [--subject NAME] [--hypervisors a,b] [--volumes REGEX] [--buckets a,b/prefix]",
		Short: "Mint an API token (as `api token create`) from the secrets in PROVISIONER_TOKEN_SECRETS_FILE or PROVISIONER_TOKEN_SECRETS",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if kid == "" {
				return usagef("missing --key-id")
			}
			if ttl <= 0 {
				return usagef("--ttl must be positive")
			}
			keys, err := tokenKeys(secretsFile)
			if err != nil {
				return err
			}
			if subject == "" {
				subject = kid
			}
			claims := auth.Claims{KeyID: kid, Subject: subject, Expires: time.Now().Add(ttl).Unix(), Volumes: vols, Hypervisors: trimmed(hyps), Buckets: trimmed(buckets)}
			tok, err := keys.Mint(claims)
			if err != nil {
				return err
			}
			return a.print(map[string]any{"token": tok, "expires": time.Unix(claims.Expires, 0).UTC()}, func() error {
				_, err := fmt.Fprintln(a.stdout, tok)
				return err
			})
		},
	}
	f := create.Flags()
	f.StringVar(&kid, "key-id", "", "key id whose secret signs the token (required)")
	f.DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token is valid")
	f.StringVar(&subject, "subject", "", "who the token is for, recorded as the caller (default: the key id)")
	f.StringSliceVar(&hyps, "hypervisors", nil, "hypervisors the token may use (empty: all)")
	f.StringVar(&vols, "volumes", "", "regular expression volume names must match (empty: all)")
	f.StringSliceVar(&buckets, "buckets", nil, "image buckets (or bucket/prefix) the token may use images from (empty: all)")
	f.StringVar(&secretsFile, "secrets-file", "", "file of token secrets, one <kid>:<base64> a line, mode 0600 (default: $PROVISIONER_TOKEN_SECRETS_FILE)")
	cmd.AddCommand(create)
	return cmd
}

// tokenKeys reads the signing secrets as the API does.
func tokenKeys(file string) (auth.Keys, error) {
	if file == "" {
		file = getenv("PROVISIONER_TOKEN_SECRETS_FILE")
	}
	inline := getenv("PROVISIONER_TOKEN_SECRETS")
	switch {
	case file != "" && inline != "":
		return nil, errors.New("set PROVISIONER_TOKEN_SECRETS or PROVISIONER_TOKEN_SECRETS_FILE, not both")
	case file != "":
		return auth.LoadKeys(file)
	case inline != "":
		return auth.ParseKeys(inline)
	}
	return nil, errors.New("no token secrets: set PROVISIONER_TOKEN_SECRETS_FILE (or PROVISIONER_TOKEN_SECRETS), or give --secrets-file")
}

func trimmed(in []string) []string {
	var out []string
	for _, s := range in {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
