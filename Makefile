# stt-tun build, test and demo entry points. `make test` is what CI runs.
GO      ?= go
BIN     ?= bin/stt-tun
PKGS    := ./...
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# urfave_cli_no_docs leaves out the CLI library's man-page and markdown generators,
# which stt-tun does not use; PPROF=1 adds Go's profiler (STT_TUN_PPROF). Both cost
# every daemon resident memory (docs/benchmarks.md).
TAGS    := urfave_cli_no_docs$(if $(PPROF), pprof)

.PHONY: all build test unit e2e vet fmt-check deps demo fuzz bench bench-mesh bench-nat lab-scale bench-scale clean

all: build

# The binary is static (CGO_ENABLED=0): nothing in it needs C, and not mapping libc and
# the dynamic loader saves every daemon 1.5 MiB of resident memory.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/stt-tun

# deps installs the few system tools the end-to-end tests and demo drive (as root, on Debian).
deps:
	@scripts/deps.sh

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)
	$(GO) vet -tags 'urfave_cli_no_docs pprof' ./cmd/stt-tun

# unit runs every package's tests with the race detector; fuzz seed corpora run as tests.
unit:
	$(GO) test -race -count=1 $(PKGS)

# e2e runs the network-namespace tests (root only); they build the binary themselves.
e2e: build deps
	$(GO) test -count=1 -tags e2e -timeout 15m ./tests/e2e/...

test: fmt-check vet unit e2e

demo: build deps
	scripts/demo.sh

FUZZTIME ?= 30s
fuzz:
	@scripts/fuzz.sh $(FUZZTIME)

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./stt/... ./tunnel/...

# bench-mesh measures the mesh in a six-node namespace lab (root, about 4 minutes):
# join times and bytes at rest (docs/benchmarks.md, "Mesh").
bench-mesh: build
	scripts/mesh-lab.sh

# bench-nat measures paths between members behind NAT routers in a namespace lab (root,
# about 5 minutes): the time from a member's first packet to another until status shows
# a direct path made by hole punching (easy × easy), or a path through a relay member
# (easy × hard, both ways) (docs/benchmarks.md, "Through NAT"). The figures are the
# "NAT PATHS" lines at the end; STT_NAT_BENCH_JSON=FILE also writes every run.
BENCH_NAT_RUNS ?= 5
bench-nat: build deps
	STT_NAT_BENCH=1 STT_NAT_BENCH_RUNS=$(BENCH_NAT_RUNS) $(GO) test -count=1 -tags e2e -timeout 40m \
		-run '^TestNATPathFigures$$' -v ./tests/e2e/

# lab-scale runs the fifty-node lab (root, about 9 minutes): 50 daemons in namespaces,
# two introducers and 48 members behind four NAT routers; the time from the last start
# until every node knows every other, bytes/s per node and CPU at rest, memory per
# daemon, and a ping matrix over 100 random pairs (docs/benchmarks.md,
# "Scale", "Fifty-node lab"). LAB50_FLAGS passes options to scripts/lab50.sh, e.g. LAB50_FLAGS='--rest 1m'.
LAB50_FLAGS ?=
lab-scale: build deps
	scripts/lab50.sh $(LAB50_FLAGS)

# bench-scale measures one engine (stt node + tunnel on an in-memory TUN) with 10, 100
# and 1000 peers on loopback: memory per peer with a record only and with an idle
# session, goroutines, CPU and wake-ups at rest, handshakes a responder completes on one
# core, status JSON time and size (docs/benchmarks.md, "Scale"; no root, about 5
# minutes). SCALE_ARGS passes flags, e.g. SCALE_ARGS='-n 10,100 -rest 3s'.
SCALE_ARGS ?=
bench-scale:
	$(GO) build -o bin/stt-scale ./internal/cmd/stt-scale
	bin/stt-scale $(SCALE_ARGS)

clean:
	rm -rf bin
