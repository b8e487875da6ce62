package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// LibvirtURI is the libvirt connection the tests use: the system QEMU driver.
const LibvirtURI = "qemu:///system"

// libvirtdMu keeps parallel tests from starting libvirtd twice.
var libvirtdMu sync.Mutex

// libvirtdWait bounds the wait for a started libvirtd to answer.
const libvirtdWait = 30 * time.Second

// Libvirtd makes sure a libvirtd answers on LibvirtURI and returns the URI.
// When `virsh -c qemu:///system list` fails it starts `virtlogd -d` and
// `libvirtd -d` (which keep running after the tests) and waits until libvirtd
// answers. A missing libvirtd fails the test under CI=true and skips it
// elsewhere, saying to install libvirt-daemon-system.
func Libvirtd(tb testing.TB) string {
	tb.Helper()
	libvirtdMu.Lock()
	defer libvirtdMu.Unlock()
	virsh, err := exec.LookPath("virsh")
	if err != nil {
		// libvirt-daemon-system brings virsh (libvirt-clients) too.
		Missing(tb, "libvirtd", "apt-get install libvirt-daemon-system")
	}
	if libvirtAnswers(virsh) == nil {
		return LibvirtURI
	}
	libvirtd := sbin("libvirtd")
	if libvirtd == "" {
		Missing(tb, "libvirtd", "apt-get install libvirt-daemon-system")
	}
	if os.Geteuid() != 0 {
		Missing(tb, "a running libvirtd on "+LibvirtURI, "only root can start it: run the tests as root, or start libvirtd")
	}
	if virtlogd := sbin("virtlogd"); virtlogd != "" {
		// It fails when a virtlogd runs already, which is fine.
		_ = daemon(virtlogd)
	}
	startErr := daemon(libvirtd)
	deadline := time.Now().Add(libvirtdWait)
	for {
		err = libvirtAnswers(virsh)
		if err == nil {
			return LibvirtURI
		}
		if time.Now().After(deadline) {
			tb.Fatalf("libvirtd started (%v) but %s did not answer within %s: %v", startErr, LibvirtURI, libvirtdWait, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// QemuSystem returns the path of qemu-system-x86_64, or fails/skips the test
// saying to install Debian's qemu-system-x86.
func QemuSystem(tb testing.TB) string {
	tb.Helper()
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		Missing(tb, "qemu-system-x86_64", "apt-get install qemu-system-x86")
	}
	return p
}

// libvirtAnswers runs `virsh -c qemu:///system list`.
func libvirtAnswers(virsh string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, virsh, "-c", LibvirtURI, "list").CombinedOutput()
	if err != nil {
		return fmt.Errorf("virsh -c %s list: %w: %s", LibvirtURI, err, out)
	}
	return nil
}

// sbin finds a daemon binary on the PATH or in /usr/sbin or /sbin (not always
// on a non-root PATH); "" when there is none.
func sbin(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// daemon runs `bin -d`, which forks the daemon into the background and
// exits. Its output goes to a file, not a pipe, so that a daemon holding the
// pipe open cannot keep the call waiting.
func daemon(bin string) error {
	out, err := os.CreateTemp("", filepath.Base(bin)+"-start-*.log")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-d")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		msg, _ := os.ReadFile(out.Name())
		return fmt.Errorf("%s -d: %w: %s", bin, err, msg)
	}
	return nil
}
