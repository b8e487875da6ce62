package cloudinit_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/cloudinit"
)

// xorriso is the ISO reader the tests check seeds with (Debian xorriso).
func xorriso(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("xorriso")
	if err != nil {
		t.Skip("xorriso is not installed (scripts/install-deps.sh installs it)")
	}
	return p
}

// ReadSeed extracts an ISO image with xorriso and returns its files and
// volume id.
func readSeed(t *testing.T, iso string) (map[string]string, string) {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command(xorriso(t), "-osirrox", "on", "-indev", iso, "-extract", "/", dir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	files := map[string]string{}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)
		files[e.Name()] = string(b)
	}
	out, err = exec.Command(xorriso(t), "-indev", iso, "-pvd_info").CombinedOutput()
	require.NoError(t, err, "%s", out)
	var volid string
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Volume Id    :"); ok {
			volid = strings.TrimSpace(v)
		}
	}
	return files, volid
}

func TestWriteSeedReadBack(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		docs map[string]string
	}{
		{"all four", map[string]string{
			"user-data":      "#cloud-config\nhostname: vm-1\nruncmd:\n  - echo héllo ✓\n",
			"meta-data":      "instance-id: 3f2a9c1e\nlocal-hostname: vm-1\n",
			"network-config": "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n",
			"vendor-data":    "#cloud-config\n{}\n",
		}},
		{"empty user-data", map[string]string{"user-data": "", "meta-data": "instance-id: x\n"}},
		{"large", map[string]string{"user-data": strings.Repeat("#12345678901234567890\n", 1400), "meta-data": "instance-id: y\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			iso := filepath.Join(t.TempDir(), "seed.iso")
			size, err := cloudinit.WriteSeed(iso, tc.docs)
			require.NoError(t, err)
			st, err := os.Stat(iso)
			require.NoError(t, err)
			require.Equal(t, st.Size(), size)
			files, volid := readSeed(t, iso)
			require.Equal(t, tc.docs, files)
			require.Equal(t, "cidata", volid)
		})
	}
}

func TestWriteSeedRefusesOtherNames(t *testing.T) {
	t.Parallel()
	iso := filepath.Join(t.TempDir(), "seed.iso")
	_, err := cloudinit.WriteSeed(iso, map[string]string{"../etc/passwd": "x"})
	require.ErrorIs(t, err, cloudinit.ErrBadName)
	require.NoFileExists(t, iso)
}
