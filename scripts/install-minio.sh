#!/usr/bin/env bash
# Builds the pinned MinIO server from the Go module proxy into $(go env GOPATH)/bin
# (about 4 minutes the first time, seconds afterwards from the build cache).
set -euo pipefail
MINIO_VERSION=${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}
bin="$(go env GOPATH)/bin/minio"
stamp="$(go env GOPATH)/bin/.minio-version"
if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$MINIO_VERSION" ]; then
  exit 0
fi
echo "building MinIO server $MINIO_VERSION (first time: about 4 minutes)..." >&2
go install "github.com/minio/minio@$MINIO_VERSION"
echo "$MINIO_VERSION" > "$stamp"
