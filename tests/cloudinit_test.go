package tests

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// seedVolumeBytes is a new seed volume's size (worker.SeedVolumeBytes).
const seedVolumeBytes = 4 << 20

// readISO reads an ISO 9660 image (or a volume holding one) back with the
// Debian xorriso: its files and its volume id.
func readISO(t *testing.T, image string) (map[string]string, string) {
	t.Helper()
	bin, err := exec.LookPath("xorriso")
	if err != nil {
		t.Skip("xorriso is not installed (scripts/install-deps.sh installs it)")
	}
	dir := t.TempDir()
	out, err := exec.Command(bin, "-osirrox", "on", "-indev", image, "-extract", "/", dir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	files := map[string]string{}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)
		files[e.Name()] = string(b)
	}
	out, err = exec.Command(bin, "-indev", image, "-pvd_info").CombinedOutput()
	require.NoError(t, err, "%s", out)
	var volid string
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Volume Id    :"); ok {
			volid = strings.TrimSpace(v)
		}
	}
	return files, volid
}

// requireZerosFrom checks every byte of path from off on is zero.
func requireZerosFrom(t *testing.T, path string, off int64) {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.GreaterOrEqual(t, int64(len(data)), off)
	require.True(t, bytes.Equal(data[off:], make([]byte, int64(len(data))-off)), "%s holds non-zero bytes past %d", path, off)
}

func TestCloudInitSeedVolume(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	qcow2, ref := image(t, 16<<20, 7)
	url := e.upload("images/ci.qcow2", qcow2, true)
	ci := map[string]any{
		"user_data":      "#cloud-config\npassword: s3cr3t-in-user-data\nruncmd:\n  - echo héllo\n",
		"network_config": "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n",
	}
	id := e.submit(map[string]any{"image_url": url, "volume_name": "vm-ci", "volume_size_gb": 1, "cloud_init": ci})
	j := e.waitStatus(id, "completed")
	requireVolume(t, e.volumePath("h1", "vm-ci"), ref, gib)
	seed := e.volumePath("h1", "vm-ci-seed")
	st, err := os.Stat(seed)
	require.NoError(t, err)
	require.EqualValues(t, seedVolumeBytes, st.Size())
	files, volid := readISO(t, seed)
	require.Equal(t, "cidata", volid)
	require.Equal(t, map[string]string{"user-data": ci["user_data"].(string), "meta-data": "instance-id: " + id + "\n",
		"network-config": ci["network_config"].(string)}, files)
	requireZerosFrom(t, seed, 1<<20)
	rec := e.do(http.MethodGet, "/api/v1/jobs/"+id, nil)
	require.NotContains(t, string(rec.Body), "s3cr3t", "the record must not hold the documents")
	require.Equal(t, "vm-ci-seed", rec.json(t)["seed_volume"])
	require.Equal(t, seed, rec.json(t)["seed_volume_path"])
	require.Equal(t, 100, j.Progress.Percent)

	// Reprovisioning with new user-data replaces the seed, under a new
	// instance-id; a named seed volume and meta-data are taken as given.
	ci2 := map[string]any{"user_data": "#cloud-config\nhostname: second\n", "meta_data": "instance-id: fixed-1\n", "vendor_data": "#cloud-config\n{}\n"}
	id2 := e.submit(map[string]any{"image_url": url, "volume_name": "vm-ci", "volume_size_gb": 1, "cloud_init": ci2})
	e.waitStatus(id2, "completed")
	files, _ = readISO(t, seed)
	require.Equal(t, map[string]string{"user-data": ci2["user_data"].(string), "meta-data": "instance-id: fixed-1\n", "vendor-data": "#cloud-config\n{}\n"}, files)
	requireZerosFrom(t, seed, 1<<20)

	// cloud_init alone writes only the seed.
	id3 := e.submit(map[string]any{"volume_name": "vm-only", "cloud_init": map[string]any{"user_data": "#cloud-config\n{}\n", "volume_name": "only-cidata"}})
	e.waitStatus(id3, "completed")
	require.NoFileExists(t, e.volumePath("h1", "vm-only"))
	files, volid = readISO(t, e.volumePath("h1", "only-cidata"))
	require.Equal(t, "cidata", volid)
	require.Equal(t, "#cloud-config\n{}\n", files["user-data"])
}

func TestCloudInitBadInputIs400(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	url := "http://" + e.minio.Endpoint + "/" + e.bucket + "/images/x.qcow2"
	post := func(body string) map[string]any {
		t.Helper()
		r := e.do(http.MethodPost, "/api/v1/jobs", body)
		require.Equal(t, http.StatusBadRequest, r.Status, "%s", r.Body)
		return r.json(t)
	}
	job := func(ci string) string {
		return `{"image_url":"` + url + `","volume_name":"vm-bad","volume_size_gb":1,"cloud_init":` + ci + `}`
	}
	for _, tc := range []struct{ name, body, want string }{
		{"unknown field", job(`{"user_data":"x","userdata":"y"}`), "cloud_init.userdata: unknown field"},
		{"not UTF-8", job("{\"user_data\":\"\xff\xfe\"}"), "cloud_init.user_data: is not valid UTF-8 text"},
		{"lone surrogate", job(`{"meta_data":"\ud800x"}`), "cloud_init.meta_data: is not valid UTF-8 text"},
		{"not a string", job(`{"vendor_data":5}`), "cloud_init.vendor_data: must be a string"},
		{"oversize", job(`{"user_data":"` + strings.Repeat("a", 33<<10) + `"}`), "cloud_init.user_data: is 33792 bytes, more than the 32768 allowed"},
		{"seed name", job(`{"volume_name":"-x"}`), "cloud_init.volume_name: seed volume \"-x\""},
		{"seed is the volume", job(`{"volume_name":"vm-bad"}`), "cloud_init.volume_name: must differ from volume_name"},
		{"seed only takes no size", `{"volume_name":"v","volume_size_gb":1,"cloud_init":{}}`, "volume_size_gb: a job without image_url writes only the cloud-init seed"},
	} {
		got := post(tc.body)
		require.Contains(t, got["message"], tc.want, tc.name)
	}
	// A valid body still works (no worker needed to accept it).
	data, _ := json.Marshal(map[string]any{"volume_name": "vm-ok", "cloud_init": map[string]any{"user_data": "ok"}})
	r := e.do(http.MethodPost, "/api/v1/jobs", string(data))
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
}
