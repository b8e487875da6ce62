package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/libvirt-volume-provisioner/provisioner/internal/fsutil"
	"golang.org/x/sys/unix"
)

// SealGoldenFile makes the prepared raw file the sealed golden of key at
// final, for backends whose goldens are files (the file backend, libvirt
// dir pools): it flushes the file, hashes it unless digest is given (the
// GoldenDigest computed while it was written), makes it mode 0444, removes
// an earlier golden at final, renames it there (never over another file),
// sets the immutable flag where the file system and the worker's
// privileges allow (Golden.Immutable says) and flushes the directory.
func SealGoldenFile(ctx context.Context, key, prepared, final, digest string) (Golden, error) {
	f, err := os.OpenFile(prepared, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return Golden{}, fmt.Errorf("seal golden of %s: %w", key, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return Golden{}, fmt.Errorf("flush golden of %s: %w", key, err)
	}
	st, err := f.Stat()
	if err != nil {
		return Golden{}, fmt.Errorf("stat golden of %s: %w", key, err)
	}
	if !st.Mode().IsRegular() {
		return Golden{}, fmt.Errorf("seal golden of %s: %s is not a regular file", key, prepared)
	}
	if digest == "" {
		if digest, err = GoldenDigestFile(ctx, f, st.Size()); err != nil {
			return Golden{}, fmt.Errorf("hash golden of %s: %w", key, err)
		}
	}
	if err := f.Chmod(0o444); err != nil {
		return Golden{}, fmt.Errorf("make golden of %s read-only: %w", key, err)
	}
	if err := RemoveGoldenFile(final); err != nil {
		return Golden{}, err
	}
	if err := fsutil.RenameNoReplace(prepared, final); err != nil {
		return Golden{}, fmt.Errorf("move golden of %s into place: %w", key, err)
	}
	g := Golden{Key: key, Path: final, Size: st.Size(), Digest: digest}
	switch err := setImmutable(f, true); {
	case err == nil:
		g.Immutable = true
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.ENOTTY), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EINVAL):
		// No CAP_LINUX_IMMUTABLE, or no flags here: mode 0444 only.
	default:
		return Golden{}, fmt.Errorf("make golden of %s immutable: %w", key, err)
	}
	return g, fsutil.SyncDir(filepath.Dir(final))
}

// RemoveGoldenFile removes a sealed golden file, clearing its immutable
// flag first; a missing file is not an error.
func RemoveGoldenFile(p string) error {
	if err := ClearImmutable(p); err != nil {
		return fmt.Errorf("clear the immutable flag of golden %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove golden %s: %w", p, err)
	}
	return nil
}

// ValidGoldenKey accepts cache keys as the cache makes them (hex digests),
// so that a key is safe in a file or volume name.
func ValidGoldenKey(key string) error { return validKey(key) }

// GoldenKeysIn is a backend's GoldenKeys from the directory entries where
// it keeps its goldens: keyOf names the key of an entry that is a golden
// or one being prepared (false for any other). Each valid key comes once,
// sorted.
func GoldenKeysIn(ents []os.DirEntry, keyOf func(name string) (key string, ok bool)) []string {
	seen := map[string]bool{}
	for _, d := range ents {
		if key, ok := keyOf(d.Name()); ok && ValidGoldenKey(key) == nil {
			seen[key] = true
		}
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// validKey accepts cache keys as the cache makes them: hex digests.
func validKey(key string) error {
	if len(key) == 0 || len(key) > 128 || strings.Trim(key, "0123456789abcdef") != "" {
		return fmt.Errorf("golden key %q is not a hex digest", key)
	}
	return nil
}
