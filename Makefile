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

.PHONY: all build image test deps check unit deploy-check browser fuzz smoke bench run clean

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
# end-to-end tests under the race detector, short fuzz runs, and a small
# load smoke run that asserts zero loss; the chat page in headless Chromium
# after the unit tests.
test: deps check unit deploy-check browser fuzz smoke

# deps installs redis-server and redis-cli from Debian's packages when the
# machine lacks them: the tests start their own servers on free ports.
deps:
	@echo "== make test: checking the tools the tests need (redis-server, redis-cli)"
	@if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then \
		echo "installing redis-server (Debian package) for the tests"; \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server redis-tools; \
	fi
	@redis-server --version

check:
	@echo "== make test: gofmt and go vet"
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# The allocation guards run again without the race detector, which makes
# sync.Pool drop items and so skips them.
unit:
	@echo "== make test: every unit and end-to-end test under the race detector (a few minutes; they start their own redis-server processes)"
	$(GO) test -race -count=1 -timeout 15m ./...
	@echo "== make test: allocation guards without the race detector"
	$(GO) test -count=1 -run 'Allocs|Allocat' ./...

# deploy-check validates deploy/ against the real schemas: the k8s
# manifests decode strictly into k8s.io/api types, the compose file loads
# with compose-go, .dockerignore as Docker reads it. deploy/validate is a
# module of its own, so these libraries stay out of the gateway's go.mod.
deploy-check:
	@echo "== make test: deploy files against the Kubernetes API types, the Compose loader and Docker's .dockerignore rules"
	cd deploy/validate && $(GO) vet ./... && $(GO) test -count=1 ./...

# browser runs the chat page in headless Chromium (test/browser, driven by
# playwright-core): it installs Debian's chromium when /usr/bin/chromium is
# missing, the pinned npm packages, builds the gateway and runs the test,
# which starts its own redis-server and gateway. It fails, never skips.
browser: deps
	@echo "== make test: the chat page in headless Chromium (two pages, a gateway restart; about 10 s)"
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "installing chromium (Debian package) for the browser test"; \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; \
	fi
	@if ! command -v npm >/dev/null 2>&1; then \
		echo "installing nodejs and npm (Debian packages) for the browser test"; \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm; \
	fi
	cd test/browser && npm ci --no-audit --no-fund --loglevel=error
	$(GO) build -o $(BIN)/gateway ./cmd/gateway
	cd test/browser && GATEWAY_BIN=$(CURDIR)/$(BIN)/gateway CHROMIUM=/usr/bin/chromium node chat.test.mjs
	cd test/browser && node validate-asyncapi.mjs ../../docs/asyncapi.yaml

fuzz:
	@echo "== make test: fuzzing the frame reader and the message decoder, $(FUZZTIME) each"
	$(GO) test -run '^$$' -fuzz '^FuzzReadFrame$$' -fuzztime $(FUZZTIME) ./pkg/conn
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeMessage$$' -fuzztime $(FUZZTIME) ./pkg/room

smoke: build
	@echo "== make test: 1 000-connection smoke load on two gateway nodes and a Redis"
	scripts/smoke.sh

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/...

clean:
	rm -rf $(BIN)
