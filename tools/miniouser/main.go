// Command miniouser gives a MinIO server a read-only user for one bucket,
// through MinIO's admin API, with the root credentials: it creates the
// bucket if it is missing, a canned policy "<user>-read" that allows only
// reading objects of that bucket (s3:GetObject, s3:ListBucket,
// s3:GetBucketLocation), and the user with that policy. Running it again
// sets the user's secret anew. scripts/run.sh uses it so that the demo's
// worker never holds MinIO's root credentials.
//
//	MINIO_ROOT_USER=… MINIO_ROOT_PASSWORD=… MINIO_USER_SECRET=… \
//	  miniouser -endpoint 127.0.0.1:9000 -bucket images -user provisioner-worker
//
// It is its own module (like tools/natscli) so that the provisioner's
// binaries do not link what it needs.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/signer"
	"github.com/secure-io/sio-go"
	"golang.org/x/crypto/argon2"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "miniouser:", err)
		os.Exit(1)
	}
}

func run() error {
	endpoint := flag.String("endpoint", "127.0.0.1:9000", "MinIO endpoint, host:port")
	secure := flag.Bool("tls", false, "use https")
	bucket := flag.String("bucket", "images", "the bucket the user may read")
	user := flag.String("user", "provisioner-worker", "the user's access key")
	flag.Parse()
	root, rootSecret, secret := os.Getenv("MINIO_ROOT_USER"), os.Getenv("MINIO_ROOT_PASSWORD"), os.Getenv("MINIO_USER_SECRET")
	if root == "" || rootSecret == "" || len(secret) < 8 {
		return errors.New("set MINIO_ROOT_USER, MINIO_ROOT_PASSWORD and MINIO_USER_SECRET (the new user's secret, at least 8 characters)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := admin{endpoint: *endpoint, secure: *secure, access: root, secret: rootSecret}
	if err := a.ensureBucket(ctx, *bucket); err != nil {
		return err
	}
	policyName := *user + "-read"
	if err := a.call(ctx, "add-canned-policy", url.Values{"name": {policyName}}, readPolicy(*bucket)); err != nil {
		return fmt.Errorf("add policy %s: %w", policyName, err)
	}
	req, _ := json.Marshal(map[string]string{"secretKey": secret, "status": "enabled"})
	body, err := encrypt(rootSecret, req)
	if err != nil {
		return err
	}
	if err := a.call(ctx, "add-user", url.Values{"accessKey": {*user}}, body); err != nil {
		return fmt.Errorf("add user %s: %w", *user, err)
	}
	q := url.Values{"policyName": {policyName}, "userOrGroup": {*user}, "isGroup": {"false"}}
	if err := a.call(ctx, "set-user-or-group-policy", q, nil); err != nil {
		return fmt.Errorf("give user %s policy %s: %w", *user, policyName, err)
	}
	return nil
}

// readPolicy allows reading the objects of bucket and nothing else.
func readPolicy(bucket string) []byte {
	p, _ := json.Marshal(map[string]any{
		"Version": "2012-10-17",
		"Statement": []map[string]any{
			{"Effect": "Allow", "Action": []string{"s3:GetBucketLocation", "s3:ListBucket"}, "Resource": []string{"arn:aws:s3:::" + bucket}},
			{"Effect": "Allow", "Action": []string{"s3:GetObject"}, "Resource": []string{"arn:aws:s3:::" + bucket + "/*"}},
		},
	})
	return p
}

// admin calls MinIO's admin API (/minio/admin/v3) as the root user.
type admin struct {
	endpoint, access, secret string
	secure                   bool
}

func (a admin) ensureBucket(ctx context.Context, bucket string) error {
	c, err := minio.New(a.endpoint, &minio.Options{Creds: credentials.NewStaticV4(a.access, a.secret, ""), Secure: a.secure})
	if err != nil {
		return err
	}
	ok, err := c.BucketExists(ctx, bucket)
	if err != nil {
		return fmt.Errorf("look up bucket %s: %w", bucket, err)
	}
	if !ok {
		if err := c.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
			return fmt.Errorf("create bucket %s: %w", bucket, err)
		}
	}
	return nil
}

// call sends one signed PUT to the admin API.
func (a admin) call(ctx context.Context, op string, q url.Values, body []byte) error {
	scheme := "http"
	if a.secure {
		scheme = "https"
	}
	u := scheme + "://" + a.endpoint + "/minio/admin/v3/" + op + "?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	sum := sha256.Sum256(body)
	req.Header.Set("X-Amz-Content-Sha256", hex.EncodeToString(sum[:]))
	req.ContentLength = int64(len(body))
	req = signer.SignV4(*req, a.access, a.secret, "", "us-east-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// encrypt seals data for the admin API's add-user body: salt (32 bytes),
// the AEAD id (0: Argon2id key, AES-256-GCM), an 8-byte nonce, then a sio
// stream, keyed from the root secret.
func encrypt(password string, data []byte) ([]byte, error) {
	salt := make([]byte, 32)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	key := argon2.IDKey([]byte(password), salt, 1, 64*1024, 4, 32)
	stream, err := sio.AES_256_GCM.Stream(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, stream.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	out.Write(salt)
	out.WriteByte(0x00)
	out.Write(nonce)
	w := stream.EncryptWriter(&out, nonce, nil)
	if _, err := w.Write(data); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
