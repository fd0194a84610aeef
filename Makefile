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
# The systemd unit test needs systemd-analyze (installed as root, or the test says how).
test: setup
	@if ! command -v systemd-analyze >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing systemd (systemd-analyze checks the shipped unit)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; \
	fi
	cargo test --all-targets

check: setup
	cargo build --release
	./target/release/turnpike check -c $(CONFIG)

lint: setup
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

bench: setup
	cargo bench --bench routing --bench identity --bench limits

# Load tests against the direct backend and nginx, on loopback; appends to loadtest/RESULTS.md.
loadtest: setup
	python3 loadtest/run.py --record
