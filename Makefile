# make demo   build, then route a throwaway namespace through the appliance and run iperf3 across it
# make test   everything CI runs: lint, unit tests (-race), integration tests (root, real namespaces)
# make bench  the benchmark tables (docs/benchmarks.md, docs/cc.md) and Go benchmarks

SHELL   := /bin/bash
GO      ?= go
BIN     := bin/appliance
export PATH := $(PATH):/usr/local/go/bin
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build demo test unit integration lint bench bench-cc deps clean

all: build

build:
	$(GO) generate ./...
	$(GO) build -o $(BIN) ./cmd/appliance

deps:
	./scripts/install-deps.sh

demo: deps build
	$(BIN) bench --time 5s --mtu 1500

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags integration ./integration/... ./iptables/...
	$(GO) run $(STATICCHECK) ./...

unit:
	$(GO) test -race -count=1 -timeout 10m ./...

integration: deps build
	$(GO) test -race -count=1 -timeout 30m -tags integration -v ./integration/... ./iptables/...

test: build lint unit integration

bench: deps build
	$(BIN) bench --time 5s --repeat 3
	$(BIN) bench --mode router --time 5s --repeat 3
	$(BIN) bench --conns 10000,50000
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./...
	$(GO) test -tags integration -run '^$$' -bench 'Iptables' -benchtime 3x ./integration/
	$(MAKE) bench-cc

# The congestion-control matrix of docs/cc.md (about 30 minutes): netstack's
# Reno, CUBIC and BBR against the kernel's across the emulated path, three
# seeded rounds, and a deep queue for RTT inflation; the plot goes to bin/.
bench-cc: deps build
	$(BIN) bench --cc-matrix --repeat 3 --time 10s --cc-extra rate=100mbit,delay=20ms,limit=2000 --plot bin/cc-matrix.svg

clean:
	rm -rf bin integration.log
