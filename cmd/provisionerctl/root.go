package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/libvirt-volume-provisioner/provisioner/client"
	"github.com/libvirt-volume-provisioner/provisioner/internal/version"
)

// app is one run of the command: its settings and outputs.
type app struct {
	stdout, stderr io.Writer
	server         string
	token          string
	tokenKeyID     string
	tokenSecret    string
	caCert         string
	cert, certKey  string
	hypervisor     string
	output         string
	configPath     string
}

// envPrefix starts the environment variable of every global flag.
const envPrefix = "PROVISIONER_"

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "provisionerctl",
		Short: "Provision VM volumes through the provisioner's REST API",
		Long: `provisionerctl drives the provisioner's REST API.

Settings come from flags, then PROVISIONER_* environment variables (--server is
PROVISIONER_SERVER, --token-key-id is PROVISIONER_TOKEN_KEY_ID), then a JSON config file
whose keys are the flag names ({"server": "https://…", "token": "pvt1.…"}).

Exit codes: 0 success; 1 the job failed or was cancelled, or the API refused the
request; 2 bad usage; 3 the API is unreachable; 4 401 or 403; 130 interrupted.`,
		Version:           version.Version,
		SilenceErrors:     true,
		SilenceUsage:      true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return a.resolve(cmd) },
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.server, "server", client.DefaultBaseURL, "the API's base URL")
	pf.StringVar(&a.token, "token", "", "API token (X-API-Token)")
	pf.StringVar(&a.tokenKeyID, "token-key-id", "", "key id of --token-secret (mint a short-lived token for each request)")
	pf.StringVar(&a.tokenSecret, "token-secret", "", "token secret (base64, as in PROVISIONER_TOKEN_SECRETS) to mint tokens with")
	pf.StringVar(&a.caCert, "cacert", "", "CA bundle (PEM) that verifies the API's certificate")
	pf.StringVar(&a.cert, "cert", "", "client certificate (PEM) for mutual TLS")
	pf.StringVar(&a.certKey, "cert-key", "", "private key (PEM) of --cert")
	pf.StringVar(&a.hypervisor, "hypervisor", "", "hypervisor (host) to use (empty: the API's default)")
	pf.StringVarP(&a.output, "output", "o", "table", "output format: table or json")
	pf.StringVar(&a.configPath, "config", defaultConfigPath(), "JSON config file of flag values")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(a.submitCommand(), a.uploadCommand(), a.getCommand(), a.watchCommand(), a.cancelCommand(), a.jobsCommand(), a.cacheCommand(), a.hostsCommand(), a.tokenCommand())
	return root
}

func defaultConfigPath() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "provisionerctl", "config.json")
}

// envName is the environment variable of a flag.
func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// resolve fills the global flags not given on the command line from the
// environment, then the config file, and checks the output format.
// Commands' own flags come from the command line only.
func (a *app) resolve(cmd *cobra.Command) error {
	flags := cmd.Flags()
	if f := flags.Lookup("config"); f != nil && !f.Changed {
		if v, ok := os.LookupEnv(envName("config")); ok {
			_ = f.Value.Set(v)
		}
	}
	file, err := readConfig(a.configPath, flags.Lookup("config").Changed || os.Getenv(envName("config")) != "")
	if err != nil {
		return err
	}
	var errs []error
	global := cmd.Root().PersistentFlags()
	flags.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "config" || global.Lookup(f.Name) == nil {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, usagef("%s=%q: %v", envName(f.Name), v, err))
			}
			return
		}
		if v, ok := file[f.Name]; ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, usagef("config file %s: %s=%q: %v", a.configPath, f.Name, v, err))
			}
		}
	})
	if len(errs) > 0 {
		return errs[0]
	}
	if a.output != "table" && a.output != "json" {
		return usagef("--output must be table or json, not %q", a.output)
	}
	return nil
}

// readConfig reads the config file; a missing file is an error only when
// it was named explicitly.
func readConfig(path string, named bool) (map[string]string, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && !named {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	raw := map[string]any{}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	out := map[string]string{}
	for k, v := range raw {
		out[k] = fmt.Sprint(v)
	}
	return out, nil
}

// client makes the API client from the settings.
func (a *app) client() (*client.Client, error) {
	opts := []client.Option{client.WithBaseURL(a.server), client.WithUserAgent("provisionerctl/" + version.Version)}
	switch {
	case a.token != "" && a.tokenSecret != "":
		return nil, usagef("--token and --token-secret: give one")
	case a.token != "":
		opts = append(opts, client.WithToken(a.token))
	case a.tokenSecret != "" || a.tokenKeyID != "":
		if a.tokenSecret == "" || a.tokenKeyID == "" {
			return nil, usagef("--token-secret and --token-key-id go together")
		}
		opts = append(opts, client.WithTokenSecret(a.tokenKeyID, a.tokenSecret, ""))
	}
	tc, err := a.tlsConfig()
	if err != nil {
		return nil, err
	}
	if tc != nil {
		opts = append(opts, client.WithTLSConfig(tc))
	}
	c, err := client.New(opts...)
	if err != nil {
		return nil, usageError{err}
	}
	return c, nil
}

func (a *app) tlsConfig() (*tls.Config, error) {
	if a.caCert == "" && a.cert == "" && a.certKey == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if a.caCert != "" {
		pem, err := os.ReadFile(a.caCert)
		if err != nil {
			return nil, fmt.Errorf("--cacert: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--cacert %s holds no PEM certificate", a.caCert)
		}
	}
	if a.cert != "" || a.certKey != "" {
		if a.cert == "" || a.certKey == "" {
			return nil, usagef("--cert and --cert-key go together")
		}
		pair, err := tls.LoadX509KeyPair(a.cert, a.certKey)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

func getenv(name string) string { return os.Getenv(name) }
