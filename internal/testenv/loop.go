package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// LoopDevice attaches a loop device to the file at backing and detaches it
// when the test ends. Loop devices need root; without them the test fails
// under CI and skips elsewhere.
func LoopDevice(tb testing.TB, backing string) string {
	tb.Helper()
	if _, err := exec.LookPath("losetup"); err != nil {
		Missing(tb, "losetup", "apt-get install util-linux")
	}
	if os.Geteuid() != 0 {
		Missing(tb, "root (for loop devices)", "run the tests as root")
	}
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		Missing(tb, "a free loop device", "losetup --find failed: "+strings.TrimSpace(string(out)))
	}
	dev := strings.TrimSpace(string(out))
	tb.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	return dev
}
