package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestOpenLVMSettings: thin pool settings that cannot work are refused
// before lvm runs.
func TestOpenLVMSettings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		c    backendConfig
		want string
	}{
		{"no vg", backendConfig{thinMaxUsed: 95}, "PROVISIONER_LVM_VG is not set"},
		{"pool without vg", backendConfig{thinPool: "pool", thinMaxUsed: 95}, "PROVISIONER_LVM_THINPOOL: thin pool \"pool\": want <volume group>/<thin pool LV>"},
		{"pool in another vg", backendConfig{vg: "vg0", thinPool: "vg1/pool", thinMaxUsed: 95}, "PROVISIONER_LVM_THINPOOL=vg1/pool is not in PROVISIONER_LVM_VG=vg0"},
		{"percent", backendConfig{thinPool: "vg1/pool", thinMaxUsed: 0}, "PROVISIONER_LVM_THINPOOL_MAX_USED_PERCENT=0: want 1 to 100"},
		{"percent high", backendConfig{vg: "vg1", thinMaxUsed: 101}, "PROVISIONER_LVM_THINPOOL_MAX_USED_PERCENT=101: want 1 to 100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := openLVM(tc.c)
			require.ErrorContains(t, err, tc.want)
		})
	}
}
