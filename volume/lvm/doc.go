// Package lvm keeps volumes as logical volumes of one LVM volume group,
// through the lvm command (JSON reports, never parsed text). Thick LVs are
// created, reused and removed as the volume contract says; with a thin pool
// (PROVISIONER_LVM_THINPOOL) it is also a volume.Cloner: one read-only golden
// thin LV per image, and every volume a thin snapshot of it. An LV that is
// open is never overwritten or removed (InUseError matches volume.ErrInUse).
//
// Its tests that need device-mapper, the backend conformance suite
// (volume/volumetest) among them, run in a small VM: tests/lvmguest.
package lvm
