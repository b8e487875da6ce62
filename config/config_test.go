package config

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Tests that call t.Setenv must not call t.Parallel: the testing package
// panics if a parallel test changes the process environment. Every variable
// used here is unique to its test, so parallel tests never see them.

// newSet returns a set whose usage and flag errors are not printed.
func newSet() *Set {
	s := New("test")
	s.fs.SetOutput(io.Discard)
	return s
}

func TestFlagName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env  string
		want string
	}{
		{"PROVISIONER_HTTP_ADDR", "http-addr"},
		{"PROVISIONER_NATS_URL", "nats-url"},
		{"MINIO_ENDPOINT", "minio-endpoint"},
		{"MINIO_ACCESS_KEY", "minio-access-key"},
		{"PROVISIONER_X", "x"},
		{"OTEL_PROVISIONER_X", "otel-provisioner-x"},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, flagName(tt.env))
		})
	}
}

func TestFlagsAreBoundUnderDerivedNames(t *testing.T) {
	t.Parallel()
	s := newSet()
	addr := s.String("PROVISIONER_TEST_BIND_HTTP_ADDR", ":8080", "listen address")
	ep := s.String("TEST_BIND_MINIO_ENDPOINT", "minio:9000", "MinIO endpoint")
	require.NoError(t, s.Parse([]string{"-test-bind-http-addr", ":9090", "-test-bind-minio-endpoint", "other:9000"}))
	require.Equal(t, ":9090", *addr)
	require.Equal(t, "other:9000", *ep)

	f := s.fs.Lookup("test-bind-http-addr")
	require.NotNil(t, f)
	require.Equal(t, "listen address ($PROVISIONER_TEST_BIND_HTTP_ADDR)", f.Usage)
	require.Equal(t, ":8080", f.DefValue)
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	s := newSet()
	str := s.String("PROVISIONER_TEST_DEF_S", "def", "")
	n := s.Int("PROVISIONER_TEST_DEF_I", 7, "")
	n64 := s.Int64("PROVISIONER_TEST_DEF_I64", 1<<40, "")
	b := s.Bool("PROVISIONER_TEST_DEF_B", true, "")
	d := s.Duration("PROVISIONER_TEST_DEF_D", 90*time.Second, "")
	require.NoError(t, s.Parse(nil))
	require.Equal(t, "def", *str)
	require.Equal(t, 7, *n)
	require.Equal(t, int64(1<<40), *n64)
	require.True(t, *b)
	require.Equal(t, 90*time.Second, *d)
}

// No t.Parallel: uses t.Setenv.
func TestFromEnvironment(t *testing.T) {
	t.Setenv("PROVISIONER_TEST_ENV_S", "from-env")
	t.Setenv("PROVISIONER_TEST_ENV_I", "42")
	t.Setenv("PROVISIONER_TEST_ENV_I64", "-9000000000")
	t.Setenv("PROVISIONER_TEST_ENV_B", "false")
	t.Setenv("PROVISIONER_TEST_ENV_D", "1h30m")

	s := newSet()
	str := s.String("PROVISIONER_TEST_ENV_S", "def", "")
	n := s.Int("PROVISIONER_TEST_ENV_I", 7, "")
	n64 := s.Int64("PROVISIONER_TEST_ENV_I64", 1, "")
	b := s.Bool("PROVISIONER_TEST_ENV_B", true, "")
	d := s.Duration("PROVISIONER_TEST_ENV_D", time.Second, "")
	require.NoError(t, s.Parse(nil))
	require.Equal(t, "from-env", *str)
	require.Equal(t, 42, *n)
	require.Equal(t, int64(-9000000000), *n64)
	require.False(t, *b)
	require.Equal(t, 90*time.Minute, *d)

	// The environment value becomes the flag's shown default.
	require.Equal(t, "from-env", s.fs.Lookup("test-env-s").DefValue)
}

// No t.Parallel: uses t.Setenv.
func TestEmptyEnvironmentValue(t *testing.T) {
	t.Setenv("PROVISIONER_TEST_EMPTY_S", "")
	t.Setenv("PROVISIONER_TEST_EMPTY_I", "")

	s := newSet()
	str := s.String("PROVISIONER_TEST_EMPTY_S", "def", "")
	s.Int("PROVISIONER_TEST_EMPTY_I", 7, "")
	// A variable that is set but empty counts as set.
	require.Equal(t, "", *str)
	require.EqualError(t, s.Parse(nil), `PROVISIONER_TEST_EMPTY_I="" is not an integer`)
}

// No t.Parallel: uses t.Setenv.
func TestFlagOverridesEnvironment(t *testing.T) {
	t.Setenv("PROVISIONER_TEST_OVR_S", "from-env")
	t.Setenv("PROVISIONER_TEST_OVR_I", "42")
	t.Setenv("PROVISIONER_TEST_OVR_I64", "42")
	t.Setenv("PROVISIONER_TEST_OVR_B", "false")
	t.Setenv("PROVISIONER_TEST_OVR_D", "1m")

	s := newSet()
	str := s.String("PROVISIONER_TEST_OVR_S", "def", "")
	n := s.Int("PROVISIONER_TEST_OVR_I", 7, "")
	n64 := s.Int64("PROVISIONER_TEST_OVR_I64", 1, "")
	b := s.Bool("PROVISIONER_TEST_OVR_B", false, "")
	d := s.Duration("PROVISIONER_TEST_OVR_D", time.Second, "")
	require.NoError(t, s.Parse([]string{
		"-test-ovr-s", "from-flag", "-test-ovr-i=5", "-test-ovr-i64", "6", "-test-ovr-b", "-test-ovr-d", "2m",
	}))
	require.Equal(t, "from-flag", *str)
	require.Equal(t, 5, *n)
	require.Equal(t, int64(6), *n64)
	require.True(t, *b)
	require.Equal(t, 2*time.Minute, *d)
}

// No t.Parallel: uses t.Setenv.
func TestBadEnvironmentValues(t *testing.T) {
	tests := []struct {
		name string
		env  string
		val  string
		bind func(*Set, string)
		want string
	}{
		{"int", "PROVISIONER_TEST_BAD_X", "abc", func(s *Set, e string) { s.Int(e, 1, "") }, `PROVISIONER_TEST_BAD_X="abc" is not an integer`},
		{"int float", "PROVISIONER_TEST_BAD_F", "1.5", func(s *Set, e string) { s.Int(e, 1, "") }, `PROVISIONER_TEST_BAD_F="1.5" is not an integer`},
		{"int64", "PROVISIONER_TEST_BAD_Y", "12GB", func(s *Set, e string) { s.Int64(e, 1, "") }, `PROVISIONER_TEST_BAD_Y="12GB" is not an integer`},
		{"int64 overflow", "PROVISIONER_TEST_BAD_O", "9223372036854775808", func(s *Set, e string) { s.Int64(e, 1, "") }, `PROVISIONER_TEST_BAD_O="9223372036854775808" is not an integer`},
		{"bool", "PROVISIONER_TEST_BAD_B", "yes", func(s *Set, e string) { s.Bool(e, false, "") }, `PROVISIONER_TEST_BAD_B="yes" is not a boolean`},
		{"duration without unit", "PROVISIONER_TEST_BAD_D", "90", func(s *Set, e string) { s.Duration(e, 0, "") }, `PROVISIONER_TEST_BAD_D="90" is not a duration (e.g. 90s, 2m)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(tt.env, tt.val)
			s := newSet()
			tt.bind(s, tt.env)
			require.EqualError(t, s.Parse(nil), tt.want)
		})
	}
}

// No t.Parallel: uses t.Setenv.
func TestBadEnvironmentKeepsDefault(t *testing.T) {
	t.Setenv("PROVISIONER_TEST_KEEP_I", "abc")
	s := newSet()
	n := s.Int("PROVISIONER_TEST_KEEP_I", 3, "")
	require.Equal(t, 3, *n)
	require.Equal(t, "3", s.fs.Lookup("test-keep-i").DefValue)
}

// No t.Parallel: uses t.Setenv.
func TestFirstBadEnvironmentValueReported(t *testing.T) {
	t.Setenv("PROVISIONER_TEST_FIRST_A", "x")
	t.Setenv("PROVISIONER_TEST_FIRST_B", "y")
	s := newSet()
	s.Int("PROVISIONER_TEST_FIRST_A", 0, "")
	s.Bool("PROVISIONER_TEST_FIRST_B", false, "")
	require.EqualError(t, s.Parse(nil), `PROVISIONER_TEST_FIRST_A="x" is not an integer`)
}

func TestBadFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"-nope"}, "flag provided but not defined: -nope"},
		{"bad int", []string{"-test-flag-i", "abc"}, `invalid value "abc" for flag -test-flag-i: parse error`},
		{"bad duration", []string{"-test-flag-d", "5"}, `invalid value "5" for flag -test-flag-d: parse error`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newSet()
			s.Int("PROVISIONER_TEST_FLAG_I", 0, "")
			s.Duration("PROVISIONER_TEST_FLAG_D", 0, "")
			require.EqualError(t, s.Parse(tt.args), tt.want)
		})
	}
}

func TestUsageNamesEnvironmentVariables(t *testing.T) {
	t.Parallel()
	s := New("provisioner-api")
	var out strings.Builder
	s.fs.SetOutput(&out)
	s.String("PROVISIONER_TEST_USAGE_ADDR", ":8080", "listen address")
	s.fs.Usage()
	require.Contains(t, out.String(), "Usage of provisioner-api (every flag can also be set by the environment variable shown):\n")
	require.Contains(t, out.String(), "-test-usage-addr string")
	require.Contains(t, out.String(), "listen address ($PROVISIONER_TEST_USAGE_ADDR)")
}

// TestSecretNeverPrinted: a secret setting's environment value is used but
// never shown in usage text (not parallel: t.Setenv).
func TestSecretNeverPrinted(t *testing.T) {
	t.Setenv("PROVISIONER_X_SECRET", "hunter2-very-secret")
	s := New("test")
	var out strings.Builder
	s.fs.SetOutput(&out)
	v := s.Secret("PROVISIONER_X_SECRET", "a secret")
	require.NoError(t, s.Parse(nil))
	require.Equal(t, "hunter2-very-secret", *v)
	s.fs.Usage()
	require.NotContains(t, out.String(), "hunter2")
	require.Contains(t, out.String(), "the value is never printed")

	s = New("test")
	s.fs.SetOutput(&out)
	v = s.Secret("PROVISIONER_X_SECRET", "a secret")
	require.NoError(t, s.Parse([]string{"-x-secret", "from-flag"}))
	require.Equal(t, "from-flag", *v, "a flag wins over the environment")
	require.Error(t, s.Parse([]string{"-nope"}))
	require.NotContains(t, out.String(), "hunter2")
}
