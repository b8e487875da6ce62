package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/auth"
)

// ctlRun is one finished provisionerctl run.
type ctlRun struct {
	stdout, stderr string
	code           int
}

// ctlCmd is provisionerctl against server, with no config file of the
// machine's.
// ctlDeadline bounds one provisionerctl run in these tests.
const ctlDeadline = 3 * time.Minute

func ctlCmd(t *testing.T, server string, args ...string) *exec.Cmd {
	t.Helper()
	// A command that follows a job (--wait, watch) ends with the job; none
	// may outlive ctlDeadline.
	ctx, cancel := context.WithTimeout(context.Background(), ctlDeadline)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "provisionerctl"), args...)
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = append(os.Environ(), "PROVISIONER_SERVER="+server, "PROVISIONER_CONFIG=", "HOME="+t.TempDir())
	return cmd
}

// ctl runs provisionerctl through pipes.
func ctl(t *testing.T, server string, args ...string) ctlRun {
	t.Helper()
	cmd := ctlCmd(t, server, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return ctlRun{stdout: out.String(), stderr: errb.String(), code: exitCode(t, err)}
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	require.NoError(t, err)
	return 0
}

// ptyRun is provisionerctl in a pseudo-terminal of 120 columns.
type ptyRun struct {
	cmd  *exec.Cmd
	tty  *os.File
	out  bytes.Buffer
	done chan struct{}
}

func ctlInTerminal(t *testing.T, server string, args ...string) *ptyRun {
	t.Helper()
	cmd := ctlCmd(t, server, args...)
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 30, Cols: 120})
	require.NoError(t, err)
	r := &ptyRun{cmd: cmd, tty: tty, done: make(chan struct{})}
	go func() {
		_, _ = io.Copy(&r.out, tty) // ends with EIO once the child is gone
		close(r.done)
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill(); tty.Close() })
	return r
}

// wait returns the exit code and everything the terminal showed.
func (r *ptyRun) wait(t *testing.T) (int, string) {
	t.Helper()
	waited := make(chan error, 1)
	go func() { waited <- r.cmd.Wait() }()
	var err error
	select {
	case err = <-waited:
	case <-time.After(ctlDeadline):
		_ = r.cmd.Process.Kill()
		t.Fatalf("provisionerctl on a terminal did not end within %v; the terminal showed:\n%s", ctlDeadline, r.out.String())
	}
	code := exitCode(t, err)
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
	}
	return code, r.out.String()
}

// screenLines splits terminal output at newlines and carriage returns and
// strips escape sequences: what each redraw of a line showed.
func screenLines(out string) []string {
	plain := regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`).ReplaceAllString(out, "\n")
	return strings.FieldsFunc(plain, func(r rune) bool { return r == '\n' || r == '\r' })
}

// lastLineWith is the last drawn line that contains every one of subs.
func lastLineWith(lines []string, subs ...string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(lines[i], s)
		}
		if all {
			return lines[i]
		}
	}
	return ""
}

// TestCtlBarsInATerminal: submit --wait in a real pseudo-terminal draws a
// live bar per job (stage, percent, bytes) that ends in its final state.
func TestCtlBarsInATerminal(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	e.startWorker("h1", slow)
	qcow2, ref := image(t, 48<<20, 31)
	url := e.upload("images/tty.qcow2", qcow2, true)

	r := ctlInTerminal(t, e.apiURL, "submit", "--image", url, "--volume", "vm-tty-1", "--volume", "vm-tty-2", "--size", "1", "--wait")
	code, out := r.wait(t)
	require.Equal(t, 0, code, "output:\n%s", out)
	require.Contains(t, out, "\x1b[", "a terminal gets a redrawn display")
	lines := screenLines(out)
	for _, vol := range []string{"vm-tty-1", "vm-tty-2"} {
		final := lastLineWith(lines, vol+" ", "[")
		require.Regexp(t, `completed +\[=+\] 100% 48\.0 MiB`, final, "the bar of %s ends completed and full; output:\n%s", vol, out)
		requireVolume(t, e.volumePath("h1", vol), ref, gib)
	}
	midway := regexp.MustCompile(`vm-tty-[12] +populating +\[=*>? *\] +([1-9]|[1-9][0-9])% +[0-9.]+ [KM]iB/[0-9.]+ MiB`)
	require.Regexp(t, midway, strings.Join(lines, "\n"), "a bar showed the stage, percent and bytes while the job ran")
	require.Contains(t, lastLineWith(lines, "JOB_ID"), "STATUS", "the final table follows the bars")

	// A job that fails: its bar stops at its error, and the command exits 1.
	missing := "http://" + e.minio.Endpoint + "/" + e.bucket + "/images/missing.qcow2"
	r = ctlInTerminal(t, e.apiURL, "submit", "--image", missing, "--volume", "vm-tty-bad", "--size", "1", "--wait")
	code, out = r.wait(t)
	require.Equal(t, 1, code, "output:\n%s", out)
	final := lastLineWith(screenLines(out), "vm-tty-bad ", "[")
	require.Regexp(t, `vm-tty-bad +failed +\[.*\] .+`, final, "output:\n%s", out)
	require.Regexp(t, `provisionerctl: job [0-9a-f-]{36} failed: .+`, out)
}

var plainLine = regexp.MustCompile(`^[0-9a-f-]{36} [a-z0-9@.-]+: (pending|running( [a-z_]+ \d+%( [0-9.]+ [KMG]?i?B/[0-9.]+ [KMG]?i?B)?)?|completed 100%.*|failed: .+|cancelled)$`)

// TestCtlPlainOutputFailureAndCancel: through a pipe, --wait prints one
// plain line per stage change and no control characters; a failed job
// exits 1 with its error; a cancelled job ends a watch with exit 1 and
// shows as cancelled.
func TestCtlPlainOutputFailureAndCancel(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	e.startWorker("h1", slow)
	qcow2, _ := image(t, 16<<20, 32)
	url := e.upload("images/plain.qcow2", qcow2, true)

	run := ctl(t, e.apiURL, "submit", "--image", url, "--volume", "vm-plain", "--size", "1", "--wait")
	require.Equal(t, 0, run.code, "stderr:\n%s", run.stderr)
	require.NotContains(t, run.stderr+run.stdout, "\x1b")
	require.NotContains(t, run.stderr+run.stdout, "\r")
	lines := strings.Split(strings.TrimSpace(run.stderr), "\n")
	require.GreaterOrEqual(t, len(lines), 3, "%s", run.stderr)
	for i, l := range lines {
		require.Regexp(t, plainLine, l)
		if i > 0 {
			prev := strings.Fields(lines[i-1])
			cur := strings.Fields(l)
			require.False(t, len(prev) > 3 && len(cur) > 3 && prev[2] == cur[2] && prev[3] == cur[3], "two lines for one stage: %q, %q", lines[i-1], l)
		}
	}
	require.Contains(t, run.stderr, " running populating ")
	require.Regexp(t, `vm-plain: completed 100% 16\.0 MiB$`, lines[len(lines)-1])
	require.Contains(t, run.stdout, "completed")

	// get -o json is the API's record.
	id := strings.Fields(lines[0])[0]
	got := ctl(t, e.apiURL, "get", id, "-o", "json")
	require.Equal(t, 0, got.code, got.stderr)
	var rec map[string]any
	require.NoError(t, json.Unmarshal([]byte(got.stdout), &rec))
	require.Equal(t, "completed", rec["status"])
	require.Equal(t, e.volumePath("h1", "vm-plain"), rec["volume_path"])

	// A job that fails: exit 1 with its error.
	missing := "http://" + e.minio.Endpoint + "/" + e.bucket + "/images/missing.qcow2"
	run = ctl(t, e.apiURL, "submit", "--image", missing, "--volume", "vm-fail", "--size", "1", "--wait")
	require.Equal(t, 1, run.code, "stderr:\n%s", run.stderr)
	require.Regexp(t, `vm-fail: failed: .+`, run.stderr)
	require.Regexp(t, `provisionerctl: job [0-9a-f-]{36} failed: .+`, run.stderr)

	// A job cancelled while a watch follows it.
	big, _ := image(t, 64<<20, 33)
	bigURL := e.upload("images/big.qcow2", big, true)
	sub := ctl(t, e.apiURL, "submit", "--image", bigURL, "--volume", "vm-cancel", "--size", "1", "-o", "json")
	require.Equal(t, 0, sub.code, sub.stderr)
	var acc []map[string]string
	require.NoError(t, json.Unmarshal([]byte(sub.stdout), &acc))
	cid := acc[0]["job_id"]
	watch := ctlCmd(t, e.apiURL, "watch", cid)
	var wout, werr bytes.Buffer
	watch.Stdout, watch.Stderr = &wout, &werr
	require.NoError(t, watch.Start())
	e.waitJob(cid, 30*time.Second, func(j job) bool { return j.Progress != nil && j.Progress.Stage == "populating" })
	c := ctl(t, e.apiURL, "cancel", cid)
	require.Equal(t, 0, c.code, c.stderr)
	require.Equal(t, cid+" cancelled\n", c.stdout)
	require.Equal(t, 1, exitCode(t, watch.Wait()), "a watched job that was cancelled exits 1")
	require.Contains(t, werr.String(), cid+" vm-cancel: cancelled\n")
	require.Contains(t, werr.String(), "provisionerctl: job "+cid+" was cancelled")
	list := ctl(t, e.apiURL, "jobs", "--status", "cancelled,failed")
	require.Equal(t, 0, list.code, list.stderr)
	require.Regexp(t, `(?m)^`+cid+` +h1 +vm-cancel +cancelled `, list.stdout)
	require.Regexp(t, `(?m)^[0-9a-f-]{36} +h1 +vm-fail +failed `, list.stdout)
	require.NotContains(t, list.stdout, "vm-plain")
	again := ctl(t, e.apiURL, "cancel", cid)
	require.Equal(t, 1, again.code)
	require.Contains(t, again.stderr, "cannot cancel job in 'cancelled' status")
}

// TestCtlInterruptAndBadInput: Ctrl-C during --wait stops watching, leaves
// the job running and says how to watch it again; bad command lines exit
// 2 with usage; an unreachable API exits 3 saying so, without a trace.
func TestCtlInterruptAndBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noWorker: true})
	e.startWorker("h1", slow)
	qcow2, _ := image(t, 48<<20, 34)
	url := e.upload("images/int.qcow2", qcow2, true)

	r := ctlInTerminal(t, e.apiURL, "submit", "--image", url, "--volume", "vm-int", "--size", "1", "--wait")
	require.Eventually(t, func() bool { return strings.Contains(r.out.String(), "populating") }, 30*time.Second, 50*time.Millisecond)
	_, err := r.tty.Write([]byte{0x03}) // Ctrl-C, as a person types it
	require.NoError(t, err)
	code, out := r.wait(t)
	require.Equal(t, 130, code, "output:\n%s", out)
	m := regexp.MustCompile(`provisionerctl watch ([0-9a-f-]{36})`).FindStringSubmatch(out)
	require.NotNil(t, m, "says how to watch again:\n%s", out)
	require.Contains(t, out, "the job keeps running")
	j := e.getJob(m[1])
	require.Equal(t, "running", j.Status, "the job goes on")
	e.waitStatus(m[1], "completed")

	for _, args := range [][]string{
		{"submit", "--bogus"},
		{"submit", "--image", url},
		{"get"},
		{"cache", "rm"},
		{"frobnicate"},
		{"hosts", "-o", "yaml"},
	} {
		run := ctl(t, e.apiURL, args...)
		require.Equal(t, 2, run.code, "%v: %s", args, run.stderr)
		require.Contains(t, run.stderr, "Usage:", "%v", args)
	}
	run := ctl(t, e.apiURL, "submit", "--image", url)
	require.Contains(t, run.stderr, "missing --volume, --size")

	run = ctl(t, "http://127.0.0.1:1", "get", m[1])
	require.Equal(t, 3, run.code, run.stderr)
	require.Contains(t, run.stderr, "cannot reach the API at http://127.0.0.1:1/api/v1/jobs/"+m[1])
	require.NotContains(t, run.stderr, "goroutine")

	run = ctl(t, e.apiURL, "hosts")
	require.Equal(t, 0, run.code, run.stderr)
	require.Regexp(t, `(?m)^h1 +alive `, run.stdout)
}

// TestCtlTokensAndRefusals: token create mints what api token create
// mints; the API's 401 and 403 exit 4 saying which.
func TestCtlTokensAndRefusals(t *testing.T) {
	t.Parallel()
	s := newSecureEnv(t)
	secrets := filepath.Join(s.dir, "secrets")
	flags := []string{"--key-id", "ops", "--ttl", "2h", "--subject", "deploy", "--hypervisors", "h1,h2", "--volumes", "web-.*", "--buckets", "images"}
	apiCmd := exec.Command(filepath.Join(binDir, "api"), append([]string{"token", "create"}, flags...)...)
	apiCmd.Env = append(os.Environ(), "PROVISIONER_TOKEN_SECRETS_FILE="+secrets)
	apiTok, err := apiCmd.Output()
	require.NoError(t, err)
	ctlCmd := ctlCmd(t, s.apiURL, append([]string{"token", "create"}, flags...)...)
	ctlCmd.Env = append(ctlCmd.Env, "PROVISIONER_TOKEN_SECRETS_FILE="+secrets)
	ctlTok, err := ctlCmd.Output()
	require.NoError(t, err)
	fromAPI, err := s.keys.Verify(strings.TrimSpace(string(apiTok)), time.Now())
	require.NoError(t, err)
	fromCtl, err := s.keys.Verify(strings.TrimSpace(string(ctlTok)), time.Now())
	require.NoError(t, err)
	require.InDelta(t, fromAPI.Expires, fromCtl.Expires, 2)
	fromCtl.Expires = fromAPI.Expires
	require.Equal(t, fromAPI, fromCtl)
	require.Equal(t, auth.Claims{KeyID: "ops", Subject: "deploy", Hypervisors: []string{"h1", "h2"}, Volumes: "web-.*", Buckets: []string{"images"}, Expires: fromAPI.Expires}, fromCtl)

	ca := filepath.Join(s.dir, "ca.crt")
	run := ctl(t, s.apiURL, "hosts", "--cacert", ca, "--token", strings.TrimSpace(string(ctlTok)))
	require.Equal(t, 0, run.code, run.stderr)
	require.Contains(t, run.stdout, "h1")

	run = ctl(t, s.apiURL, "hosts", "--cacert", ca, "--token", "pvt1.bogus.bogus")
	require.Equal(t, 4, run.code, run.stderr)
	require.Contains(t, run.stderr, "the API refused the credentials (401)")
	run = ctl(t, s.apiURL, "hosts", "--cacert", ca)
	require.Equal(t, 4, run.code, run.stderr)
	require.Contains(t, run.stderr, "(401)")

	h2 := s.token(t, auth.Claims{KeyID: "ops", Subject: "h2-only", Hypervisors: []string{"h2"}})
	run = ctl(t, s.apiURL, "cache", "ls", "--hypervisor", "h1", "--cacert", ca, "--token", h2)
	require.Equal(t, 4, run.code, run.stderr)
	require.Contains(t, run.stderr, "(403 forbidden)")
	require.NotContains(t, run.stderr, "goroutine")

	// The token from the environment and the CA from a config file.
	cfg := filepath.Join(t.TempDir(), "config.json")
	require.NoError(t, os.WriteFile(cfg, []byte(`{"cacert": "`+ca+`"}`), 0o600))
	cmd := ctlCmdWith(t, s.apiURL, []string{"PROVISIONER_CONFIG=" + cfg, "PROVISIONER_TOKEN=" + strings.TrimSpace(string(apiTok))}, "hosts", "-o", "json")
	out, err := cmd.Output()
	require.NoError(t, err)
	var hosts []map[string]any
	require.NoError(t, json.Unmarshal(out, &hosts))
	require.Equal(t, "h1", hosts[0]["host"])
}

func ctlCmdWith(t *testing.T, server string, env []string, args ...string) *exec.Cmd {
	cmd := ctlCmd(t, server, args...)
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// TestCtlUploadAndSeed: provisionerctl upload writes a file into a volume,
// and submit --user-data writes a seed volume (alone, without an image).
func TestCtlUploadAndSeed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	dir := t.TempDir()
	content := bytes.Repeat([]byte("uploaded by provisionerctl\n"), 5000)
	file := filepath.Join(dir, "disk.raw")
	require.NoError(t, os.WriteFile(file, content, 0o600))
	run := ctl(t, e.apiURL, "upload", "--hypervisor", "h1", "--volume", "ctl-up", "--file", file, "--wait", "-o", "json")
	require.Equal(t, 0, run.code, "%s\n%s", run.stdout, run.stderr)
	requireContent(t, e.volumePath("h1", "ctl-up"), content, 1<<20)

	run = ctl(t, e.apiURL, "upload", "--hypervisor", "h1", "--volume", "ctl-up", "--file", file, "--sha256", strings.Repeat("0", 64))
	require.Equal(t, 1, run.code, "%s\n%s", run.stdout, run.stderr)
	require.Contains(t, run.stderr, "X-Content-SHA256")

	ud := filepath.Join(dir, "user-data")
	require.NoError(t, os.WriteFile(ud, []byte("#cloud-config\nhostname: from-ctl\n"), 0o600))
	run = ctl(t, e.apiURL, "submit", "--volume", "ctl-vm", "--user-data", ud, "--wait")
	require.Equal(t, 0, run.code, "%s\n%s", run.stdout, run.stderr)
	files, volid := readISO(t, e.volumePath("h1", "ctl-vm-seed"))
	require.Equal(t, "cidata", volid)
	require.Equal(t, "#cloud-config\nhostname: from-ctl\n", files["user-data"])
	require.NoFileExists(t, e.volumePath("h1", "ctl-vm"))
}
