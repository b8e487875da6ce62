package convert

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/internal/cmdutil"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline/image"
)

// checkTimeout bounds qemu-img check; it reads only the image's metadata.
const checkTimeout = 2 * time.Minute

// Check runs `qemu-img check` on an inspected qcow2 image and refuses one
// with corruptions: a truncated image, or one whose tables point past its
// end, reads as zeros where data is missing and would be written as a
// broken disk. Leaked clusters are harmless and accepted.
func (q QemuImg) Check(ctx context.Context, img image.Image, path string) error {
	if img.Format != "qcow2" {
		return nil
	}
	bin := q.Path
	if bin == "" {
		bin = "qemu-img"
	}
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "check", "-f", "qcow2", "--output=json", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr := cmdutil.Tail{Max: stderrTail}
	cmd.Stderr = &stderr
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	err := q.run(cmd, bin) // under the same address-space limit as convert
	out := stdout.Bytes()
	var res struct {
		Corruptions int `json:"corruptions"`
		CheckErrors int `json:"check-errors"`
		Leaks       int `json:"leaks"`
	}
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("qemu-img check did not finish within %s", checkTimeout)
		}
		return fmt.Errorf("qemu-img check failed: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	if res.Corruptions > 0 || res.CheckErrors > 0 {
		return fmt.Errorf("the image is corrupt or truncated: qemu-img check found %d corruptions and %d check errors", res.Corruptions, res.CheckErrors)
	}
	var exitErr *exec.ExitError
	if err != nil && (!errors.As(err, &exitErr) || exitErr.ExitCode() != 3) { // 3: leaks only
		return fmt.Errorf("qemu-img check failed: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
