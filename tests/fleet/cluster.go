package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// clusterSize is the number of nats-server processes of the harness's cluster.
const clusterSize = 3

// node is one nats-server process of the harness's cluster.
type node struct {
	name    string
	conf    string
	client  int
	monitor int
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// URL is the node's client URL.
func (n *node) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.client) }

// cluster is a 3-node JetStream cluster of separate nats-server processes.
type cluster struct {
	bin   string
	nodes []*node
}

// freePorts returns n TCP ports free on loopback now, none of them one this
// process handed out before (the kernel may give a closed port out again,
// and fleets of several tests run in one process).
func freePorts(n int) ([]int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		lns = append(lns, ln)
		if port := ln.Addr().(*net.TCPAddr).Port; !portsGiven[port] {
			portsGiven[port] = true
			ports = append(ports, port)
		} else if tries > 100*n {
			return nil, fmt.Errorf("find a free port: every port offered was handed out already")
		}
	}
	return ports, nil
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// nodeConfig derives node i's configuration from the project's own
// deploy/nats/cluster/node-<i>.conf: the same server name, cluster name,
// payload and JetStream limits, with the harness's ports, store directory
// and one random route secret, plus a monitoring port. With operatorConf
// (-jwt) the JWT authentication stays, including that file and keeping the
// resolver next to the store; without it the include and the resolver are
// dropped and the cluster runs without client authentication.
func nodeConfig(deployDir string, i int, client, route, monitor []int, storeDir, secret, operatorConf string) (string, error) {
	path := filepath.Join(deployDir, fmt.Sprintf("node-%d.conf", i+1))
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read the project's cluster config: %w", err)
	}
	conf := string(b)
	subst := []struct{ old, new string }{
		{fmt.Sprintf("port: %d", 4222+i), fmt.Sprintf("port: %d", client[i])},
		{fmt.Sprintf("port: %d", 6222+i), fmt.Sprintf("port: %d", route[i])},
		{fmt.Sprintf(`"/var/lib/nats/node-%d"`, i+1), fmt.Sprintf("%q", storeDir)},
	}
	auth := jwtAuthBlock.FindString(conf)
	if auth == "" {
		return "", fmt.Errorf("%s no longer has the operator.conf include and resolver block: update the fleet harness's nodeConfig", path)
	}
	if operatorConf == "" {
		conf = strings.Replace(conf, auth, "# operator.conf and the resolver left out by the fleet harness (no client auth)\n", 1)
	} else {
		resolver := fmt.Sprintf(`"/var/lib/nats/resolver-node-%d"`, i+1)
		if !strings.Contains(auth, resolver) {
			return "", fmt.Errorf("%s no longer keeps its resolver in %s: update the fleet harness's nodeConfig", path, resolver)
		}
		jwtAuth := strings.Replace(auth, "include ../operator.conf", fmt.Sprintf("include %q", operatorConf), 1)
		jwtAuth = strings.Replace(jwtAuth, resolver, fmt.Sprintf("%q", storeDir+"-resolver"), 1)
		conf = strings.Replace(conf, auth, jwtAuth, 1)
	}
	for j := range clusterSize {
		if j != i {
			subst = append(subst, struct{ old, new string }{fmt.Sprintf("127.0.0.1:%d", 6222+j), fmt.Sprintf("127.0.0.1:%d", route[j])})
		}
	}
	for _, s := range subst {
		if !strings.Contains(conf, s.old) {
			return "", fmt.Errorf("%s no longer contains %q: update the fleet harness's nodeConfig", path, s.old)
		}
		conf = strings.ReplaceAll(conf, s.old, s.new)
	}
	conf = strings.ReplaceAll(conf, "REPLACE_WITH_ROUTE_SECRET", secret)
	conf += fmt.Sprintf("\nhttp: \"127.0.0.1:%d\"\n", monitor[i])
	return conf, nil
}

// jwtAuthBlock is the JWT authentication of a node's configuration: the
// include of operator.conf and the resolver block after it.
var jwtAuthBlock = regexp.MustCompile(`(?s)include \.\./operator\.conf\nresolver \{.*?\n\}\n`)

// startCluster writes the three nodes' configs under dir and starts them.
func startCluster(bin, deployDir, dir, operatorConf string) (*cluster, error) {
	ports, err := freePorts(3 * clusterSize)
	if err != nil {
		return nil, err
	}
	client, route, monitor := ports[0:3], ports[3:6], ports[6:9]
	if operatorConf != "" {
		// nats-server resolves an include against the including file's directory.
		if operatorConf, err = filepath.Rel(dir, operatorConf); err != nil {
			return nil, fmt.Errorf("operator.conf: %w", err)
		}
	}
	c := &cluster{bin: bin}
	secret := make([]byte, 12)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("route secret: %w", err)
	}
	for i := range clusterSize {
		store := filepath.Join(dir, fmt.Sprintf("node-%d", i+1))
		conf, err := nodeConfig(deployDir, i, client, route, monitor, store, hex.EncodeToString(secret), operatorConf)
		if err != nil {
			return nil, err
		}
		n := &node{name: fmt.Sprintf("node-%d", i+1), client: client[i], monitor: monitor[i],
			conf: filepath.Join(dir, fmt.Sprintf("node-%d.conf", i+1)), logPath: filepath.Join(dir, fmt.Sprintf("node-%d.log", i+1))}
		if err := os.WriteFile(n.conf, []byte(conf), 0o600); err != nil {
			return nil, fmt.Errorf("write %s: %w", n.conf, err)
		}
		c.nodes = append(c.nodes, n)
		if err := c.start(n); err != nil {
			c.stop()
			return nil, err
		}
	}
	return c, nil
}

// start runs n's nats-server process; its output goes to n.logPath.
func (c *cluster) start(n *node) error {
	f, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open %s: %w", n.logPath, err)
	}
	cmd := exec.Command(c.bin, "-c", n.conf)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start nats-server %s: %w", n.name, err)
	}
	n.cmd, n.exited = cmd, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(n.exited)
	}()
	return nil
}

// URLs is the client URL list of every node, comma-separated.
func (c *cluster) URLs() string {
	var urls []string
	for _, n := range c.nodes {
		urls = append(urls, n.URL())
	}
	return strings.Join(urls, ",")
}

// kill sends SIGKILL to n and waits for it to exit.
func (c *cluster) kill(n *node) {
	_ = n.cmd.Process.Kill()
	<-n.exited
}

// signal sends sig (SIGSTOP, SIGCONT) to n.
func (c *cluster) signal(n *node, sig syscall.Signal) error {
	if err := n.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %s to %s: %w", sig, n.name, err)
	}
	return nil
}

// stop ends every node (SIGTERM, then SIGKILL after 5 s).
func (c *cluster) stop() {
	for _, n := range c.nodes {
		if n.cmd == nil {
			continue
		}
		_ = n.cmd.Process.Signal(syscall.SIGCONT)
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, n := range c.nodes {
		if n.cmd == nil {
			continue
		}
		select {
		case <-n.exited:
		case <-time.After(5 * time.Second):
			c.kill(n)
		}
	}
}

// byName finds the node called name.
func (c *cluster) byName(name string) *node {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// waitJetStream waits until the cluster has a JetStream meta leader.
func (c *cluster) waitJetStream(ctx context.Context, nc *nats.Conn) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream context: %w", err)
	}
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.AccountInfo(actx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for a JetStream meta leader: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// streamLeader is the name of the node leading stream.
func streamLeader(ctx context.Context, js jetstream.JetStream, stream string) (string, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return "", fmt.Errorf("stream %s: %w", stream, err)
	}
	info := s.CachedInfo()
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return "", fmt.Errorf("stream %s has no leader", stream)
	}
	return info.Cluster.Leader, nil
}

// nodeCurrent reports whether n is the leader or a current replica of
// every replicated stream (the job stream and the KV buckets' streams),
// and every single-replica stream (the event stream) has its leader back.
func nodeCurrent(ctx context.Context, js jetstream.JetStream, n *node) (bool, error) {
	lister := js.ListStreams(ctx)
	seen := 0
	for info := range lister.Info() {
		seen++
		if info.Cluster == nil {
			return false, nil
		}
		if info.Config.Replicas <= 1 {
			if info.Cluster.Leader == "" {
				return false, nil
			}
			continue
		}
		ok := info.Cluster.Leader == n.name
		for _, r := range info.Cluster.Replicas {
			if r.Name == n.name && r.Current && !r.Offline {
				ok = true
			}
		}
		if !ok {
			return false, nil
		}
	}
	if err := lister.Err(); err != nil {
		return false, fmt.Errorf("list streams: %w", err)
	}
	return seen > 0, nil
}

// waitCurrent waits until n is current on every stream; it returns how long that took.
func waitCurrent(ctx context.Context, js jetstream.JetStream, n *node, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	var last error
	for time.Since(start) < limit {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		ok, err := nodeCurrent(lctx, js, n)
		cancel()
		if ok {
			return time.Since(start), nil
		}
		last = err
		select {
		case <-ctx.Done():
			return time.Since(start), ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return time.Since(start), fmt.Errorf("%s not current on every stream within %s (last error: %v)", n.name, limit, last)
}

// varz is the part of /varz the harness reads.
type varz struct {
	Mem int64   `json:"mem"`
	CPU float64 `json:"cpu"`
}

// nodeMemory reads n's resident memory from its /varz.
func nodeMemory(n *node) (int64, error) {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get(fmt.Sprintf("http://127.0.0.1:%d/varz", n.monitor))
	if err != nil {
		return 0, fmt.Errorf("varz of %s: %w", n.name, err)
	}
	defer resp.Body.Close()
	var v varz
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return 0, fmt.Errorf("decode varz of %s: %w", n.name, err)
	}
	if v.Mem == 0 {
		return 0, errors.New("varz of " + n.name + " has no mem")
	}
	return v.Mem, nil
}
