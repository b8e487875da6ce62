package cloudinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
)

// Label is the volume label cloud-init's NoCloud source looks for.
const Label = "cidata"

// ErrBadName: a seed file name that is not one of NoCloud's.
var ErrBadName = errors.New("not a NoCloud seed file name")

// Names are the files a seed may hold.
var Names = []string{"user-data", "meta-data", "network-config", "vendor-data"}

// WriteSeed writes a seed image holding docs (file name to content) to
// path, which must not exist, and returns its size. A partial image is
// removed on failure.
func WriteSeed(path string, docs map[string]string) (size int64, err error) {
	for name := range docs {
		if !slices.Contains(Names, name) {
			return 0, fmt.Errorf("seed file %q: %w", name, ErrBadName)
		}
	}
	work, err := os.MkdirTemp(filepath.Dir(path), ".seed-work-")
	if err != nil {
		return 0, fmt.Errorf("seed work directory: %w", err)
	}
	defer os.RemoveAll(work)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, fmt.Errorf("create seed image: %w", err)
	}
	defer func() {
		f.Close()
		if err != nil {
			os.Remove(path)
		}
	}()
	fs, err := iso9660.Create(file.New(f, false), 0, 0, 2048, work)
	if err != nil {
		return 0, fmt.Errorf("create seed file system: %w", err)
	}
	for _, name := range Names {
		content, ok := docs[name]
		if !ok {
			continue
		}
		if err := writeFile(fs, name, content); err != nil {
			return 0, err
		}
	}
	opts := iso9660.FinalizeOptions{RockRidge: true, Joliet: true, VolumeIdentifier: Label}
	if err := fs.Finalize(opts); err != nil {
		return 0, fmt.Errorf("finalize seed image: %w", err)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("flush seed image: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func writeFile(fs *iso9660.FileSystem, name, content string) error {
	w, err := fs.OpenFile("/"+name, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return fmt.Errorf("seed file %s: %w", name, err)
	}
	if _, err := strings.NewReader(content).WriteTo(w); err != nil {
		return fmt.Errorf("seed file %s: %w", name, err)
	}
	return w.Close()
}
