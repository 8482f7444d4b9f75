# Stockade: `make demo` and `make test` do all set-up themselves on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp

.PHONY: install demo test lint typecheck unit bench bench-deps bench-openapi clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  # other ports: make demo DEMO_ARGS="--port 8088 --admin-port 8089 --upstream-port 9009"
	$(BIN)/python examples/demo/run.py $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck unit

# nginx and wrk make the comparison meaningful; the benchmark falls back to built-in tools without them.
bench-deps:
	@command -v nginx >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light wrk >/dev/null 2>&1; } || \
	  echo "bench: nginx/wrk not installed; using the built-in upstream and load generator"

bench: $(STAMP) bench-deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# CPU cost of OpenAPI validation per request (the issue's 20 us budget), engines compared on the same body.
bench-openapi: $(STAMP)
	$(BIN)/python bench/micro_openapi.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .stockade examples/demo/.stockade
