// Package config maps command-line flags and environment variables one to
// one: every setting has a flag, an environment variable and a default, and a
// flag given on the command line wins over the environment.
package config

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Set is a set of settings bound to a flag set.
type Set struct {
	fs      *flag.FlagSet
	errs    []error
	envs    []string
	secrets map[string]secret
}

// secret is a setting whose value never appears in usage text.
type secret struct {
	dst *string
	env string
}

// New returns an empty set named after the program.
func New(program string) *Set {
	fs := flag.NewFlagSet(program, flag.ContinueOnError)
	s := &Set{fs: fs}
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage of %s (every flag can also be set by the environment variable shown):\n", program)
		fs.PrintDefaults()
	}
	return s
}

func flagName(env string) string {
	n := strings.TrimPrefix(env, "PROVISIONER_")
	return strings.ReplaceAll(strings.ToLower(n), "_", "-")
}

func (s *Set) env(env string) (string, bool) {
	s.envs = append(s.envs, env)
	return os.LookupEnv(env)
}

// String binds a string setting.
func (s *Set) String(env, def, usage string) *string {
	if v, ok := s.env(env); ok {
		def = v
	}
	return s.fs.String(flagName(env), def, usage+" ($"+env+")")
}

// Secret binds a string setting whose value is secret: usage text and flag
// errors never show the environment's value.
func (s *Set) Secret(env, usage string) *string {
	v, _ := s.env(env)
	dst := s.fs.String(flagName(env), "", usage+" ($"+env+"; the value is never printed)")
	if s.secrets == nil {
		s.secrets = map[string]secret{}
	}
	s.secrets[flagName(env)] = secret{dst: dst, env: v}
	return dst
}

// Int binds an integer setting.
func (s *Set) Int(env string, def int, usage string) *int {
	if v, ok := s.env(env); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			s.errs = append(s.errs, fmt.Errorf("%s=%q is not an integer", env, v))
		} else {
			def = n
		}
	}
	return s.fs.Int(flagName(env), def, usage+" ($"+env+")")
}

// Int64 binds a 64-bit integer setting.
func (s *Set) Int64(env string, def int64, usage string) *int64 {
	if v, ok := s.env(env); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			s.errs = append(s.errs, fmt.Errorf("%s=%q is not an integer", env, v))
		} else {
			def = n
		}
	}
	return s.fs.Int64(flagName(env), def, usage+" ($"+env+")")
}

// Bool binds a boolean setting.
func (s *Set) Bool(env string, def bool, usage string) *bool {
	if v, ok := s.env(env); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			s.errs = append(s.errs, fmt.Errorf("%s=%q is not a boolean", env, v))
		} else {
			def = b
		}
	}
	return s.fs.Bool(flagName(env), def, usage+" ($"+env+")")
}

// Duration binds a duration setting (Go syntax: 90s, 2m, 1h30m).
func (s *Set) Duration(env string, def time.Duration, usage string) *time.Duration {
	if v, ok := s.env(env); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			s.errs = append(s.errs, fmt.Errorf("%s=%q is not a duration (e.g. 90s, 2m)", env, v))
		} else {
			def = d
		}
	}
	return s.fs.Duration(flagName(env), def, usage+" ($"+env+")")
}

// Parse parses args; it reports bad environment values and bad flags.
func (s *Set) Parse(args []string) error {
	if len(s.errs) > 0 {
		return s.errs[0]
	}
	if err := s.fs.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	s.fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for name, sec := range s.secrets {
		if !given[name] {
			*sec.dst = sec.env
		}
	}
	return nil
}
