# The gateway's build and test entry points. `make test` is what CI runs
# (.ci/run): it installs what the tests need and then runs every test.

GO       ?= go
FUZZTIME ?= 20s
BIN      := bin
IMAGE    ?= chat:1

# VERSION and REVISION are stamped into the gateway (gateway -version, the
# start log line, the chat_build_info metric); set them for a release.
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X main.version=$(VERSION) -X main.revision=$(REVISION)

.PHONY: all build image test deps check unit network deploy-check browser fuzz smoke loadtest-ci bench run clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/gateway ./cmd/gateway
	$(GO) build -o $(BIN)/loadgen ./cmd/loadgen

# image builds the container image with the same stamp (the build context
# has no .git, so the Dockerfile takes them as build args).
image:
	docker build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMAGE) .

run:
	$(GO) run ./cmd/gateway

# test: everything CI checks, in order: tools, static checks, unit and
# end-to-end tests under the race detector, the network tests (root), the deploy files against their
# schemas, the chat page in headless Chromium, short fuzz runs, and a
# small load smoke run that asserts zero loss. On a machine that has run it
# before it takes about 9 min (2 cores; 3 of them the network tests); the first run on a new machine
# also installs chromium (about 25 Debian packages, without recommends,
# ~30 s) and the pinned npm packages, downloads the Go modules and compiles
# everything, the race and fuzz builds and k8s.io/api included: about
# 17 min. Installs are quiet: their output goes to a log printed only on
# failure. Each step's message says how long it takes.
test: deps check unit network deploy-check browser fuzz smoke loadtest-ci

# deps installs redis-server and redis-cli, and haproxy, from Debian's
# packages when the machine lacks them: the tests start their own servers
# on free ports.
deps:
	@echo "== make test: tools the tests need: redis-server, redis-cli, haproxy"
	@command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || \
		scripts/apt-install.sh "the tests' own Redis servers" "about 20 s" redis-server redis-tools
	@command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || \
		scripts/apt-install.sh "the proxy test" "about 15 s" haproxy
	@redis-server --version

# quietly runs a command with its output in a log that is printed only
# when it fails: $(call quietly,what,command).
quietly = log=$$(mktemp /tmp/make-test.XXXXXX); ($(2)) >$$log 2>&1 || { cat $$log; echo "$(1) failed (output above)"; rm -f $$log; exit 1; }; rm -f $$log

check:
	@echo "== make test: Go modules (downloaded the first time), gofmt and go vet (seconds; about 2 min the first time)"
	@$(call quietly,downloading the Go modules,$(GO) list -deps -test ./...)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags network ./internal/netlab/ ./test/network/

# unit prints a line per package as it finishes and, every 15 s, which
# packages still run (internal/testprogress reads go test -json); failed
# tests' output comes at the end. The allocation guards run again without
# the race detector, which makes sync.Pool drop items and so skips them.
unit:
	@echo "== make test: every unit and end-to-end test under the race detector (about 1.5-2 min; about 4.5 min the first time; they start their own redis-server processes)"
	@$(GO) run ./internal/testprogress $(GO) test -race -count=1 -timeout 15m -json ./...
	@echo "== make test: allocation guards without the race detector (about 15 s)"
	@$(GO) run ./internal/testprogress $(GO) test -count=1 -run 'Allocs|Allocat' -json ./...

# network runs the tests on a network of hosts built inside this machine
# (internal/netlab: network namespaces on a bridge, links cut and shaped;
# test/network: the gateway with a client host cut off, Redis cut off,
# Sentinel and Cluster failovers under traffic). They need root
# and iproute2 (installed when missing); without root the target fails,
# never skips. Everything they make is removed afterwards.
network:
	@echo "== make test: the network tests: hosts as network namespaces on a bridge, links cut and shaped, a client host and a gateway's Redis cut off, resets, latency, Redis failovers under 2 000 msg/s with Sentinel and Cluster (about 3 min; needs root)"
	@command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || scripts/apt-install.sh "the network tests" "about 10 s" iproute2
	@[ "$$(id -u)" = 0 ] || { echo "make network: the network tests build network namespaces, which needs root: run it as root (CI does)"; exit 1; }
	@$(GO) run ./internal/testprogress $(GO) test -tags network -count=1 -timeout 10m -json ./internal/netlab/ ./test/network/

# deploy-check validates deploy/ against the real schemas: the k8s
# manifests decode strictly into k8s.io/api types, the compose file loads
# with compose-go, .dockerignore as Docker reads it. deploy/validate is a
# module of its own, so these libraries stay out of the gateway's go.mod.
deploy-check:
	@echo "== make test: deploy files against the Kubernetes API types, the Compose loader and Docker's .dockerignore rules (seconds; about 1.5 min the first time: modules to download, k8s.io/api to compile)"
	@$(call quietly,downloading deploy/validate's modules,cd deploy/validate && $(GO) list -deps -test ./...)
	@cd deploy/validate && $(GO) vet ./... && $(GO) test -count=1 ./...

# browser runs the chat page in headless Chromium (test/browser, driven by
# playwright-core): it installs Debian's chromium (without recommends: the
# smallest set that runs it headless) when /usr/bin/chromium is missing,
# the pinned npm packages, builds the gateway and runs the test, which
# starts its own redis-server and gateway. It fails, never skips.
browser: deps
	@echo "== make test: the chat page in headless Chromium (two pages, a gateway restart): about 35 s, plus about 30 s the first time to install chromium"
	@[ -x /usr/bin/chromium ] || scripts/apt-install.sh "the browser test" "about 1 min" chromium
	@command -v npm >/dev/null 2>&1 || scripts/apt-install.sh "the browser test" "about 1 min" nodejs npm
	@$(call quietly,npm ci of test/browser,cd test/browser && npm ci --no-audit --no-fund)
	@$(GO) build -o $(BIN)/gateway ./cmd/gateway
	@cd test/browser && GATEWAY_BIN=$(CURDIR)/$(BIN)/gateway CHROMIUM=/usr/bin/chromium node chat.test.mjs
	@cd test/browser && node validate-asyncapi.mjs ../../docs/asyncapi.yaml

fuzz:
	@echo "== make test: fuzzing the frame reader, the request-head rules and the message decoder, $(FUZZTIME) each (about 2 min with the builds; about 3.5 min the first time)"
	$(GO) test -run '^$$' -fuzz '^FuzzReadFrame$$' -fuzztime $(FUZZTIME) ./pkg/conn
	$(GO) test -run '^$$' -fuzz '^FuzzCheckHead$$' -fuzztime $(FUZZTIME) ./pkg/conn
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeMessage$$' -fuzztime $(FUZZTIME) ./pkg/room

smoke: build
	@echo "== make test: 1 000-connection smoke load on two gateway nodes and a Redis (about 15 s)"
	scripts/smoke.sh

# loadtest-ci is the scaled-down million-connection run of BENCHMARKS.md
# section 15: 20 000 connections in rooms of 100 over two gateway and two
# loadgen processes (each from its own source addresses), one Redis; it
# fails on any loss, duplicate, reordering or failed connection.
loadtest-ci: build
	@echo "== make test: 20 000 connections over 2 gateways and 2 load processes, 10 s of fan-out (about 25 s)"
	CONNS=20000 ROOMS=200 GATEWAYS=2 LOADGENS=2 RATE=1 HOLD=3s DURATION=10s DRAIN=3s scripts/loadtest.sh

# soak runs the model-based test of the message path (cmd/gateway
# TestModel) over many seeds; make test runs a short budget of 8. A
# failure prints its seed: MODEL_SEED=<n> go test -run TestModel
# ./cmd/gateway replays it.
MODEL_SEEDS ?= 400
soak: deps
	MODEL_SEEDS=$(MODEL_SEEDS) $(GO) test -race -count=1 -timeout 4h -run '^TestModel$$' ./cmd/gateway

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/...

clean:
	rm -rf $(BIN)
