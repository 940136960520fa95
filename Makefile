# The two set-up commands are `make run` and `make test`; both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?=

.PHONY: run test test-long lint typecheck pytest proto bench install install-runtime clean image-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Two stamps, each redone when the dependency list changes. Running needs only the runtime dependencies;
# the development toolchain (ruff, mypy, pytest, hypothesis, grpcio-tools) comes with `make test` and the other
# development targets. The development install includes the runtime one, so it renews that stamp too.
$(VENV)/.installed-runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-runtime

install-runtime: $(VENV)/.installed-runtime

install: $(VENV)/.installed-dev

run: install-runtime
	$(BIN)/duo-sidecar serve $(if $(CONFIG),--config $(CONFIG),)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -q

test: ruby-deps promtool-deps lint typecheck pytest

# Long concurrency runs, kept out of `make test` for time; CI runs them too. 24 random interleavings per backend:
# a bug that shows one time in four cannot pass.
test-long: install
	DUO_SIDECAR_CONVERGENCE_ROUNDS=24 $(BIN)/pytest -q tests/test_convergence.py

proto: install ruby-deps
	$(BIN)/python proto/generate.py

# Debian's Ruby gRPC stack for clients/ruby (code generation and its tests), installed only when missing:
# CI machines start fresh. Needs root (or sudo).
RUBY_DEBS := ruby ruby-grpc ruby-grpc-tools ruby-google-protobuf ruby-googleapis-common-protos-types
.PHONY: ruby-deps
ruby-deps:
	@if command -v grpc_tools_ruby_protoc >/dev/null 2>&1 && ruby -e 'require "grpc"; \
	    require "google/rpc/error_details_pb"; require "minitest"' >/dev/null 2>&1; then :; else \
	  echo "installing $(RUBY_DEBS)"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) sh -c 'apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(RUBY_DEBS)'; \
	fi

# Debian's prometheus package: promtool checks a real /metrics scrape and docs/alerts.rules.yml (and runs
# tests/alerts.rules.test.yml), and the prometheus server (/usr/bin/prometheus, same package) evaluates the
# dashboard's and the alerts' queries in tests/test_dashboard.py. Installed only when either is missing. Needs root
# (or sudo).
.PHONY: promtool-deps
promtool-deps:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then :; else \
	  echo "installing prometheus (promtool and the prometheus server)"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) sh -c 'apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus'; \
	fi

# BENCH_ARGS=--large preloads 1M seats and 100k namespace pins; --strict exits 1 when a target is missed.
# Ends with one table: every target of DESIGN section 6, what this run measured, and the verdict.
bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.complete
	$(BIN)/python -m bench.overload
	$(BIN)/python -m bench.propagation
	$(BIN)/python -m bench.summary $(filter --strict,$(BENCH_ARGS))

# Builds the Dockerfile on a local debootstrap base with buildah and checks the running image (needs root;
# see image/README.md). CI runs it after `make test`.
image-test: install
	image/test.sh

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
