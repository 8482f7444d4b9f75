# Stockade: `make demo` and `make test` do all set-up themselves on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp

.PHONY: install native demo test lint typecheck unit bench bench-deps bench-openapi clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The request path compiled with mypyc (tools/build_native.py): rebuilt only when one of its sources changed. The
# gateway checks the build against the sources at every start and runs the pure-Python modules when they differ.
native: $(STAMP)
	$(BIN)/python tools/build_native.py --if-stale || true  # it says why; the gateway then runs pure Python

install: $(STAMP) native

demo: install  # other ports: make demo DEMO_ARGS="--port 8088 --admin-port 8089 --upstream-port 9009"
	$(BIN)/python examples/demo/run.py $(DEMO_ARGS)

lint: install
	$(BIN)/ruff check src tests bench examples tools
	$(BIN)/ruff format --check src tests bench examples tools

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest

test: lint typecheck unit

# nginx and wrk make the comparison meaningful; the benchmark falls back to built-in tools without them.
bench-deps:
	@command -v nginx >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light wrk >/dev/null 2>&1; } || \
	  echo "bench: nginx/wrk not installed; using the built-in upstream and load generator"

bench: install bench-deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# CPU cost of OpenAPI validation per request (the issue's 20 us budget), engines compared on the same body.
bench-openapi: install
	$(BIN)/python bench/micro_openapi.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) src/stockade/_native .mypy_cache .ruff_cache .pytest_cache .stockade examples/demo/.stockade
