# Turnpike build helper. `make run` and `make test` are the two commands of the README.
SHELL := /bin/bash
CONFIG ?= conf/quickstart.toml

.PHONY: setup run test check lint bench loadtest

# Installs what the build needs (cmake, for zlib-ng inside Pingora) or says how to.
setup:
	@if ! command -v cmake >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing cmake (needed to build Pingora's zlib-ng)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null; \
	  else \
	    echo "cmake is missing: run 'sudo apt-get install -y cmake' and try again"; exit 1; \
	  fi; \
	fi
	@command -v cargo >/dev/null 2>&1 || { echo "cargo is missing: install Rust from https://rustup.rs and try again"; exit 1; }

# Builds a release binary and runs the gateway on $(CONFIG) in the foreground.
run: setup
	cargo build --release
	./target/release/turnpike check -c $(CONFIG)
	./target/release/turnpike run -c $(CONFIG)

# The whole test suite: unit, integration (real binary, real upstreams on loopback) and CLI tests.
# The systemd unit test needs systemd-analyze and the fleet tests a real redis-server (each test
# starts its own on a free loopback port): both are installed as root, or the tests say how.
test: setup
	@missing=""; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing (for the systemd unit and fleet tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing:$$missing; run 'sudo apt-get install -y$$missing' and try again"; exit 1; \
	  fi; \
	fi
	cargo test --all-targets

check: setup
	cargo build --release
	./target/release/turnpike check -c $(CONFIG)

lint: setup
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

bench: setup
	cargo bench --bench routing --bench identity --bench limits --bench cache --bench analytics

# Load tests against the direct backend and nginx, on loopback; appends to loadtest/RESULTS.md.
loadtest: setup
	python3 loadtest/run.py --record
