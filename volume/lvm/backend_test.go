package lvm

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
	"github.com/stretchr/testify/require"
)

// The reports below are what lvm2 2.03.16 (Debian 12) printed in the guest
// of tests/lvmguest/run.sh for the commands lvsArgs and vgsArgs build.
const (
	lvsReportActive = `  {
      "report": [
          {
              "lv": [
                  {"lv_name":"lvg-create", "vg_name":"lvmguestvg", "lv_size":"33554432", "lv_path":"/dev/lvmguestvg/lvg-create", "lv_attr":"-wi-a-----", "lv_device_open":"0"}
              ]
          }
      ]
  }
`
	lvsReportOpenAndInactive = `  {
      "report": [
          {
              "lv": [
                  {"lv_name":"vm-1", "vg_name":"vg0", "lv_size":"2147483648", "lv_path":"/dev/vg0/vm-1", "lv_attr":"-wi-ao----", "lv_device_open":"1"},
                  {"lv_name":"vm-2", "vg_name":"vg0", "lv_size":"1073741824", "lv_path":"/dev/vg0/vm-2", "lv_attr":"-wi-------", "lv_device_open":"-1"}
              ]
          }
      ]
  }
`
	lvsReportEmpty = `  {
      "report": [
          {
              "lv": [
              ]
          }
      ]
  }
`
	vgsReport = `  {
      "report": [
          {
              "vg": [
                  {"vg_name":"lvmguestvg", "vg_free":"1035993088", "vg_size":"1069547520", "vg_extent_size":"4194304"}
              ]
          }
      ]
  }
`
)

func TestParseLVs(t *testing.T) {
	t.Parallel()
	lvs, err := parseLVs([]byte(lvsReportActive))
	require.NoError(t, err)
	require.Equal(t, []lvInfo{{Name: "lvg-create", VG: "lvmguestvg", Path: "/dev/lvmguestvg/lvg-create", Size: 32 << 20, Active: true}}, lvs)

	lvs, err = parseLVs([]byte(lvsReportOpenAndInactive))
	require.NoError(t, err)
	require.Equal(t, []lvInfo{
		{Name: "vm-1", VG: "vg0", Path: "/dev/vg0/vm-1", Size: 2 << 30, Active: true, Open: true},
		{Name: "vm-2", VG: "vg0", Path: "/dev/vg0/vm-2", Size: 1 << 30},
	}, lvs, "an inactive LV's unknown open state (-1) is 'not open': it has no device")

	lvs, err = parseLVs([]byte(lvsReportEmpty))
	require.NoError(t, err)
	require.Empty(t, lvs, "an absent LV is an empty report")
}

func TestParseLVsRefusesBadReports(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct{ report, err string }{
		"not json":     {`  Volume group "vg0" not found`, "parse lvs report"},
		"size suffix":  {`{"report":[{"lv":[{"lv_name":"a","vg_name":"v","lv_size":"1.00g","lv_attr":"-wi-a-----","lv_device_open":"0"}]}]}`, `lvs report for v/a: lv_size "1.00g" is not a byte count`},
		"negative":     {`{"report":[{"lv":[{"lv_name":"a","vg_name":"v","lv_size":"-1","lv_attr":"-wi-a-----","lv_device_open":"0"}]}]}`, `lv_size "-1" is not a byte count`},
		"unknown open": {`{"report":[{"lv":[{"lv_name":"a","vg_name":"v","lv_size":"4194304","lv_attr":"-wi-a-----","lv_device_open":"unknown"}]}]}`, `lv_device_open is "unknown": cannot tell whether the volume is open`},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := parseLVs([]byte(tc.report))
			require.ErrorContains(t, err, tc.err)
		})
	}
}

func TestLVOpen(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		deviceOpen, attr string
		open             bool
		err              bool
	}{
		{"1", "-wi-ao----", true, false},
		{"open", "-wi-ao----", true, false}, // without --binary
		{"0", "-wi-a-----", false, false},
		{"", "-wi-a-----", false, false},  // without --binary
		{"0", "-wi-ao----", true, false},  // lv_attr says open: believe it
		{"-1", "-wi-a-----", false, true}, // unknown: never "free"
		{"unknown", "-wi-a-----", false, true},
	} {
		open, err := lvOpen(tc.deviceOpen, tc.attr)
		if tc.err {
			require.Error(t, err, "%q %q", tc.deviceOpen, tc.attr)
			continue
		}
		require.NoError(t, err, "%q %q", tc.deviceOpen, tc.attr)
		require.Equal(t, tc.open, open, "%q %q", tc.deviceOpen, tc.attr)
	}
}

func TestParseVGs(t *testing.T) {
	t.Parallel()
	vgs, err := parseVGs([]byte(vgsReport))
	require.NoError(t, err)
	require.Equal(t, []vgInfo{{Name: "lvmguestvg", Free: 1035993088, Size: 1069547520, ExtentSize: 4 << 20}}, vgs)

	_, err = parseVGs([]byte(`{"report":[{"vg":[{"vg_name":"v","vg_free":"0","vg_size":"0","vg_extent_size":"0"}]}]}`))
	require.ErrorContains(t, err, "vg_extent_size is 0")
	_, err = parseVGs([]byte(`{"report":[{"vg":[{"vg_name":"v","vg_free":"1,5G","vg_size":"0","vg_extent_size":"4194304"}]}]}`))
	require.ErrorContains(t, err, `vg_free "1,5G" is not a byte count`)
}

func TestLVMCheckFits(t *testing.T) {
	t.Parallel()
	vg := vgInfo{Name: "vg0", Free: 1 << 30, Size: 4 << 30, ExtentSize: 4 << 20}
	require.NoError(t, checkFits(vg, "vm-1", 1<<30))
	require.EqualError(t, checkFits(vg, "vm-1", 2<<30), `volume group "vg0" has 1073741824 bytes free; volume "vm-1" needs 2147483648`)
	require.EqualError(t, checkFits(vg, "vm-1", 1<<30+512),
		`volume "vm-1": 1073742336 bytes is not a multiple of volume group "vg0"'s extent size (4194304 bytes); refusing to round it`)
}

func TestLVMCommands(t *testing.T) {
	t.Parallel()
	require.Equal(t, []string{"lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "--binary",
		"-o", "lv_name,vg_name,lv_size,lv_path,lv_attr,lv_device_open", "-S", `lv_name="vm-1.root_2"`, "vg0"},
		lvsArgs("vg0", "vm-1.root_2"))
	require.Equal(t, []string{"vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
		"-o", "vg_name,vg_free,vg_size,vg_extent_size", "vg0"}, vgsArgs("vg0"))
	require.Equal(t, []string{"lvcreate", "--yes", "--name", "vm-1", "--size", "2147483648b",
		"--wipesignatures", "y", "--zero", "n", "--activate", "y", "vg0"}, lvcreateArgs("vg0", "vm-1", 2<<30))
	require.Equal(t, []string{"lvremove", "--yes", "vg0/vm-1"}, lvremoveArgs("vg0", "vm-1"))
}

// TestLVMEnv cannot run in parallel: it sets the environment.
func TestLVMEnv(t *testing.T) {
	t.Setenv("LANG", "de_DE.UTF-8")
	t.Setenv("LC_MESSAGES", "de_DE.UTF-8")
	t.Setenv("LANGUAGE", "de")
	t.Setenv("LVM_SUPPRESS_FD_WARNINGS", "0")
	t.Setenv("PROVISIONER_LVM_TEST", "kept")
	env := lvmEnv()
	require.Contains(t, env, "LC_ALL=C")
	require.Contains(t, env, "LVM_SUPPRESS_FD_WARNINGS=1")
	require.Contains(t, env, "PROVISIONER_LVM_TEST=kept")
	for _, kv := range env {
		require.False(t, strings.HasPrefix(kv, "LANG=") || strings.HasPrefix(kv, "LANGUAGE=") || strings.HasPrefix(kv, "LC_MESSAGES="), "%s is dropped", kv)
	}
	require.Equal(t, 1, countEnvPrefix(env, "LC_ALL="))
	require.Equal(t, 1, countEnvPrefix(env, "LVM_SUPPRESS_FD_WARNINGS="))
}

func countEnvPrefix(env []string, prefix string) int {
	n := 0
	for _, kv := range env {
		if strings.HasPrefix(kv, prefix) {
			n++
		}
	}
	return n
}

func TestNewLVMBackend(t *testing.T) {
	t.Parallel()
	b, err := New("vg0")
	require.NoError(t, err)
	require.Equal(t, &Backend{VG: "vg0", LVM: "lvm"}, b)
	for _, vg := range []string{"vg_data", "vg.1", "vg+x", "VG-2"} {
		_, err := New(vg)
		require.NoError(t, err, vg)
	}
	for _, vg := range []string{"", ".", "..", "-vg", "vg/0", "vg 0", "vg\x00", strings.Repeat("v", 128)} {
		_, err := New(vg)
		require.Error(t, err, "%q", vg)
	}
}

func TestInUseError(t *testing.T) {
	t.Parallel()
	var err error = &InUseError{VG: "vg0", LV: "vm-1", Action: "overwrite"}
	require.EqualError(t, err, "logical volume vg0/vm-1 is open (a running VM may be using it); refusing to overwrite it")
	var inUse *InUseError
	require.True(t, errors.As(err, &inUse))
}

// TestLVMBackendRefusesBeforeRunningLVM: invalid names and sizes, and a
// finished context, are refused before lvm runs; the lvm binary here does
// not exist, so running it would be a different error.
func TestLVMBackendRefusesBeforeRunningLVM(t *testing.T) {
	t.Parallel()
	b := &Backend{VG: "vg0", LVM: "/nonexistent/lvm"}
	ctx := t.Context()
	for _, name := range []string{"", "-x", "a/b", "snapshot1", "pvmove1", "x_tmeta", "a+b", ".."} {
		_, err := b.Create(ctx, name, 4<<20)
		require.ErrorContains(t, err, "logical volume name", "Create(%q)", name)
		_, _, err = b.Lookup(ctx, name)
		require.ErrorContains(t, err, "logical volume name", "Lookup(%q)", name)
		require.ErrorContains(t, b.Delete(ctx, name), "logical volume name", "Delete(%q)", name)
		require.ErrorContains(t, b.CheckNotInUse(ctx, volume.Volume{Name: name}), "logical volume name", "CheckNotInUse(%q)", name)
	}
	for _, size := range []int64{0, -4 << 20} {
		_, err := b.Create(ctx, "vm-1", size)
		require.ErrorContains(t, err, "is not positive")
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, b.change(done, lvremoveArgs("vg0", "vm-1")...), context.Canceled)

	_, _, err := b.Lookup(ctx, "vm-1")
	require.ErrorContains(t, err, "look up logical volume vg0/vm-1: lvm lvs ")
	require.ErrorContains(t, err, "/nonexistent/lvm")
}

// TestLVMErrorsCarryStderr runs the host's lvm against a volume group that
// does not exist: the error names the command and holds lvm's stderr. It
// needs lvm2 and root, and no device-mapper.
func TestLVMErrorsCarryStderr(t *testing.T) {
	t.Parallel()
	bin, err := exec.LookPath("lvm")
	if err != nil {
		t.Skip("lvm not found: apt-get install lvm2 (the LVM backend's real tests are tests/lvmguest/run.sh)")
	}
	if os.Geteuid() != 0 {
		t.Skip("lvm needs root")
	}
	b := &Backend{VG: "provisioner-test-no-such-vg", LVM: bin}
	err = b.CheckVolumeGroup(t.Context())
	require.ErrorContains(t, err, "volume group provisioner-test-no-such-vg: lvm vgs --reportformat json")
	require.ErrorContains(t, err, `Volume group "provisioner-test-no-such-vg" not found`)
	_, _, err = b.Lookup(t.Context(), "vm-1")
	require.ErrorContains(t, err, `look up logical volume provisioner-test-no-such-vg/vm-1: lvm lvs`)
	require.ErrorContains(t, err, `Volume group "provisioner-test-no-such-vg" not found`)
}

func TestCappedBuffer(t *testing.T) {
	t.Parallel()
	c := &cappedBuffer{max: 4}
	n, err := c.Write([]byte("abc"))
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.False(t, c.overflow)
	n, err = c.Write([]byte("defg"))
	require.NoError(t, err)
	require.Equal(t, 4, n, "the writer never fails, so lvm is not killed by a broken pipe")
	require.True(t, c.overflow)
	require.Equal(t, "abcd", c.buf.String())
}
