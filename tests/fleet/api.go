package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// apiReplicas is how many bin/api processes share the cluster.
const apiReplicas = 2

// apiProc is one bin/api replica.
type apiProc struct {
	name    string
	addr    string
	env     []string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// URL is the replica's REST base URL.
func (a *apiProc) URL() string { return "http://" + a.addr }

// build compiles the harness's binaries into dir: nats-server from the
// module go.mod pins, and the real bin/api.
func build(ctx context.Context, repo, dir string) (natsServer, api string, err error) {
	natsServer, api = filepath.Join(dir, "nats-server"), filepath.Join(dir, "api")
	for _, b := range []struct{ out, pkg string }{{natsServer, "github.com/nats-io/nats-server/v2"}, {api, "./cmd/api"}} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", b.out, b.pkg)
		cmd.Dir = repo
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go build %s: %w\n%s", b.pkg, err, out)
		}
	}
	return natsServer, api, nil
}

// newAPIs prepares the replicas' settings (not started yet).
func newAPIs(dir, urls, dispatch string) ([]*apiProc, error) {
	ports, err := freePorts(apiReplicas)
	if err != nil {
		return nil, err
	}
	var apis []*apiProc
	for i := range apiReplicas {
		a := &apiProc{name: fmt.Sprintf("api-%d", i+1), addr: fmt.Sprintf("127.0.0.1:%d", ports[i]),
			logPath: filepath.Join(dir, fmt.Sprintf("api-%d.log", i+1))}
		// A clean environment: nothing of the caller's PROVISIONER_* leaks in.
		a.env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir,
			"PROVISIONER_HTTP_ADDR=" + a.addr, "PROVISIONER_NATS_URL=" + urls, "PROVISIONER_REPLICAS=3",
			"PROVISIONER_IMAGE_ENDPOINTS=" + standInEndpoint, "PROVISIONER_DATA_DIR=" + filepath.Join(dir, a.name),
			"PROVISIONER_LOG_LEVEL=warn", "PROVISIONER_DISPATCH=" + dispatch}
		apis = append(apis, a)
	}
	return apis, nil
}

// start runs the replica and waits until /readyz answers 200.
func (a *apiProc) start(ctx context.Context, bin string) error {
	f, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open %s: %w", a.logPath, err)
	}
	cmd := exec.Command(bin)
	cmd.Env, cmd.Stdout, cmd.Stderr = a.env, f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", a.name, err)
	}
	a.cmd, a.exited = cmd, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(a.exited)
	}()
	return a.waitReady(ctx, time.Minute)
}

func (a *apiProc) waitReady(ctx context.Context, limit time.Duration) error {
	cl := http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-a.exited:
			return fmt.Errorf("%s exited at start (see %s)", a.name, a.logPath)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if resp, err := cl.Get(a.URL() + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %s (see %s)", a.name, limit, a.logPath)
}

// kill sends SIGKILL and waits for the replica to exit.
func (a *apiProc) kill() {
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Kill()
	<-a.exited
}

// stop ends the replica with SIGTERM (SIGKILL after 5 s).
func (a *apiProc) stop() {
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Signal(os.Interrupt)
	select {
	case <-a.exited:
	case <-time.After(5 * time.Second):
		a.kill()
	}
}
