# The front door: make demo, make test, make run, make bench, make lint.
SHELL := /bin/bash
GO ?= go
BIN := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/libvirt-volume-provisioner/provisioner/internal/version.Version=$(VERSION)
# libdeflate: the native converter decompresses zlib clusters with libdeflate
# (cgo, Debian's libdeflate-dev) instead of compress/flate; about 2x faster.
# Every go command make runs, the tests' own builds included, gets the tag;
# GO_TAGS= builds without it.
GO_TAGS ?= libdeflate
export GOFLAGS := $(GOFLAGS) -tags=$(GO_TAGS)

.PHONY: all build deps run demo test unit integration bench bench-quick fleet fleet-figures fleet-quick lint clean e2e-lvm fuzz

all: build

## build: compile bin/api, bin/worker and bin/provisionerctl
build:
	@if echo "$(GO_TAGS)" | grep -qw libdeflate && ! echo '#include <libdeflate.h>' | $${CC:-cc} -E -x c - >/dev/null 2>&1; then \
		echo "libdeflate.h not found: run make deps (installs Debian's libdeflate-dev), or build without it: make build GO_TAGS=" >&2; exit 1; fi
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/api ./cmd/worker ./cmd/provisioner-nats ./cmd/provisionerctl

## deps: install what the tests and the demo need (Debian packages, MinIO server)
deps:
	scripts/install-deps.sh

## run: start the API (embedded NATS) and one worker (host "local", file backend), state under ./var
run: build
	scripts/run.sh

## demo: run everything on one machine and provision two volumes from a realistic QCOW2 in MinIO
demo: deps build
	demo/run.sh

## test: unit and integration tests against real NATS, MinIO, qemu-img, libvirtd, loop devices, and LVM in a guest VM
test: deps
	$(GO) vet ./...
	GO=$(GO) scripts/gotest.sh -count=1 -timeout 20m ./...
	$(GO) test -count=1 -tags= -run 'Native|Stream' ./pipeline/convert ./pipeline/imagecache  # compress/flate, without libdeflate
	$(MAKE) fuzz FUZZTIME=2000x
	tests/lvmguest/run.sh

## e2e-lvm: the LVM backend against real LVM, in a small QEMU VM (tests/lvmguest/README.md)
e2e-lvm:
	tests/lvmguest/run.sh

## unit: the tests that need nothing but Go
unit:
	$(GO) test -count=1 ./messaging/... ./kvstate/... ./config/... ./api/... ./client/...

## bench: Go microbenchmarks, then the side-by-side harness (root; several minutes; writes BENCHMARKS.md)
bench: deps build
	$(GO) test -run '^$$' -bench . -benchmem ./...
	$(GO) run ./bench $(BENCH_ARGS)

## bench-quick: smoke run of the harness (small image, loopback only, one run; prints only)
bench-quick: build
	$(GO) run ./bench -quick

## fleet: the fleet harness (tests/fleet): 3-node NATS cluster, two APIs, 1,000 simulated hypervisors, 10,000 jobs (minutes)
FLEET_ARGS ?= -hosts 1000 -jobs 10000 -rate 1000 -duration 1s
fleet:
	$(GO) run ./tests/fleet $(FLEET_ARGS)

## fleet-figures: the BENCHMARKS.md fleet matrix: both dispatch layouts at 100, 1,000 and 2,000 hosts, 10,000 jobs each, then latency, operations per job and a node kill (about half an hour; outputs in var/fleet-figures)
fleet-figures:
	scripts/fleet-figures.sh $(FLEET_SIZES)

## fleet-quick: the same with 50 hosts and 500 jobs (under a minute)
fleet-quick:
	$(GO) run ./tests/fleet -hosts 50 -jobs 500 -rate 100 -duration 1s $(FLEET_ARGS_QUICK)

## lint: formatting and vet
lint:
	@test -z "$$(gofmt -l .)" || (gofmt -l .; exit 1)
	$(GO) vet ./...

clean:
	rm -rf $(BIN) var

FUZZTIME ?= 30s
FUZZ_TARGETS = messaging:FuzzDecodeJob messaging:FuzzParseImageURL messaging:FuzzValidateVolumeName \
               pipeline/source:FuzzParseChecksum pipeline/image:FuzzInspect auth:FuzzVerify

## fuzz: run each fuzz target for FUZZTIME (make test runs them briefly)
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t#*:}; \
		echo "== fuzz ./$$pkg $$name ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) ./$$pkg; \
	done
