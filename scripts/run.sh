#!/usr/bin/env bash
# Starts the provisioner on one machine: a MinIO server (unless MINIO_ENDPOINT
# is set), the API with its embedded NATS server, and one worker (host
# "local", file backend), all with state under ./var. With arguments, runs
# that command once everything is up and then stops it all; without, runs
# until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
VAR=$(realpath -m "${PROVISIONER_DATA_DIR:-./var}")
mkdir -p "$VAR"
export PATH="$PATH:$(go env GOPATH)/bin"
export MINIO_ACCESS_KEY=${MINIO_ACCESS_KEY:-provisioner}
export MINIO_SECRET_KEY=${MINIO_SECRET_KEY:-provisioner-secret}
# The buckets images may come from (API and worker refuse others).
export PROVISIONER_IMAGE_BUCKETS=${PROVISIONER_IMAGE_BUCKETS:-images}
# The worker's own MinIO credentials: with the MinIO started here, a
# read-only user for the images bucket (never the root user above, which only
# the demo's upload uses); with your MinIO, yours (default: MINIO_ACCESS_KEY).
WORKER_MINIO_ACCESS_KEY=${WORKER_MINIO_ACCESS_KEY:-}
WORKER_MINIO_SECRET_KEY=${WORKER_MINIO_SECRET_KEY:-}
API_ADDR=${API_ADDR:-127.0.0.1:8080}
WORKER_ADDR=${WORKER_ADDR:-127.0.0.1:8081}
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
wait_http() { # url what log
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not come up; its log ($3):" >&2; tail -20 "$3" >&2; exit 1
}
for a in "$API_ADDR" "$WORKER_ADDR" "${PROVISIONER_NATS_LISTEN:-127.0.0.1:4222}"; do
  port_free "$a" || { echo "address $a is in use: stop what listens there (another 'make run'?)" >&2; exit 1; }
done

if [ -z "${MINIO_ENDPOINT:-}" ]; then
  export MINIO_ENDPOINT=127.0.0.1:9000
  port_free "$MINIO_ENDPOINT" || { echo "address $MINIO_ENDPOINT is in use: stop it, or set MINIO_ENDPOINT to your MinIO" >&2; exit 1; }
  mkdir -p "$VAR/minio" && chmod 700 "$VAR/minio"   # the object data and MinIO's IAM: nobody else's to read
  MINIO_ROOT_USER=$MINIO_ACCESS_KEY MINIO_ROOT_PASSWORD=$MINIO_SECRET_KEY MINIO_BROWSER=off \
    minio server --quiet --address "$MINIO_ENDPOINT" --console-address 127.0.0.1:9001 "$VAR/minio" >>"$VAR/minio.log" 2>&1 &
  pids+=($!)
  wait_http "http://$MINIO_ENDPOINT/minio/health/live" MinIO "$VAR/minio.log"
  WORKER_MINIO_ACCESS_KEY=${WORKER_MINIO_ACCESS_KEY:-provisioner-worker}
  WORKER_MINIO_SECRET_KEY=${WORKER_MINIO_SECRET_KEY:-$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')}
  images_bucket=${PROVISIONER_IMAGE_BUCKETS%%,*}; images_bucket=${images_bucket%%/*}   # the first allowed bucket
  go build -C tools/miniouser -o "$PWD/bin/miniouser" .
  MINIO_ROOT_USER=$MINIO_ACCESS_KEY MINIO_ROOT_PASSWORD=$MINIO_SECRET_KEY MINIO_USER_SECRET=$WORKER_MINIO_SECRET_KEY \
    bin/miniouser -endpoint "$MINIO_ENDPOINT" -bucket "$images_bucket" -user "$WORKER_MINIO_ACCESS_KEY"
  echo "MinIO        http://$MINIO_ENDPOINT (root access key $MINIO_ACCESS_KEY; the worker's, read-only on bucket $images_bucket: $WORKER_MINIO_ACCESS_KEY), data in $VAR/minio"
fi

MINIO_ACCESS_KEY= MINIO_SECRET_KEY= PROVISIONER_HTTP_ADDR=$API_ADDR PROVISIONER_DATA_DIR=$VAR PROVISIONER_DEFAULT_HYPERVISOR=${PROVISIONER_DEFAULT_HYPERVISOR:-local} \
  bin/api >>"$VAR/api.log" 2>&1 &
pids+=($!)
wait_http "http://$API_ADDR/livez" API "$VAR/api.log"
echo "API          http://$API_ADDR (embedded NATS on nats://${PROVISIONER_NATS_LISTEN:-127.0.0.1:4222}, operator key $VAR/credentials/admin.nk), log $VAR/api.log"

PROVISIONER_HTTP_ADDR=$WORKER_ADDR PROVISIONER_HOST=${PROVISIONER_HOST:-local} PROVISIONER_NATS_URL=nats://${PROVISIONER_NATS_LISTEN:-127.0.0.1:4222} \
  PROVISIONER_NATS_NKEY=$VAR/credentials/worker.nk \
  MINIO_ACCESS_KEY=${WORKER_MINIO_ACCESS_KEY:-$MINIO_ACCESS_KEY} MINIO_SECRET_KEY=${WORKER_MINIO_SECRET_KEY:-$MINIO_SECRET_KEY} \
  PROVISIONER_CACHE_DIR=${PROVISIONER_CACHE_DIR:-$VAR/cache} PROVISIONER_VOLUME_BACKEND=file PROVISIONER_VOLUME_DIR=${PROVISIONER_VOLUME_DIR:-$VAR/volumes} \
  bin/worker >>"$VAR/worker.log" 2>&1 &
pids+=($!)
wait_http "http://$WORKER_ADDR/livez" worker "$VAR/worker.log"
for _ in $(seq 1 100); do grep -q '"worker started"' "$VAR/worker.log" && break; sleep 0.1; done
echo "worker       host ${PROVISIONER_HOST:-local}, metrics http://$WORKER_ADDR/metrics, volumes in ${PROVISIONER_VOLUME_DIR:-$VAR/volumes}, log $VAR/worker.log"

if [ $# -gt 0 ]; then
  API_URL="http://$API_ADDR" VAR="$VAR" "$@"
else
  echo "running; Ctrl-C stops everything"
  wait -n "${pids[@]}"
fi
