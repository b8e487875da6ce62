package lvm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/internal/cmdutil"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// lvmReportLimit caps how much of an lvm report is read; a report filtered
// to one LV or one VG is a few hundred bytes.
const lvmReportLimit = 1 << 20

// lvmChangeTimeout bounds an lvcreate or lvremove. Once started, such a
// command is not killed when the job's context ends, so LVM's metadata is
// never left between two states; it is killed only after this long.
const lvmChangeTimeout = 2 * time.Minute

// lvFields are the columns Lookup reads from lvs.
const lvFields = "lv_name,vg_name,lv_size,lv_path,lv_attr,lv_device_open"

// vgFields are the columns read from vgs.
const vgFields = "vg_name,vg_free,vg_size,vg_extent_size"

var vgNameRE = regexp.MustCompile(`^[A-Za-z0-9_.+][A-Za-z0-9_.+-]*$`)

// Backend keeps volumes as logical volumes in one LVM volume group; a
// volume's LV name is its name and its path is /dev/<vg>/<name>. New LVs
// are thick (linear) and exactly the requested size. It runs lvm2's
// commands with LC_ALL=C and reads their JSON reports, never their text.
type Backend struct {
	// VG is the volume group holding the volumes.
	VG string
	// LVM is the lvm binary; "" means "lvm" on PATH.
	LVM string
	// Pool, when set, is a thin pool LV in VG: the volumes are then thin
	// snapshots of a golden thin LV per image (lvm_thin.go), once
	// CheckThinPool found it.
	Pool string
	// PoolMaxUsed is how full, 0 to 1, a job may leave the pool's data or
	// metadata; 0 means DefaultThinPoolMaxUsed.
	PoolMaxUsed float64

	thinChecked bool
}

var (
	_ volume.Backend    = (*Backend)(nil)
	_ volume.UseChecker = (*Backend)(nil)
	_ volume.Cloner     = (*Backend)(nil)
)

// New makes a backend for volume group vg. It checks only the
// name; CheckVolumeGroup asks LVM whether the group exists.
func New(vg string) (*Backend, error) {
	if err := validateVGName(vg); err != nil {
		return nil, err
	}
	return &Backend{VG: vg, LVM: "lvm"}, nil
}

// validateVGName accepts LVM volume group names: 1–127 of A-Za-z0-9_.+-,
// no leading '-', not "." or "..".
func validateVGName(vg string) error {
	switch {
	case vg == "":
		return errors.New("volume group name is empty")
	case len(vg) > 127:
		return fmt.Errorf("volume group name %q is longer than 127 characters", vg)
	case vg == "." || vg == "..":
		return fmt.Errorf("volume group name %q is reserved", vg)
	case !vgNameRE.MatchString(vg):
		return fmt.Errorf("volume group name %q may hold only letters, digits and '_', '.', '+', '-', and must not start with '-'", vg)
	}
	return nil
}

// InUseError says a logical volume is open, so it is not overwritten or
// removed.
type InUseError struct {
	// VG and LV name the logical volume.
	VG, LV string
	// Action is what was refused: "overwrite" or "remove".
	Action string
}

func (e *InUseError) Error() string {
	return fmt.Sprintf("logical volume %s/%s is open (a running VM may be using it); refusing to %s it", e.VG, e.LV, e.Action)
}

// Is makes an InUseError match volume.ErrInUse.
func (e *InUseError) Is(target error) bool { return target == volume.ErrInUse }

// lvRow is one row of an lvs JSON report; LVM reports every value as a string.
type lvRow struct {
	Name       string `json:"lv_name"`
	VG         string `json:"vg_name"`
	Size       string `json:"lv_size"`
	Path       string `json:"lv_path"`
	Attr       string `json:"lv_attr"`
	DeviceOpen string `json:"lv_device_open"`
}

// vgRow is one row of a vgs JSON report.
type vgRow struct {
	Name       string `json:"vg_name"`
	Free       string `json:"vg_free"`
	Size       string `json:"vg_size"`
	ExtentSize string `json:"vg_extent_size"`
}

// lvmReport is lvs and vgs output with --reportformat json.
type lvmReport struct {
	Report []struct {
		LV []lvRow `json:"lv"`
		VG []vgRow `json:"vg"`
	} `json:"report"`
}

// lvInfo is a parsed lvs row.
type lvInfo struct {
	Name, VG, Path string
	Size           int64
	Active, Open   bool
}

// vgInfo is a parsed vgs row.
type vgInfo struct {
	Name                   string
	Free, Size, ExtentSize int64
}

// parseLVs reads an lvs JSON report.
func parseLVs(out []byte) ([]lvInfo, error) {
	var rep lvmReport
	if err := json.Unmarshal(out, &rep); err != nil {
		return nil, fmt.Errorf("parse lvs report: %w", err)
	}
	var lvs []lvInfo
	for _, r := range rep.Report {
		for _, row := range r.LV {
			lv, err := row.parse()
			if err != nil {
				return nil, err
			}
			lvs = append(lvs, lv)
		}
	}
	return lvs, nil
}

func (row lvRow) parse() (lvInfo, error) {
	size, err := parseBytes("lv_size", row.Size)
	if err != nil {
		return lvInfo{}, fmt.Errorf("lvs report for %s/%s: %w", row.VG, row.Name, err)
	}
	// lv_attr's fifth character is the state: 'a' active; '-' inactive;
	// others (suspended, invalid snapshot, ...) are not usable.
	active := len(row.Attr) >= 5 && row.Attr[4] == 'a'
	open := false
	if active { // an inactive LV has no device to open; LVM says "unknown"
		if open, err = lvOpen(row.DeviceOpen, row.Attr); err != nil {
			return lvInfo{}, fmt.Errorf("lvs report for %s/%s: %w", row.VG, row.Name, err)
		}
	}
	return lvInfo{Name: row.Name, VG: row.VG, Path: row.Path, Size: size, Active: active, Open: open}, nil
}

// lvOpen reads lv_device_open (with or without --binary) and, as a second
// opinion, lv_attr's sixth character ('o' when the device is open). An
// unknown open state is an error: a volume that may be in use is never
// treated as free.
func lvOpen(deviceOpen, attr string) (bool, error) {
	attrOpen := len(attr) >= 6 && attr[5] == 'o'
	switch deviceOpen {
	case "open", "1":
		return true, nil
	case "", "0":
		return attrOpen, nil
	}
	return false, fmt.Errorf("lv_device_open is %q: cannot tell whether the volume is open", deviceOpen)
}

// parseVGs reads a vgs JSON report.
func parseVGs(out []byte) ([]vgInfo, error) {
	var rep lvmReport
	if err := json.Unmarshal(out, &rep); err != nil {
		return nil, fmt.Errorf("parse vgs report: %w", err)
	}
	var vgs []vgInfo
	for _, r := range rep.Report {
		for _, row := range r.VG {
			vg := vgInfo{Name: row.Name}
			var err error
			if vg.Free, err = parseBytes("vg_free", row.Free); err != nil {
				return nil, fmt.Errorf("vgs report for %s: %w", row.Name, err)
			}
			if vg.Size, err = parseBytes("vg_size", row.Size); err != nil {
				return nil, fmt.Errorf("vgs report for %s: %w", row.Name, err)
			}
			if vg.ExtentSize, err = parseBytes("vg_extent_size", row.ExtentSize); err != nil {
				return nil, fmt.Errorf("vgs report for %s: %w", row.Name, err)
			}
			if vg.ExtentSize <= 0 {
				return nil, fmt.Errorf("vgs report for %s: vg_extent_size is %d", row.Name, vg.ExtentSize)
			}
			vgs = append(vgs, vg)
		}
	}
	return vgs, nil
}

// parseBytes reads a size reported with --units b --nosuffix. A trailing
// "B" is accepted in case --nosuffix is ignored.
func parseBytes(field, s string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSuffix(s, "B"), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s %q is not a byte count", field, s)
	}
	return n, nil
}

// lvmEnv is the environment lvm runs in: the caller's, in the C locale, with
// the warnings about inherited descriptors off (they go to stderr, but
// would make every error message longer).
func lvmEnv() []string {
	env := make([]string, 0, len(os.Environ())+2)
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "LANG" || k == "LANGUAGE" || strings.HasPrefix(k, "LC_") || k == "LVM_SUPPRESS_FD_WARNINGS" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "LVM_SUPPRESS_FD_WARNINGS=1")
}

// cappedBuffer keeps up to max bytes and remembers whether more came.
type cappedBuffer struct {
	buf      bytes.Buffer
	max      int
	overflow bool
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); len(p) > room {
		c.overflow = true
		c.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return c.buf.Write(p)
}

// lvmCommand is the argument list of an lvm invocation (without the binary).
func lvmCommand(sub string, args ...string) []string {
	return append([]string{sub}, args...)
}

// lvsArgs lists LV name of vg; the selection yields an empty report when
// there is no such LV, so absence needs no parsing of error text.
func lvsArgs(vg, name string) []string {
	return lvmCommand("lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "--binary",
		"-o", lvFields, "-S", fmt.Sprintf("lv_name=%q", name), vg)
}

// vgsArgs reports volume group vg.
func vgsArgs(vg string) []string {
	return lvmCommand("vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", vgFields, vg)
}

// lvcreateArgs makes a linear LV of exactly size bytes: old signatures
// found in it are wiped without a prompt; the rest is not zeroed here, as
// the converter zeroes the whole volume before writing.
func lvcreateArgs(vg, name string, size int64) []string {
	return lvmCommand("lvcreate", "--yes", "--name", name, "--size", strconv.FormatInt(size, 10)+"b",
		"--wipesignatures", "y", "--zero", "n", "--activate", "y", vg)
}

// lvremoveArgs removes LV vg/name without a prompt.
func lvremoveArgs(vg, name string) []string {
	return lvmCommand("lvremove", "--yes", vg+"/"+name)
}

// run runs lvm with args and returns its stdout; the error carries the
// command and the tail of its stderr.
func (b *Backend) run(ctx context.Context, args ...string) ([]byte, error) {
	bin := b.LVM
	if bin == "" {
		bin = "lvm"
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = lvmEnv()
	cmd.WaitDelay = 5 * time.Second
	stdout := &cappedBuffer{max: lvmReportLimit}
	stderr := &cmdutil.Tail{Max: 4 << 10}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err := cmd.Run()
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("lvm %s stopped: %w", strings.Join(args, " "), ctxErr)
		}
		return nil, fmt.Errorf("lvm %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	if stdout.overflow {
		return nil, fmt.Errorf("lvm %s: report larger than %d bytes", strings.Join(args, " "), lvmReportLimit)
	}
	return stdout.buf.Bytes(), nil
}

// change runs a command that changes LVM metadata (lvcreate, lvremove): it
// does not start once ctx is done, and once started it runs to its end
// (bounded by lvmChangeTimeout) even if ctx ends meanwhile.
func (b *Backend) change(ctx context.Context, args ...string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("lvm %s not started: %w", args[0], err)
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lvmChangeTimeout)
	defer cancel()
	_, err := b.run(cctx, args...)
	return err
}

// lv finds LV name in the VG; ok is false when there is none.
func (b *Backend) lv(ctx context.Context, name string) (lvInfo, bool, error) {
	out, err := b.run(ctx, lvsArgs(b.VG, name)...)
	if err != nil {
		return lvInfo{}, false, fmt.Errorf("look up logical volume %s/%s: %w", b.VG, name, err)
	}
	lvs, err := parseLVs(out)
	if err != nil {
		return lvInfo{}, false, fmt.Errorf("look up logical volume %s/%s: %w", b.VG, name, err)
	}
	for _, lv := range lvs {
		if lv.Name == name && lv.VG == b.VG {
			return lv, true, nil
		}
	}
	return lvInfo{}, false, nil
}

// vg reports the volume group.
func (b *Backend) vg(ctx context.Context) (vgInfo, error) {
	out, err := b.run(ctx, vgsArgs(b.VG)...)
	if err != nil {
		return vgInfo{}, fmt.Errorf("volume group %s: %w", b.VG, err)
	}
	vgs, err := parseVGs(out)
	if err != nil {
		return vgInfo{}, fmt.Errorf("volume group %s: %w", b.VG, err)
	}
	for _, vg := range vgs {
		if vg.Name == b.VG {
			return vg, nil
		}
	}
	return vgInfo{}, fmt.Errorf("volume group %s is not in the vgs report", b.VG)
}

// CheckVolumeGroup returns an error when the volume group cannot be read,
// for example when it does not exist; a worker calls it at start.
func (b *Backend) CheckVolumeGroup(ctx context.Context) error {
	_, err := b.vg(ctx)
	return err
}

// checkName refuses names that are not valid volume names.
func (b *Backend) checkName(name string) error {
	if err := messaging.ValidateVolumeName(name); err != nil {
		return fmt.Errorf("logical volume name %q: %w", name, err)
	}
	return nil
}

// volume turns an active LV into a Volume, refusing one that cannot be written.
func (b *Backend) toVolume(lv lvInfo) (volume.Volume, error) {
	switch {
	case lv.Path == "":
		return volume.Volume{}, fmt.Errorf("logical volume %s/%s has no device path (a pool or internal volume); refusing to use it", b.VG, lv.Name)
	case !lv.Active:
		return volume.Volume{}, fmt.Errorf("logical volume %s/%s exists but is not active; activate it with 'lvchange -ay %s/%s' or remove it", b.VG, lv.Name, b.VG, lv.Name)
	}
	return volume.Volume{Name: lv.Name, Path: lv.Path, Size: lv.Size}, nil
}

// Lookup finds LV name in the VG; ok is false when there is none. An LV
// that exists but is inactive, or is a pool, is an error.
func (b *Backend) Lookup(ctx context.Context, name string) (volume.Volume, bool, error) {
	if err := b.checkName(name); err != nil {
		return volume.Volume{}, false, err
	}
	lv, ok, err := b.lv(ctx, name)
	if err != nil || !ok {
		return volume.Volume{}, false, err
	}
	vol, err := b.toVolume(lv)
	if err != nil {
		return volume.Volume{}, false, err
	}
	return vol, true, nil
}

// checkFits returns an error when an LV of size bytes cannot be made in vg:
// the size is not a whole number of extents, or there is not enough free
// space.
func checkFits(vg vgInfo, name string, size int64) error {
	if size%vg.ExtentSize != 0 {
		return fmt.Errorf("volume %q: %d bytes is not a multiple of volume group %q's extent size (%d bytes); refusing to round it", name, size, vg.Name, vg.ExtentSize)
	}
	if size > vg.Free {
		return fmt.Errorf("volume group %q has %d bytes free; volume %q needs %d", vg.Name, vg.Free, name, size)
	}
	return nil
}

// Create makes a linear LV of exactly size bytes, which must be a multiple
// of the VG's extent size, after checking that the name is valid and free
// and that the VG has the space; nothing is changed when a check fails.
// The new LV holds whatever its extents held before: the converter zeroes
// it.
func (b *Backend) Create(ctx context.Context, name string, size int64) (volume.Volume, error) {
	if err := b.checkName(name); err != nil {
		return volume.Volume{}, err
	}
	if size <= 0 {
		return volume.Volume{}, fmt.Errorf("create logical volume %s/%s: size %d is not positive", b.VG, name, size)
	}
	if _, ok, err := b.lv(ctx, name); err != nil {
		return volume.Volume{}, err
	} else if ok {
		return volume.Volume{}, fmt.Errorf("create logical volume %s/%s: it already exists", b.VG, name)
	}
	vg, err := b.vg(ctx)
	if err != nil {
		return volume.Volume{}, err
	}
	if err := checkFits(vg, name, size); err != nil {
		return volume.Volume{}, err
	}
	if err := b.change(ctx, lvcreateArgs(b.VG, name, size)...); err != nil {
		return volume.Volume{}, fmt.Errorf("lvcreate %s/%s: %w", b.VG, name, err)
	}
	lv, ok, err := b.lv(context.WithoutCancel(ctx), name)
	if err == nil && !ok {
		err = fmt.Errorf("lvcreate %s/%s succeeded but lvs does not list it", b.VG, name)
	}
	if err == nil && lv.Size != size {
		err = fmt.Errorf("lvcreate %s/%s made %d bytes, not the %d asked for", b.VG, name, lv.Size, size)
	}
	var vol volume.Volume
	if err == nil {
		vol, err = b.toVolume(lv)
	}
	if err != nil {
		if ok {
			if rerr := b.change(context.WithoutCancel(ctx), lvremoveArgs(b.VG, name)...); rerr != nil {
				err = fmt.Errorf("%w (and removing it failed: %v)", err, rerr)
			}
		}
		return volume.Volume{}, err
	}
	return vol, nil
}

// Delete removes LV name; a missing LV is not an error, an open one is
// refused.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if err := b.checkName(name); err != nil {
		return err
	}
	lv, ok, err := b.lv(ctx, name)
	if err != nil || !ok {
		return err
	}
	if lv.Open {
		return &InUseError{VG: b.VG, LV: name, Action: "remove"}
	}
	if err := b.change(ctx, lvremoveArgs(b.VG, name)...); err != nil {
		return fmt.Errorf("lvremove %s/%s: %w", b.VG, name, err)
	}
	return nil
}

// CheckNotInUse returns an *InUseError when vol's LV is open, as it is
// while a VM runs on it, and an error when the LV is gone.
func (b *Backend) CheckNotInUse(ctx context.Context, vol volume.Volume) error {
	if err := b.checkName(vol.Name); err != nil {
		return err
	}
	lv, ok, err := b.lv(ctx, vol.Name)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("logical volume %s/%s no longer exists", b.VG, vol.Name)
	}
	if lv.Open {
		return &InUseError{VG: b.VG, LV: vol.Name, Action: "overwrite"}
	}
	return nil
}
