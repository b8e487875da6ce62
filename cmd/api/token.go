package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/auth"
	"github.com/libvirt-volume-provisioner/provisioner/config"
)

// tokenCommand implements "api token create" and "api token secret".
func tokenCommand(args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: api token create --key-id ID --ttl 24h [--subject NAME] [--hypervisors a,b] [--volumes REGEX] [--buckets a,b/prefix] | api token secret --key-id ID")
	}
	switch args[0] {
	case "secret":
		fs := flag.NewFlagSet("token secret", flag.ContinueOnError)
		kid := fs.String("key-id", "", "key id of the new secret")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *kid == "" {
			return errors.New("--key-id is required")
		}
		_, err := fmt.Fprintf(out, "%s:%s\n", *kid, auth.NewSecret())
		return err
	case "create":
		c := config.New("api token create")
		sec := securityFlags(c)
		fs := flag.NewFlagSet("token create", flag.ContinueOnError)
		kid := fs.String("key-id", "", "key id whose secret signs the token")
		ttl := fs.Duration("ttl", 24*time.Hour, "how long the token is valid")
		subject := fs.String("subject", "", "who the token is for (recorded as the caller)")
		hyps := fs.String("hypervisors", "", "comma-separated hypervisors the token may use (empty: all)")
		vols := fs.String("volumes", "", "regular expression volume names must match (empty: all)")
		buckets := fs.String("buckets", "", "comma-separated image buckets (or bucket/prefix) the token may use images from (empty: all)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if err := c.Parse(nil); err != nil {
			return err
		}
		keys, err := sec.keys()
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			return errors.New("no token secrets: set PROVISIONER_TOKEN_SECRETS_FILE (or PROVISIONER_TOKEN_SECRETS)")
		}
		if *kid == "" || *ttl <= 0 {
			return errors.New("--key-id and a positive --ttl are required")
		}
		if *subject == "" {
			*subject = *kid
		}
		claims := auth.Claims{KeyID: *kid, Subject: *subject, Expires: time.Now().Add(*ttl).Unix(), Volumes: *vols}
		for _, h := range strings.Split(*hyps, ",") {
			if h = strings.TrimSpace(h); h != "" {
				claims.Hypervisors = append(claims.Hypervisors, h)
			}
		}
		for _, b := range strings.Split(*buckets, ",") {
			if b = strings.TrimSpace(b); b != "" {
				claims.Buckets = append(claims.Buckets, b)
			}
		}
		token, err := keys.Mint(claims)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(out, token)
		return err
	}
	return fmt.Errorf("unknown token command %q (create, secret)", args[0])
}
