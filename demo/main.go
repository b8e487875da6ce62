// Command demo shows the provisioner end to end on one machine: it builds a
// realistic QCOW2 (an ext4 filesystem holding the Go source tree, zlib
// compressed), uploads it with its .sha256 to MinIO, provisions a volume
// with provisionerctl (a live progress bar on a terminal), provisions a second one from
// the cache, and checks both against the image with qemu-img compare.
// demo/run.sh starts the services it talks to.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

func main() {
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func run(ctx context.Context) error {
	api := env("API_URL", "http://127.0.0.1:8080")
	varDir := env("VAR", "var")
	endpoint := env("MINIO_ENDPOINT", "127.0.0.1:9000")
	ctl := env("PROVISIONERCTL", "bin/provisionerctl")
	work := filepath.Join(varDir, "demo")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	img, err := buildImage(work)
	if err != nil {
		return err
	}
	url, err := upload(ctx, endpoint, img)
	if err != nil {
		return err
	}
	fmt.Printf("\nimage        %s\n", url)

	var vols []string
	for i, name := range []string{"demo-vm-1", "demo-vm-2"} {
		fmt.Printf("\n== job %d: %s\n", i+1, name)
		rec, err := provision(ctl, api, url, name)
		if err != nil {
			return err
		}
		hit, _ := rec["cache_hit"].(bool)
		fmt.Printf("   completed: cache_hit=%v, image %v, volume %v\n", hit, rec["image_path"], rec["volume_path"])
		vols = append(vols, fmt.Sprint(rec["volume_path"]))
	}
	fmt.Println("\n== checking the volumes against the image (qemu-img compare; the volumes are larger than the image, and the rest must read as zeros)")
	for _, v := range vols {
		out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "qcow2", v, img).CombinedOutput()
		fmt.Printf("   %s: %s", v, out)
		if err != nil {
			return fmt.Errorf("volume %s differs from the image", v)
		}
	}
	fmt.Printf("\nThe volumes are raw disks in %s. Cached images: bin/provisionerctl cache ls (or curl %s/api/v1/cache/images)\n", filepath.Dir(vols[0]), api)
	fmt.Println("To keep the services running and try the REST API or the nats CLI yourself: make run (see README.md and subjects.md).")
	return nil
}

// buildImage makes an ext4 filesystem holding real files (the Go source
// tree), 1 GiB virtual, and converts it to a zlib-compressed QCOW2.
func buildImage(work string) (string, error) {
	img := filepath.Join(work, "go-src-ext4.qcow2")
	if _, err := os.Stat(img); err == nil {
		fmt.Printf("image        %s (built earlier)\n", img)
		return img, nil
	}
	src := filepath.Join(runtime.GOROOT(), "src")
	raw := filepath.Join(work, "go-src-ext4.raw")
	fmt.Printf("building     an ext4 filesystem holding %s, 1 GiB, compressed QCOW2...\n", src)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "demo", "-d", src, raw, "1G").CombinedOutput(); err != nil {
		return "", fmt.Errorf("mkfs.ext4 (Debian's e2fsprogs): %v: %s", err, out)
	}
	defer os.Remove(raw)
	if out, err := exec.Command("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, img+".tmp").CombinedOutput(); err != nil {
		return "", fmt.Errorf("qemu-img convert (Debian's qemu-utils): %v: %s", err, out)
	}
	if err := os.Rename(img+".tmp", img); err != nil {
		return "", err
	}
	st, _ := os.Stat(img)
	fmt.Printf("image        %s (%d MiB compressed)\n", img, st.Size()>>20)
	return img, nil
}

func upload(ctx context.Context, endpoint, path string) (string, error) {
	c, err := minio.New(endpoint, &minio.Options{Creds: credentials.NewStaticV4(os.Getenv("MINIO_ACCESS_KEY"), os.Getenv("MINIO_SECRET_KEY"), "")})
	if err != nil {
		return "", err
	}
	const bucket, object = "images", "demo/go-src-ext4.qcow2"
	if ok, err := c.BucketExists(ctx, bucket); err != nil {
		return "", fmt.Errorf("reach MinIO at %s: %w", endpoint, err)
	} else if !ok {
		if err := c.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
			return "", err
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	digest := hex.EncodeToString(h.Sum(nil))
	if _, err := c.FPutObject(ctx, bucket, object, path, minio.PutObjectOptions{}); err != nil {
		return "", fmt.Errorf("upload image: %w", err)
	}
	line := digest + "  " + filepath.Base(object) + "\n"
	if _, err := c.PutObject(ctx, bucket, object+".sha256", strings.NewReader(line), int64(len(line)), minio.PutObjectOptions{}); err != nil {
		return "", fmt.Errorf("upload checksum: %w", err)
	}
	fmt.Printf("uploaded     s3://%s/%s and its .sha256 (%s)\n", bucket, object, digest[:16])
	return fmt.Sprintf("http://%s/%s/%s", endpoint, bucket, object), nil
}

// provision runs provisionerctl submit --wait: a live progress bar on a
// terminal, a line per stage otherwise; its JSON output is the final record.
func provision(ctl, api, url, volume string) (map[string]any, error) {
	fmt.Printf("   $ provisionerctl submit --image %s --volume %s --size 2 --wait\n", url, volume)
	cmd := exec.Command(ctl, "submit", "--server", api, "--image", url, "--volume", volume, "--size", "2", "--wait", "-o", "json")
	cmd.Stdin, cmd.Stderr = os.Stdin, os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("provisionerctl submit %s: %w", volume, err)
	}
	var recs []map[string]any
	if err := json.Unmarshal(out, &recs); err != nil || len(recs) != 1 {
		return nil, fmt.Errorf("provisionerctl submit %s printed %q, not one job record", volume, out)
	}
	return recs[0], nil
}
