# baton — every entry point a developer or CI needs. `make help` lists them.

CARGO ?= cargo
RELEASE_DIR ?= target/release
VERSION ?= dev
export CONTAINERS_CONF ?= $(CURDIR)/images/containers.conf

.PHONY: all help build demo deps test lint unit test-pod image bench bench-smoke fuzz clean

all: build

## help: list the targets
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

## build: release build of the baton binary and the examples (upstream, loadgen, demo)
build:
	$(CARGO) build --release --locked --bins --examples

## demo: two Kruise-style hot upgrades of baton under load, on loopback (see examples/demo.rs)
demo: build
	$(RELEASE_DIR)/examples/demo

## deps: install the Debian packages `make test` needs, the missing ones only (as root; otherwise it names them)
deps:
	bash scripts/deps.sh test

## test: everything — lint, unit and integration tests, the real-container pod test, the bench harness smoke
test: deps lint unit test-pod bench-smoke

## lint: rustfmt, clippy and rustdoc (warnings are errors) on every crate; no import cycle between modules
lint:
	python3 scripts/check-layout.py src
	python3 scripts/check-layout.py migrate/src
	python3 scripts/check-msrv.py
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path images/empty/Cargo.toml -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --no-deps -p baton -p baton-migrate
	$(CARGO) clippy --locked --manifest-path images/empty/Cargo.toml -- -D warnings
	$(CARGO) fmt --manifest-path bench/tools/Cargo.toml -- --check
	$(CARGO) fmt --manifest-path bench/chart/Cargo.toml -- --check
	$(CARGO) fmt --manifest-path migrate/fuzz/Cargo.toml -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --locked --manifest-path bench/tools/Cargo.toml --target-dir target/bench -- -D warnings
	$(CARGO) clippy --locked --manifest-path bench/chart/Cargo.toml --target-dir target/bench -- -D warnings

## unit: unit, protocol and process-level integration tests (cargo test; needs promtool, kill, python3-grpcio: scripts/deps.sh), and the bench tools' HTTP/2 and HPACK tests
unit:
	bash scripts/deps.sh unit
	$(CARGO) test --locked --workspace
	$(CARGO) test --locked --manifest-path bench/tools/Cargo.toml --target-dir target/bench

## test-pod: the Kruise HotUpgrade sequence in a real podman pod (as root; needs podman, runc, catatonit, curl, jq)
test-pod:
	bash scripts/deps.sh test-pod
	bash scripts/pod-test.sh

## image: container images baton:$(VERSION) and baton-empty:$(VERSION) (make image VERSION=v2)
image:
	VERSION=$(VERSION) CARGO=$(CARGO) bash scripts/image.sh

## bench: baton vs direct, nginx and HAProxy on loopback (a few minutes): bench/results.{md,json,png}
bench:
	CARGO=$(CARGO) bash scripts/bench.sh

## bench-smoke: every bench scenario for ~1 s, proves the harness works (part of make test)
bench-smoke:
	CARGO=$(CARGO) bash scripts/bench.sh --smoke

FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= frame_decoder conn_stream h1_request h1_response h1_chunked

## fuzz: each fuzz target in FUZZ_TARGETS for $(FUZZ_SECONDS) s: baton-migrate's frame_decoder, conn_stream (migrate/fuzz) and the HTTP/1 engine's h1_request, h1_response, h1_chunked (fuzz); nightly toolchain, installs cargo-fuzz if missing
fuzz:
	$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
		if [ -e migrate/fuzz/fuzz_targets/$$t.rs ]; then dir=migrate; else dir=.; fi; \
		mkdir -p $$dir/fuzz/corpus/$$t && \
		(cd $$dir && $(CARGO) +nightly fuzz run $$t fuzz/corpus/$$t fuzz/seeds/$$t -- -max_total_time=$(FUZZ_SECONDS)) || exit 1; \
	done

## clean: remove build outputs
clean:
	$(CARGO) clean
	rm -rf images/empty/target
